package envelope

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// Allowed RSA key sizes, for generation, sealing and opening. The upper bound
// keeps envelopes and the cost of opening them bounded.
const (
	MinKeyBits = 3072
	MaxKeyBits = 4096
)

// An Identity is a device's own identity: a bare JID and the RSA private key
// that signs what it sends and unwraps what is sent to it.
//
// An Identity made by NewIdentity or GenerateIdentity always has a valid bare
// JID and a key of MinKeyBits to MaxKeyBits; the zero Identity is not usable.
// Formatting an Identity with the fmt package never prints the key.
type Identity struct {
	jid string
	key *rsa.PrivateKey
	fp  [envelopexml.FingerprintSize]byte
}

// NewIdentity returns the identity of jid holding key. It fails with
// ErrKeySize if the key is smaller than MinKeyBits or larger than
// MaxKeyBits, and with ErrInvalid if jid is not a bare JID.
//
// jid should be in canonical form (envelopexml.CheckCanonicalJID), as the
// XMPP server binds it: the Seal functions refuse to write any other into
// an envelope, and Open finds an identity in an envelope's recipients byte
// for byte. NewIdentity itself checks only the shape, so that a key store
// written before the rule still opens.
func NewIdentity(jid string, key *rsa.PrivateKey) (Identity, error) {
	if err := envelopexml.CheckJID(jid); err != nil {
		return Identity{}, err
	}
	if key == nil {
		return Identity{}, errors.New("envelope: identity: nil key")
	}
	fp, err := Fingerprint(&key.PublicKey)
	if err != nil {
		return Identity{}, fmt.Errorf("envelope: identity: %w", err)
	}
	if err := checkKeySize(&key.PublicKey, "identity key"); err != nil {
		return Identity{}, err
	}
	if err := key.Validate(); err != nil {
		return Identity{}, fmt.Errorf("envelope: identity: invalid RSA key: %v", err)
	}
	return Identity{jid: jid, key: key, fp: fp}, nil
}

// GenerateIdentity returns a new identity for jid with a fresh RSA key of
// MinKeyBits. It takes about a second. jid must be a bare JID in canonical
// form (envelopexml.CheckCanonicalJID), else the error wraps ErrInvalid.
func GenerateIdentity(jid string) (Identity, error) {
	if err := envelopexml.CheckCanonicalJID(jid); err != nil {
		return Identity{}, err
	}
	key, err := rsa.GenerateKey(rand.Reader, MinKeyBits)
	if err != nil {
		return Identity{}, fmt.Errorf("envelope: generate key: %v", err)
	}
	return NewIdentity(jid, key)
}

// JID returns the identity's bare JID.
func (id Identity) JID() string { return id.jid }

// PrivateKey returns the identity's private key, for storing it (encrypted).
func (id Identity) PrivateKey() *rsa.PrivateKey { return id.key }

// PublicKey returns the identity's public key, the one to publish in the key
// directory. It is nil for the zero Identity.
func (id Identity) PublicKey() *rsa.PublicKey {
	if id.key == nil {
		return nil
	}
	return &id.key.PublicKey
}

// String returns the JID and the key size, never the key.
func (id Identity) String() string {
	if id.key == nil {
		return "envelope.Identity(zero)"
	}
	return fmt.Sprintf("envelope.Identity(%s, RSA-%d)", id.jid, id.key.N.BitLen())
}

// Format makes every fmt verb print String, so that no formatting of an
// Identity (%v, %+v, %#v, %x, ...) prints its key.
func (id Identity) Format(f fmt.State, _ rune) { io.WriteString(f, id.String()) }

func (id Identity) check() error {
	if id.key == nil {
		return errors.New("envelope: zero Identity")
	}
	return nil
}

// A Recipient is one public key of a recipient, as the key directory gives
// it. A user with several keys (one per device) is several Recipients with
// the same JID.
type Recipient struct {
	JID string         // bare JID
	Key *rsa.PublicKey // MinKeyBits to MaxKeyBits
}

// Fingerprint returns the SHA-256 of the DER SubjectPublicKeyInfo of key,
// the label of the keys wrapped for it in a standard envelope. It accepts a
// key of any size.
func Fingerprint(key *rsa.PublicKey) ([envelopexml.FingerprintSize]byte, error) {
	if key == nil || key.N == nil || key.N.Sign() <= 0 {
		return [envelopexml.FingerprintSize]byte{}, errors.New("envelope: missing RSA public key")
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return [envelopexml.FingerprintSize]byte{}, fmt.Errorf("envelope: fingerprint: %v", err)
	}
	return sha256.Sum256(der), nil
}

// checkKeySize returns an error wrapping ErrKeySize unless key has
// MinKeyBits to MaxKeyBits. A nil key is an error too. what names the key in
// the error.
func checkKeySize(key *rsa.PublicKey, what string) error {
	if key == nil || key.N == nil {
		return fmt.Errorf("envelope: missing RSA %s", what)
	}
	if n := key.N.BitLen(); n < MinKeyBits || n > MaxKeyBits {
		return fmt.Errorf("%w: %s of %d bits, want %d to %d", ErrKeySize, what, n, MinKeyBits, MaxKeyBits)
	}
	return nil
}
