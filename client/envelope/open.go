package envelope

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// Open authenticates e and returns its content, for the identity me.
// senderKey is the public key of e.From, from the key directory; keys holds
// the contact keys, and may be nil if me has none.
//
// Open checks, in this order, and returns the first error:
//
//  1. e is structurally valid, else ErrInvalid;
//  2. senderKey has MinKeyBits to MaxKeyBits, else ErrKeySize;
//  3. the signature verifies with senderKey, else ErrBadSignature: nothing
//     is decrypted before this step passes;
//  4. me is the sender or one of the recipients, and for a standard envelope
//     a key is wrapped for me's fingerprint, else ErrNotForMe;
//  5. for an enhanced envelope, keys holds the named key for the contact
//     (e.To[0] if me sent it, e.From otherwise), else ErrNoContactKey;
//  6. the payload key unwraps and the payload decrypts, else ErrTampered;
//  7. the content is of a known version, else ErrUnsupportedVersion; its
//     lengths and padding are right, else ErrBadContent; its kind is known,
//     else ErrUnsupportedContent; its body is right for the kind, else
//     ErrBadContent. A KindKeyShare content is only accepted in a standard
//     envelope to exactly one contact other than the sender.
//
// The order is that of docs/envelope.md, "Outcomes of opening"; a zero me
// is an error before all of them.
//
// On success the envelope's header (From, To, ID, Time, Expires) is
// authenticated too. A KindKeyShare content is the key shared between e.From
// and e.To[0]: store it for the one of them who is not me.
func Open(e *envelopexml.Envelope, me Identity, senderKey *rsa.PublicKey, keys ContactKeys) (Content, error) {
	if err := me.check(); err != nil {
		return Content{}, err
	}
	if e == nil {
		return Content{}, fmt.Errorf("%w: nil envelope", ErrInvalid)
	}
	if err := e.Validate(); err != nil {
		return Content{}, err
	}
	if err := checkKeySize(senderKey, "sender key"); err != nil {
		return Content{}, err
	}

	d := sha256.Sum256(signed(e))
	if err := rsa.VerifyPSS(senderKey, crypto.SHA256, d[:], e.Signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
		return Content{}, ErrBadSignature
	}

	if e.From != me.jid && !slices.Contains(e.To, me.jid) {
		return Content{}, fmt.Errorf("%w: %s is neither sender nor recipient", ErrNotForMe, me.jid)
	}
	var plain []byte
	switch e.Kind {
	case envelopexml.Standard:
		i := slices.IndexFunc(e.Keys, func(k envelopexml.WrappedKey) bool { return bytes.Equal(k.Fingerprint, me.fp[:]) })
		if i < 0 {
			return Content{}, fmt.Errorf("%w: no key wrapped for this identity's key", ErrNotForMe)
		}
		pk, err := rsa.DecryptOAEP(sha256.New(), nil, me.key, e.Keys[i].Key, []byte(oaepLabel))
		if err != nil || len(pk) != payloadKeySize {
			return Content{}, ErrTampered
		}
		plain, err = newGCM(pk).Open(nil, e.Nonce, e.Payload, aad(e))
		if err != nil {
			return Content{}, ErrTampered
		}
	case envelopexml.Enhanced:
		contact := e.From
		if e.From == me.jid {
			contact = e.To[0]
		}
		if keys == nil {
			return Content{}, fmt.Errorf("%w: no contact keys", ErrNoContactKey)
		}
		k, ok := keys.ContactKey(contact, e.KeyID)
		if !ok {
			return Content{}, fmt.Errorf("%w: none for %s with this id", ErrNoContactKey, contact)
		}
		if !k.valid() || subtle.ConstantTimeCompare(k.ID(), e.KeyID) != 1 {
			return Content{}, fmt.Errorf("%w: ContactKeys returned a key with another id", ErrNoContactKey)
		}
		var err error
		plain, err = newGCM(k.key()).Open(nil, e.Nonce, e.Payload, aad(e))
		if err != nil {
			return Content{}, ErrTampered
		}
	}

	c, err := unmarshalContent(plain)
	if err != nil {
		return Content{}, err
	}
	if c.Kind == KindKeyShare && (e.Kind != envelopexml.Standard || len(e.To) != 1 || e.To[0] == e.From) {
		return Content{}, fmt.Errorf("%w: key-share not in a standard envelope to one contact", ErrBadContent)
	}
	return c, nil
}
