package envelope

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"io"
	"time"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// Labels of docs/envelope.md, "Signed encoding" and "Crypto". Version 1
// (section 12) has labels of its own for the additional data and the
// signature, and keeps version 0's key wrapping and contact key ids.
const (
	aadLabel  = "urn:clinkme:envelope:0 aad"
	sigLabel  = "urn:clinkme:envelope:0 signature"
	aadLabel1 = "urn:clinkme:envelope:1 aad"
	sigLabel1 = "urn:clinkme:envelope:1 signature"
	oaepLabel = "urn:clinkme:envelope:0 key"
)

// payloadKeySize is the size of the per-message key of a standard envelope.
const payloadKeySize = 32

// A Header holds the envelope fields that the caller chooses. They travel in
// clear and are signed.
type Header struct {
	// ID identifies the message among those of its sender: 1 to
	// envelopexml.MaxIDLen bytes in 0x21..0x7E. Recipients use (From, ID) to
	// reject replays, so it must be unique, for example 16 random bytes
	// in base64.
	ID string
	// Time is the send time. It is required and truncated to whole seconds.
	Time time.Time
	// Expires is the optional end of validity, truncated to whole seconds
	// and after Time. Open does not look at the clock: recipients compare
	// it to theirs.
	Expires time.Time
	// Checkpoint, when set, makes a version 1 envelope that carries it,
	// signed with the rest: the sender device's latest verified key
	// directory checkpoint, the signed note (docs/envelope.md, section
	// 12), at most envelopexml.MaxCheckpointSize bytes.
	Checkpoint []byte
}

// SealStandard seals c from the identity from to the recipient keys to: a
// fresh random AES-256 key seals c with AES-256-GCM, and is wrapped with
// RSA-OAEP-SHA256 for every distinct key in to and for from's own key; the
// sender signs the whole envelope with RSA-PSS-SHA256.
//
// The recipients' JIDs are listed once each, in the order first given;
// repeated keys are wrapped for once. to may be empty for a note to self.
// A KindKeyShare content must go to exactly one JID other than from's.
func SealStandard(from Identity, to []Recipient, h Header, c Content) (*envelopexml.Envelope, error) {
	plain, err := c.marshal()
	if err != nil {
		return nil, err
	}
	e, err := sealStandard(rand.Reader, from, to, h, c.Kind, plain)
	if err != nil {
		return nil, err
	}
	if err := sign(rand.Reader, from, e); err != nil {
		return nil, err
	}
	return e, nil
}

// sealStandard returns the envelope of SealStandard before it is signed,
// with plain as the encoded content of kind. The source of randomness is an
// argument, for the test vectors: it reads the payload key, the nonce, then
// one OAEP seed for each wrapped key in order.
func sealStandard(r io.Reader, from Identity, to []Recipient, h Header, kind ContentKind, plain []byte) (*envelopexml.Envelope, error) {
	if err := from.check(); err != nil {
		return nil, err
	}
	e := &envelopexml.Envelope{Kind: envelopexml.Standard, From: from.jid}
	setHeader(e, h)

	keys := make([]*rsa.PublicKey, 0, len(to)+1)
	seenJID := make(map[string]bool)
	seenFP := make(map[[envelopexml.FingerprintSize]byte]bool)
	// The full slice expression makes append copy rather than write into
	// the caller's array.
	for _, rc := range append(to[:len(to):len(to)], Recipient{JID: from.jid, Key: from.PublicKey()}) {
		if err := checkKeySize(rc.Key, "key of "+rc.JID); err != nil {
			return nil, err
		}
		fp, err := Fingerprint(rc.Key)
		if err != nil {
			return nil, fmt.Errorf("envelope: recipient %s: %w", rc.JID, err)
		}
		if !seenFP[fp] {
			seenFP[fp] = true
			keys = append(keys, rc.Key)
			e.Keys = append(e.Keys, envelopexml.WrappedKey{Fingerprint: fp[:]})
		}
	}
	for _, rc := range to {
		if !seenJID[rc.JID] {
			seenJID[rc.JID] = true
			e.To = append(e.To, rc.JID)
		}
	}
	if len(e.To) == 0 {
		e.To = []string{from.jid} // a note to self
	}
	if kind == KindKeyShare && (len(e.To) != 1 || e.To[0] == from.jid) {
		return nil, fmt.Errorf("%w: a key-share goes to exactly one contact", ErrBadContent)
	}

	pk := make([]byte, payloadKeySize)
	if _, err := io.ReadFull(r, pk); err != nil {
		return nil, fmt.Errorf("envelope: random: %v", err)
	}
	e.Nonce = make([]byte, envelopexml.NonceSize)
	if _, err := io.ReadFull(r, e.Nonce); err != nil {
		return nil, fmt.Errorf("envelope: random: %v", err)
	}
	// Validate before the expensive steps, with placeholders of the final
	// sizes for what is still to come.
	for i := range e.Keys {
		e.Keys[i].Key = make([]byte, keys[i].Size())
	}
	e.Payload = make([]byte, len(plain)+envelopexml.TagSize)
	e.Signature = make([]byte, from.key.Size())
	if err := e.Validate(); err != nil {
		return nil, err
	}

	for i, k := range keys {
		w, err := rsa.EncryptOAEP(sha256.New(), r, k, pk, []byte(oaepLabel))
		if err != nil {
			return nil, fmt.Errorf("envelope: wrap key for %x: %v", e.Keys[i].Fingerprint[:8], err)
		}
		e.Keys[i].Key = w
	}
	e.Payload = newGCM(pk).Seal(nil, e.Nonce, plain, aad(e))
	return e, nil
}

