// Package envelope seals and opens ClinkMe end-to-end envelopes, as specified
// in docs/envelope.md; the wire type is in
// github.com/clinkme/clinkd/extensions/envelopexml.
//
// A standard envelope ([SealStandard]) carries content sealed with AES-256-GCM
// under a fresh random key, and that key wrapped with RSA-OAEP-SHA256 for each
// recipient key and for the sender's own key, so that the sender's other
// devices can read what was sent. An enhanced ("ClinkMe Secure") envelope
// ([SealEnhanced]) seals content under a [ContactKey], the secure
// communication key the two users share, with a fresh random nonce for every
// message; the key itself travels once, as [KindKeyShare] content in a
// standard envelope. Both kinds are signed by the sender with
// RSA-PSS-SHA256 over every field, so the recipient knows who wrote the
// message and for whom, whatever the server claims.
//
// [Open] checks the signature first, with the sender's public key that the
// caller got from the key directory for the envelope's From, and only then
// decrypts. Each way of failing has its own sentinel error, for errors.Is.
//
// What this package leaves to the caller:
//   - looking up the sender's key by the envelope's From (never by the
//     stanza's from), and treating a mismatch between the two as suspicious;
//   - rejecting replays: remember (From, ID) of the envelopes opened;
//   - enforcing Expires against its own clock;
//   - storing keys: see package github.com/clinkme/clinkd/client/keystore.
//
// RSA keys are 3072 to 4096 bits ([MinKeyBits], [MaxKeyBits]); other sizes
// are refused with [ErrKeySize], for generation, sealing and opening alike.
package envelope

import (
	"errors"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// Errors. Open returns exactly one of these (possibly wrapped, with detail)
// for each way an envelope can fail; the Seal functions return ErrKeySize,
// ErrInvalid, ErrTooLarge, ErrBadContent and ErrUnsupportedContent for bad
// arguments.
var (
	// ErrInvalid: the envelope is not structurally valid (see
	// envelopexml.Envelope.Validate), or an argument to a Seal function would
	// make one that is not. It is the same error as envelopexml.ErrInvalid.
	ErrInvalid = envelopexml.ErrInvalid
	// ErrUnsupportedVersion: the envelope or its content is of a format
	// version this package does not know; the user should update. It is the
	// same error as envelopexml.ErrUnsupportedVersion.
	ErrUnsupportedVersion = envelopexml.ErrUnsupportedVersion
	// ErrKeySize: an RSA key is smaller than MinKeyBits or larger than
	// MaxKeyBits.
	ErrKeySize = errors.New("envelope: RSA key size not allowed")
	// ErrBadSignature: the signature does not verify with the sender's key.
	// Nothing in the envelope can be trusted, including From.
	ErrBadSignature = errors.New("envelope: bad signature")
	// ErrNotForMe: the signature is good but the envelope is not addressed
	// to this identity, or carries no key wrapped for it.
	ErrNotForMe = errors.New("envelope: not addressed to this identity")
	// ErrNoContactKey: an enhanced envelope names a contact key that the
	// ContactKeys do not hold for the contact.
	ErrNoContactKey = errors.New("envelope: unknown contact key")
	// ErrTampered: the signature is good but the payload (or the key
	// wrapped for this identity) does not decrypt: the sender, or whoever
	// holds its key, signed a broken envelope.
	ErrTampered = errors.New("envelope: payload does not decrypt")
	// ErrBadContent: the decrypted content is malformed, or a Seal argument
	// is (text not UTF-8, a key-share not to exactly one contact).
	ErrBadContent = errors.New("envelope: malformed content")
	// ErrUnsupportedContent: the content kind is not one this package
	// knows; the user should update.
	ErrUnsupportedContent = errors.New("envelope: unsupported content kind")
	// ErrTooLarge: the content does not fit in an envelope.
	ErrTooLarge = errors.New("envelope: content too large")
)
