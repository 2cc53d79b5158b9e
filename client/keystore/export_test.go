package keystore

import "github.com/clinkme/clinkd/client/envelope"

// CreateFast is Create with cheap Argon2id parameters (t=1, m=64 KiB, p=1),
// so that tests do not spend their time deriving keys.
func CreateFast(path string, passphrase []byte, id envelope.Identity) (*Store, error) {
	return create(path, passphrase, id, Params{Time: 1, MemoryKiB: 64, Threads: 1})
}

// HeaderSize is the size of the clear header of a file.
const HeaderSize = headerSize
