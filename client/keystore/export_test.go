package keystore

import "github.com/clinkme/clinkd/client/envelope"

// CreateFast is Create with cheap Argon2id parameters (t=1, m=64 KiB, p=1),
// so that tests do not spend their time deriving keys.
func CreateFast(path string, passphrase []byte, id envelope.Identity) (*Store, error) {
	return create(path, passphrase, id, params{time: 1, memory: 64, threads: 1})
}

// HeaderSize is the size of the clear header of a file.
const HeaderSize = headerSize
