package keystore

import (
	"crypto/rand"
	"fmt"
)

// Export returns the whole key store (identity, contact keys and pins) as
// the bytes of a key store file sealed under passphrase with the
// Argon2id parameters p and a fresh salt: what device sync carries to
// another device of the same account (docs/devsync.md), and a backup.
// Parameters below the floor are refused with ErrBadParams. The bytes
// are as secret as the passphrase is strong.
func (s *Store) Export(passphrase []byte, p Params) ([]byte, error) {
	if len(passphrase) == 0 {
		return nil, fmt.Errorf("keystore: export: empty passphrase")
	}
	if err := p.checkFloor(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	plain, err := s.contents.marshal()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	h := header{version: currentVersion, Params: p}
	rand.Read(h.salt[:])
	rand.Read(h.nonce[:])
	hb := h.marshal()
	data := newGCM(deriveKey(passphrase, &h)).Seal(hb, h.nonce[:], plain, hb)
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("keystore: export would exceed %d bytes", maxFileSize)
	}
	return data, nil
}

// Import checks that data is a key store file (as Export makes) that
// opens with passphrase, and writes its contents as a new key store file
// at path, sealed under the same passphrase with this device's Argon2id
// parameters p and a fresh salt, then returns it open. As Create, it
// never replaces anything (ErrExists). Its errors are Open's for data,
// and Create's for path.
func Import(path string, data, passphrase []byte, p Params) (*Store, error) {
	if err := p.checkFloor(); err != nil {
		return nil, err
	}
	_, _, c, err := open(data, passphrase)
	if err != nil {
		return nil, err
	}
	return createContents(path, passphrase, *c, p)
}
