package envelope

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// ContactKeySize is the size of a contact key: AES-256.
const ContactKeySize = 32

// keyIDLabel is the HMAC message that derives a contact key's identifier.
const keyIDLabel = "urn:clinkme:envelope:0 contact key id"

// A ContactKey is a secure communication key: an AES-256 key shared by two
// users, which seals the enhanced envelopes between them in both directions.
//
// The zero ContactKey is not a key: the Seal and Open functions refuse it.
// Formatting a ContactKey with the fmt package prints only its ID. The key
// is reached through a function value, which fmt prints as an address, so
// that even a struct holding a ContactKey in an unexported field (which fmt
// prints field by field, without calling methods) never shows the key,
// whatever the verb.
type ContactKey struct {
	k func() *[ContactKeySize]byte // nil for the zero ContactKey; the array is never modified
}

func newKey(k *[ContactKeySize]byte) ContactKey {
	return ContactKey{func() *[ContactKeySize]byte { return k }}
}

// NewContactKey returns a fresh random contact key.
func NewContactKey() ContactKey {
	k := new([ContactKeySize]byte)
	rand.Read(k[:]) // never fails (crypto/rand, Go 1.24 and later)
	return newKey(k)
}

func newContactKey(r io.Reader) (ContactKey, error) {
	k := new([ContactKeySize]byte)
	if _, err := io.ReadFull(r, k[:]); err != nil {
		return ContactKey{}, err
	}
	return newKey(k), nil
}

func (k ContactKey) valid() bool { return k.k != nil }

// key returns the key's bytes; k must be valid.
func (k ContactKey) key() []byte { return k.k()[:] }

// ParseContactKey returns the contact key whose bytes (as from Bytes) are b.
// It fails unless b is ContactKeySize bytes, not all zero.
func ParseContactKey(b []byte) (ContactKey, error) {
	if len(b) != ContactKeySize {
		return ContactKey{}, fmt.Errorf("envelope: contact key of %d bytes, want %d", len(b), ContactKeySize)
	}
	if subtle.ConstantTimeCompare(b, make([]byte, ContactKeySize)) == 1 {
		return ContactKey{}, fmt.Errorf("envelope: all-zero contact key")
	}
	k := new([ContactKeySize]byte)
	copy(k[:], b)
	return newKey(k), nil
}

// Bytes returns a copy of the secret key, for storing it encrypted.
func (k ContactKey) Bytes() []byte {
	if !k.valid() {
		return nil
	}
	return append([]byte(nil), k.key()...)
}

// ID returns the key's public identifier, which enhanced envelopes carry:
// the first KeyIDSize bytes of HMAC-SHA256(key, "urn:clinkme:envelope:0
// contact key id"). It is nil for the zero ContactKey.
func (k ContactKey) ID() []byte {
	if !k.valid() {
		return nil
	}
	m := hmac.New(sha256.New, k.key())
	m.Write([]byte(keyIDLabel))
	return m.Sum(nil)[:envelopexml.KeyIDSize]
}

// Equal reports, in constant time, whether k and o are the same key.
func (k ContactKey) Equal(o ContactKey) bool {
	if !k.valid() || !o.valid() {
		return k.valid() == o.valid()
	}
	return subtle.ConstantTimeCompare(k.key(), o.key()) == 1
}

// String returns the key's ID, never the key.
func (k ContactKey) String() string {
	if !k.valid() {
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