// SealEnhanced seals c from the identity from to the contact to under the
// contact key k they share: AES-256-GCM with a fresh random nonce, so equal
// contents never give equal payloads, and the sender's RSA-PSS-SHA256
// signature over the whole envelope. The envelope names k by k.ID().
//
// A KindKeyShare content goes in a standard envelope, never here. The number
// of messages sealed under one key, by both users together, must stay well
// below 2^32 (random 96-bit nonces); replace the key long before.
func SealEnhanced(from Identity, to string, k ContactKey, h Header, c Content) (*envelopexml.Envelope, error) {
	plain, err := c.marshal()
	if err != nil {
		return nil, err
	}
	e, err := sealEnhanced(rand.Reader, from, to, k, h, c.Kind, plain)
	if err != nil {
		return nil, err
	}
	if err := sign(rand.Reader, from, e); err != nil {
		return nil, err
	}
	return e, nil
}

// sealEnhanced returns the envelope of SealEnhanced before it is signed, with
// plain as the encoded content of kind. It reads the nonce from r.
func sealEnhanced(r io.Reader, from Identity, to string, k ContactKey, h Header, kind ContentKind, plain []byte) (*envelopexml.Envelope, error) {
	if err := from.check(); err != nil {
		return nil, err
	}
	if !k.valid() {
		return nil, fmt.Errorf("envelope: seal: zero ContactKey")
	}
	if kind == KindKeyShare {
		return nil, fmt.Errorf("%w: a key-share goes in a standard envelope", ErrBadContent)
	}
	e := &envelopexml.Envelope{Kind: envelopexml.Enhanced, From: from.jid, To: []string{to}, KeyID: k.ID()}
	setHeader(e, h)
	e.Nonce = make([]byte, envelopexml.NonceSize)
	if _, err := io.ReadFull(r, e.Nonce); err != nil {
		return nil, fmt.Errorf("envelope: random: %v", err)
	}
	e.Payload = make([]byte, len(plain)+envelopexml.TagSize)
	e.Signature = make([]byte, from.key.Size())
	if err := e.Validate(); err != nil {
		return nil, err
	}
	e.Payload = newGCM(k.key()).Seal(nil, e.Nonce, plain, aad(e))
	return e, nil
}

func setHeader(e *envelopexml.Envelope, h Header) {
	e.ID = h.ID
	if !h.Time.IsZero() {
		e.Time = h.Time.Truncate(time.Second).UTC()
	}
	if !h.Expires.IsZero() {
		e.Expires = h.Expires.Truncate(time.Second).UTC()
	}
	if len(h.Checkpoint) > 0 {
		e.Version, e.Checkpoint = 1, append([]byte(nil), h.Checkpoint...)
	}
}

func newGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("envelope: AES-256 key of the wrong size") // internal: sizes are fixed
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic("envelope: " + err.Error())
	}
	return g
}

// sign sets the signature of e, made by from with RSA-PSS-SHA256 (salt of
// 32 bytes read from r) over the signed encoding.
func sign(r io.Reader, from Identity, e *envelopexml.Envelope) error {
	d := sha256.Sum256(signed(e))
	sig, err := rsa.SignPSS(r, from.key, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	if err != nil {
		return fmt.Errorf("envelope: sign: %v", err)
	}
	e.Signature = sig
	return nil
}

// header appends the signed encoding of the header fields of e: every field
// but the nonce, the payload and the signature. The format version is in the
// label that comes first. See docs/envelope.md, "Signed encoding".
func header(b []byte, e *envelopexml.Envelope) []byte {
	b = appendStr(b, e.Kind)
	b = appendStr(b, e.From)
	b = appendUint32(b, len(e.To))
	for _, to := range e.To {
		b = appendStr(b, to)
	}
	b = appendStr(b, e.ID)
	b = appendStr(b, envelopexml.FormatTime(e.Time))
	if e.Expires.IsZero() {
		b = appendStr(b, "")
	} else {
		b = appendStr(b, envelopexml.FormatTime(e.Expires))
	}
	b = appendUint32(b, len(e.Keys))
	for _, k := range e.Keys {
		b = appendStr(b, k.Fingerprint)
		b = appendStr(b, k.Key)
	}
	b = appendStr(b, e.KeyID)
	if e.Version == 1 {
		b = appendStr(b, e.Checkpoint)
	}
	return b
}

// aad returns the AES-GCM additional data of e.
func aad(e *envelopexml.Envelope) []byte {
	if e.Version == 1 {
		return header(appendStr(nil, aadLabel1), e)
	}
	return header(appendStr(nil, aadLabel), e)
}

// signed returns the bytes that the signature of e covers.
func signed(e *envelopexml.Envelope) []byte {
	label := sigLabel
	if e.Version == 1 {
		label = sigLabel1
	}
	b := header(appendStr(nil, label), e)
	b = appendStr(b, e.Nonce)
	return appendStr(b, e.Payload)
}

func appendUint32(b []byte, n int) []byte {
	return append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}
