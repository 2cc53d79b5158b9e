package envelope

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"

	extenv "github.com/clinkme/clinkd/extensions/envelope"
)

// ContactKeySize is the size of a contact key: AES-256.
const ContactKeySize = 32

// keyIDLabel is the HMAC message that derives a contact key's identifier.
const keyIDLabel = "urn:clinkme:envelope:0 contact key id"

// A ContactKey is a secure communication key: an AES-256 key shared by two
// users, which seals the enhanced envelopes between them in both directions.
//
// The zero ContactKey is not a key: the Seal and Open functions refuse it.
// Formatting a ContactKey with the fmt package prints only its ID.
type ContactKey struct {
	k     [ContactKeySize]byte
	valid bool
}

// NewContactKey returns a fresh random contact key.
func NewContactKey() ContactKey {
	var k ContactKey
	rand.Read(k.k[:]) // never fails (crypto/rand, Go 1.24 and later)
	k.valid = true
	return k
}

func newContactKey(r io.Reader) (ContactKey, error) {
	var k ContactKey
	if _, err := io.ReadFull(r, k.k[:]); err != nil {
		return ContactKey{}, err
	}
	k.valid = true
	return k, nil
}

// ParseContactKey returns the contact key whose bytes (as from Bytes) are b.
// It fails unless b is ContactKeySize bytes, not all zero.
func ParseContactKey(b []byte) (ContactKey, error) {
	var k ContactKey
	if len(b) != ContactKeySize {
		return ContactKey{}, fmt.Errorf("envelope: contact key of %d bytes, want %d", len(b), ContactKeySize)
	}
	copy(k.k[:], b)
	if subtle.ConstantTimeCompare(k.k[:], make([]byte, ContactKeySize)) == 1 {
		return ContactKey{}, fmt.Errorf("envelope: all-zero contact key")
	}
	k.valid = true
	return k, nil
}

// Bytes returns a copy of the secret key, for storing it encrypted.
func (k ContactKey) Bytes() []byte {
	if !k.valid {
		return nil
	}
	return append([]byte(nil), k.k[:]...)
}

// ID returns the key's public identifier, which enhanced envelopes carry:
// the first KeyIDSize bytes of HMAC-SHA256(key, "urn:clinkme:envelope:0
// contact key id"). It is nil for the zero ContactKey.
func (k ContactKey) ID() []byte {
	if !k.valid {
		return nil
	}
	m := hmac.New(sha256.New, k.k[:])
	m.Write([]byte(keyIDLabel))
	return m.Sum(nil)[:extenv.KeyIDSize]
}

// Equal reports, in constant time, whether k and o are the same key.
func (k ContactKey) Equal(o ContactKey) bool {
	return k.valid == o.valid && subtle.ConstantTimeCompare(k.k[:], o.k[:]) == 1
}

// String returns the key's ID, never the key.
func (k ContactKey) String() string {
	if !k.valid {
		return "envelope.ContactKey(zero)"
	}
	return "envelope.ContactKey(id=" + base64.StdEncoding.EncodeToString(k.ID()) + ")"
}

// Format makes every fmt verb print String, so that no formatting of a
// ContactKey prints the key.
func (k ContactKey) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// ContactKeys finds the contact keys held for a contact; package
// github.com/clinkme/clinkd/client/keystore implements it.
type ContactKeys interface {
	// ContactKey returns the key shared with the bare JID contact whose ID
	// is id, and false if there is none. Open checks the ID of what it
	// returns again.
	ContactKey(contact string, id []byte) (ContactKey, bool)
}
