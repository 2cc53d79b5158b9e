// Package envelopexml implements the ClinkMe end-to-end envelope payload, as
// specified in docs/envelope.md.
//
// It holds the payload type only: XML marshalling and structural validation,
// no cryptography and no I/O. A server can use it to check that a message it
// relays is an end-to-end envelope without holding any key; the device SDK
// (package github.com/clinkme/clinkd/client/envelope) seals and opens it.
//
// An envelope is the element envelope in the namespace [NS]:
//
//	<envelope xmlns="urn:clinkme:envelope:0" kind="standard"
//	    from="alice@example.org" id="m1" time="2025-11-25T19:44:00Z">
//	  <to jid="bob@example.org"/>
//	  <key fp="base64 SHA-256 of the key's SubjectPublicKeyInfo">base64 RSA-OAEP</key>
//	  <nonce>base64 12 bytes</nonce>
//	  <payload>base64 AES-256-GCM ciphertext and tag</payload>
//	  <sig>base64 RSA-PSS signature</sig>
//	</envelope>
//
// The namespace carries the format version: a later, incompatible format gets
// another namespace of the form urn:clinkme:envelope:N. Unmarshalling such an
// element reports [ErrUnsupportedVersion], so that a device can tell its user
// to update instead of showing nothing.
//
// Unmarshalling is strict: an unknown attribute or child element, text that
// is not canonical padded base64 or a time not in the exact form
// 2006-01-02T15:04:05Z is an error wrapping [ErrInvalid]. [Envelope.Validate]
// checks the rest: required fields, JIDs in canonical form, counts and
// sizes.
package envelopexml

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"mellium.im/xmpp/jid"
)

// NS is the XML namespace of format version 0 of the envelope.
const NS = "urn:clinkme:envelope:0"

// NS1 is the XML namespace of format version 1: version 0 with the
// sender device's latest verified key directory checkpoint (Checkpoint),
// signed with the rest (docs/envelope.md, section 12).
const NS1 = "urn:clinkme:envelope:1"

// nsFamily is the prefix shared by the namespaces of every format version.
const nsFamily = "urn:clinkme:envelope:"

// Bounds. A valid envelope is at most 200 KiB once marshalled, so it fits in
// one client stanza (Prosody's default c2s limit is 256 KiB).
const (
	// MaxRecipients is the largest number of <to> elements.
	MaxRecipients = 32
	// MaxKeys is the largest number of wrapped keys in a standard envelope:
	// room for every recipient plus the sender, with a second device key for
	// some of them.
	MaxKeys = 64
	// MaxJIDLen is the largest bare JID in bytes (RFC 7622: 1023 bytes for
	// each of localpart and domainpart, plus the separator).
	MaxJIDLen = 2047
	// MaxIDLen is the largest message id in bytes.
	MaxIDLen = 64
	// FingerprintSize is the size of a key fingerprint: SHA-256.
	FingerprintSize = 32
	// KeyIDSize is the size of the identifier of a contact key.
	KeyIDSize = 16
	// NonceSize is the size of the AES-GCM nonce.
	NonceSize = 12
	// TagSize is the size of the AES-GCM authentication tag, the smallest
	// payload.
	TagSize = 16
	// MaxPayloadSize is the largest payload: 64 KiB of sealed content plus
	// the tag.
	MaxPayloadSize = 64<<10 + TagSize
	// MinRSASize and MaxRSASize bound the size in bytes of a wrapped key and
	// of a signature, which is the size of the RSA modulus: 3072 to 4096
	// bits.
	MinRSASize = 3072 / 8
	MaxRSASize = 4096 / 8
	// MaxCheckpointSize is the largest checkpoint a version 1 envelope
	// carries: a signed note of the key directory log (its body and the
	// log's signature line take about 200 bytes; a few witness
	// cosignatures fit too).
	MaxCheckpointSize = 2048
)

// Kind says how the payload key is conveyed.
type Kind string

const (
	// Standard: a fresh AES-256 key per message, wrapped with RSA-OAEP for
	// each recipient key and for the sender's own key.
	Standard Kind = "standard"
	// Enhanced ("ClinkMe Secure"): the payload is sealed under the secure
	// communication key the two users share, named by KeyID.
	Enhanced Kind = "enhanced"
)

// timeLayout is the only accepted form of a time: XEP-0082 DateTime in UTC
// with whole seconds. One form keeps the signed encoding unambiguous.
const timeLayout = "2006-01-02T15:04:05Z"

// ErrInvalid is wrapped by every error about a malformed envelope.
var ErrInvalid = errors.New("envelope: invalid")

// ErrUnsupportedVersion is returned when unmarshalling an envelope of another
// format version (an element envelope in a namespace urn:clinkme:envelope:N
// other than NS).
var ErrUnsupportedVersion = errors.New("envelope: unsupported envelope version")

// An Envelope is one end-to-end encrypted message as it travels.
//
// Binary fields hold the decoded bytes; they are base64 on the wire. The
// zero Envelope is not valid. Fields are documented with the bounds that
// Validate enforces.
type Envelope struct {
	Kind Kind   // Standard or Enhanced
	From string // sender bare JID, in canonical form (CheckCanonicalJID)
	// To lists the recipients' bare JIDs, in canonical form, each once,
	// 1 ≤ len ≤ MaxRecipients. An enhanced envelope has exactly one, other
	// than From.
	To      []string
	ID      string    // message id, 1 to MaxIDLen bytes in 0x21..0x7E
	Time    time.Time // send time, whole seconds, not zero
	Expires time.Time // optional end of validity: zero, or after Time

	// Keys is the payload key wrapped for each recipient key, for a standard
	// envelope (1 ≤ len ≤ MaxKeys, fingerprints unique); empty for an
	// enhanced one.
	Keys []WrappedKey
	// KeyID names the contact key of an enhanced envelope (KeyIDSize bytes);
	// empty for a standard one.
	KeyID []byte

	Nonce     []byte // NonceSize bytes
	Payload   []byte // ciphertext and tag, TagSize to MaxPayloadSize bytes
	Signature []byte // MinRSASize to MaxRSASize bytes

	// Version is the format version: 0 (NS) or 1 (NS1).
	Version int
	// Checkpoint is, in a version 1 envelope, the sender device's latest
	// verified checkpoint of the key directory log, as the signed note it
	// accepted (1 to MaxCheckpointSize bytes); empty in version 0. Its
	// meaning is the receiver's business (docs/envelope.md, section 12):
	// Validate checks only its size.
	Checkpoint []byte
}

// A WrappedKey is the payload key of a standard envelope encrypted to one
// RSA public key.
type WrappedKey struct {
	// Fingerprint is the SHA-256 of the DER SubjectPublicKeyInfo of the key
	// it is wrapped for (FingerprintSize bytes).
	Fingerprint []byte
	// Key is the RSA-OAEP ciphertext (MinRSASize to MaxRSASize bytes).
	Key []byte
}

// Validate reports whether e is structurally valid: kind known, required
// fields present, JIDs in canonical form, Expires after Time, counts and
// sizes within the bounds documented on Envelope. It does not and cannot
// check any signature. The error wraps ErrInvalid.
func (e *Envelope) Validate() error {
	if err := e.validate(); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalid, err)
	}
	return nil
}

func (e *Envelope) validate() error {
	switch {
	case e.Version == 0 && len(e.Checkpoint) != 0:
		return errors.New("checkpoint in a version 0 envelope")
	case e.Version == 1 && (len(e.Checkpoint) == 0 || len(e.Checkpoint) > MaxCheckpointSize):
		return fmt.Errorf("checkpoint of %d bytes, want 1 to %d", len(e.Checkpoint), MaxCheckpointSize)
	case e.Version != 0 && e.Version != 1:
		return fmt.Errorf("unknown version %d", e.Version)
	}
	if e.Kind != Standard && e.Kind != Enhanced {
		return fmt.Errorf("unknown kind %q", e.Kind)
	}
	if err := checkCanonicalJID(e.From); err != nil {
		return fmt.Errorf("from: %v", err)
	}
	if len(e.To) == 0 || len(e.To) > MaxRecipients {
		return fmt.Errorf("%d recipients, want 1 to %d", len(e.To), MaxRecipients)
	}
	seen := make(map[string]bool, len(e.To))
	for _, to := range e.To {
		if err := checkCanonicalJID(to); err != nil {
			return fmt.Errorf("to: %v", err)
		}
		if seen[to] {
			return fmt.Errorf("to: duplicate recipient")
		}
		seen[to] = true
	}
	if err := checkID(e.ID); err != nil {
		return err
	}
	if err := checkTime(e.Time); err != nil {
		return fmt.Errorf("time: %v", err)
	}
	if !e.Expires.IsZero() {
		if err := checkTime(e.Expires); err != nil {
			return fmt.Errorf("expires: %v", err)
		}
		if !e.Expires.After(e.Time) {
			return errors.New("expires: not after time")
		}
	}
	switch e.Kind {
	case Standard:
		if len(e.Keys) == 0 || len(e.Keys) > MaxKeys {
			return fmt.Errorf("%d wrapped keys, want 1 to %d", len(e.Keys), MaxKeys)
		}
		fps := make(map[string]bool, len(e.Keys))
		for _, k := range e.Keys {
			if len(k.Fingerprint) != FingerprintSize {
				return fmt.Errorf("key: fingerprint of %d bytes, want %d", len(k.Fingerprint), FingerprintSize)
			}
			if fps[string(k.Fingerprint)] {
				return errors.New("key: duplicate fingerprint")
			}
			fps[string(k.Fingerprint)] = true
			if len(k.Key) < MinRSASize || len(k.Key) > MaxRSASize {
				return fmt.Errorf("key: wrapped key of %d bytes, want %d to %d", len(k.Key), MinRSASize, MaxRSASize)
			}
		}
		if len(e.KeyID) != 0 {
			return errors.New("keyid in a standard envelope")
		}
	case Enhanced:
		if len(e.To) != 1 {
			return fmt.Errorf("enhanced envelope with %d recipients, want 1", len(e.To))
		}
		if e.To[0] == e.From {
			return errors.New("enhanced envelope to its sender")
		}
		if len(e.Keys) != 0 {
			return errors.New("wrapped key in an enhanced envelope")
		}
		if len(e.KeyID) != KeyIDSize {
			return fmt.Errorf("keyid of %d bytes, want %d", len(e.KeyID), KeyIDSize)
		}
	}
	if len(e.Nonce) != NonceSize {
		return fmt.Errorf("nonce of %d bytes, want %d", len(e.Nonce), NonceSize)
	}
	if len(e.Payload) < TagSize || len(e.Payload) > MaxPayloadSize {
		return fmt.Errorf("payload of %d bytes, want %d to %d", len(e.Payload), TagSize, MaxPayloadSize)
	}
	if len(e.Signature) < MinRSASize || len(e.Signature) > MaxRSASize {
		return fmt.Errorf("signature of %d bytes, want %d to %d", len(e.Signature), MinRSASize, MaxRSASize)
	}
	return nil
}

// CheckJID reports whether s has the shape of a bare JID:
// [localpart@]domainpart, no resource, each part 1 to 1023 bytes of UTF-8
// with no space, control character or any of "&'/:<>@. It does not apply
// the PRECIS profiles, so it accepts Alice@example.org; Validate also
// requires the canonical form in From and To (see CheckCanonicalJID). The
// error wraps ErrInvalid.
func CheckJID(s string) error {
	if err := checkJID(s); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalid, err)
	}
	return nil
}

// CheckCanonicalJID reports whether s is a JID that Validate accepts in
// From and To: it has the shape CheckJID checks, and it is in canonical
// form, that is RFC 7622's preparation and enforcement (as
// mellium.im/xmpp/jid applies them: the PRECIS UsernameCaseMapped profile
// for the localpart; IDNA to Unicode, lower case and no trailing dot for the
// domainpart) leave it unchanged, byte for byte. Alice@example.org,
// alice@Example.org, alice@example.org. and a full-width Ａlice@example.org
// are not canonical; alice@example.org is. JIDs are signed and compared
// byte for byte, and the key directory labels the canonical form, so a
// receiver refuses any other (docs/envelope.md, section 2). The error wraps
// ErrInvalid.
func CheckCanonicalJID(s string) error {
	if err := checkCanonicalJID(s); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalid, err)
	}
	return nil
}

func checkCanonicalJID(s string) error {
	if plainCanonical(s) {
		return nil
	}
	if err := checkJID(s); err != nil {
		return err
	}
	j, err := jid.Parse(s)
	if err != nil {
		return fmt.Errorf("JID not valid under RFC 7622: %v", err)
	}
	if c := j.String(); c != s {
		return fmt.Errorf("JID not in canonical form (RFC 7622 prepares it as %q)", c)
	}
	return nil
}

// plainCanonical reports whether s is a bare JID of the plainest kind,
// which checkCanonicalJID's parse would accept unchanged: a localpart of
// a-z, 0-9, '.', '_' and '-' (at most 1,023 bytes), and a domain of dot-separated labels of
// a-z, 0-9 and inner '-', none an IDNA ("xn--") label, the last beginning
// with a letter (so not an IP address), of at most 63 bytes each and 253
// in all. Nearly every JID an envelope names is one, and parsing one
// (PRECIS, IDNA) cost a relayed message more than its own checks. False
// says nothing: the JID is then parsed (FuzzPlainCanonical holds the two
// to agree).
func plainCanonical(s string) bool {
	if len(s) > MaxJIDLen {
		return false
	}
	local, domain, found := strings.Cut(s, "@")
	if !found || local == "" || len(local) > 1023 || len(domain) > 253 {
		return false
	}
	for i := 0; i < len(local); i++ {
		if c := local[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	for label := range strings.SplitSeq(domain, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' || len(label) >= 4 && label[2:4] == "--" {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	last := domain[strings.LastIndexByte(domain, '.')+1:]
	return last[0] >= 'a' && last[0] <= 'z'
}

func checkJID(s string) error {
	if len(s) == 0 || len(s) > MaxJIDLen {
		return fmt.Errorf("JID of %d bytes, want 1 to %d", len(s), MaxJIDLen)
	}
	if !utf8.ValidString(s) {
		return errors.New("JID not UTF-8")
	}
	local, domain, found := strings.Cut(s, "@")
	if !found {
		local, domain = "", s
	} else if local == "" {
		return errors.New("JID with an empty localpart")
	}
	for _, part := range []string{local, domain} {
		if len(part) > 1023 {
			return errors.New("JID part longer than 1023 bytes")
		}
		if strings.ContainsFunc(part, badJIDRune) {
			return errors.New("JID with a forbidden character")
		}
	}
	if domain == "" {
		return errors.New("JID with an empty domainpart")
	}
	return nil
}

func badJIDRune(r rune) bool {
	return strings.ContainsRune("\"&'/:<>@", r) || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError
}

func checkID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("id of %d bytes, want 1 to %d", len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return errors.New("id with a byte outside 0x21..0x7e")
		}
	}
	return nil
}

func checkTime(t time.Time) error {
	if t.IsZero() {
		return errors.New("missing")
	}
	if t.Nanosecond() != 0 {
		return errors.New("not whole seconds")
	}
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return errors.New("year out of range")
	}
	return nil
}

// FormatTime returns t as it appears on the wire and in the signed encoding:
// "2006-01-02T15:04:05Z" in UTC. The fractional second is dropped.
func FormatTime(t time.Time) string {
	return t.UTC().Format(timeLayout)
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(timeLayout, s)
	if err != nil || t.Format(timeLayout) != s {
		return time.Time{}, fmt.Errorf("time %q not of the form %s", s, timeLayout)
	}
	return t, nil
}

// MarshalXML writes e as it goes on the wire, whether valid or not: call
// Validate first. Times are written in UTC with whole seconds.
func (e Envelope) MarshalXML(enc *xml.Encoder, _ xml.StartElement) error {
	start := xml.StartElement{
		Name: xml.Name{Space: e.namespace(), Local: "envelope"},
		Attr: []xml.Attr{
			{Name: xml.Name{Local: "kind"}, Value: string(e.Kind)},
			{Name: xml.Name{Local: "from"}, Value: e.From},
			{Name: xml.Name{Local: "id"}, Value: e.ID},
			{Name: xml.Name{Local: "time"}, Value: FormatTime(e.Time)},
		},
	}
	if !e.Expires.IsZero() {
		start.Attr = append(start.Attr, xml.Attr{Name: xml.Name{Local: "expires"}, Value: FormatTime(e.Expires)})
	}
	if err := enc.EncodeToken(start); err != nil {
		return err
	}
	for _, to := range e.To {
		if err := encodeElement(enc, "to", []xml.Attr{{Name: xml.Name{Local: "jid"}, Value: to}}, nil); err != nil {
			return err
		}
	}
	for _, k := range e.Keys {
		attr := []xml.Attr{{Name: xml.Name{Local: "fp"}, Value: b64(k.Fingerprint)}}
		if err := encodeElement(enc, "key", attr, k.Key); err != nil {
			return err
		}
	}
	if len(e.KeyID) > 0 {
		if err := encodeElement(enc, "keyid", nil, e.KeyID); err != nil {
			return err
		}
	}
	if e.Version == 1 {
		if err := encodeElement(enc, "checkpoint", nil, e.Checkpoint); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"nonce", e.Nonce}, {"payload", e.Payload}, {"sig", e.Signature}} {
		if err := encodeElement(enc, f.name, nil, f.data); err != nil {
			return err
		}
	}
	return enc.EncodeToken(start.End())
}

// AppendXML appends e as MarshalXML writes it (what xml.Marshal makes of
// it, byte for byte: TestAppendXMLMatchesMarshal, FuzzParseEnvelope), for
// callers that keep an envelope's canonical XML: it writes the bytes
// directly, without an encoder, token values or base64 strings on the
// way. Like MarshalXML it writes e whether valid or not.
func (e *Envelope) AppendXML(b []byte) []byte {
	b = slices.Grow(b, e.encodedLen())
	b = append(b, `<envelope xmlns="`...)
	b = append(b, e.namespace()...)
	b = append(b, '"')
	b = appendAttr(b, "kind", string(e.Kind))
	b = appendAttr(b, "from", e.From)
	b = appendAttr(b, "id", e.ID)
	b = append(b, ` time="`...)
	b = e.Time.UTC().AppendFormat(b, timeLayout)
	b = append(b, '"')
	if !e.Expires.IsZero() {
		b = append(b, ` expires="`...)
		b = e.Expires.UTC().AppendFormat(b, timeLayout)
		b = append(b, '"')
	}
	b = append(b, '>')
	for _, to := range e.To {
		b = append(b, `<to`...)
		b = appendAttr(b, "jid", to)
		b = append(b, `></to>`...)
	}
	for _, k := range e.Keys {
		b = append(b, `<key fp="`...)
		b = base64.StdEncoding.AppendEncode(b, k.Fingerprint)
		b = append(b, `">`...)
		b = base64.StdEncoding.AppendEncode(b, k.Key)
		b = append(b, `</key>`...)
	}
	if len(e.KeyID) > 0 {
		b = appendElement(b, "keyid", e.KeyID)
	}
	if e.Version == 1 {
		b = appendElement(b, "checkpoint", e.Checkpoint)
	}
	b = appendElement(b, "nonce", e.Nonce)
	b = appendElement(b, "payload", e.Payload)
	b = appendElement(b, "sig", e.Signature)
	return append(b, `</envelope>`...)
}

// encodedLen is the length of e's XML as AppendXML writes it, exactly
// (TestAppendXMLMatchesMarshal, FuzzParseEnvelope check it): the relay
// holds these bytes for as long as a timed message lives, and a buffer
// grown by a guess kept about 400 spare bytes per held envelope.
func (e *Envelope) encodedLen() int {
	n := len(`<envelope xmlns=""`) + len(e.namespace()) +
		attrLen("kind", string(e.Kind)) + attrLen("from", e.From) + attrLen("id", e.ID) +
		len(` time=""`) + timeLen(e.Time) + len(`>`) + len(`</envelope>`)
	if !e.Expires.IsZero() {
		n += len(` expires=""`) + timeLen(e.Expires)
	}
	for _, to := range e.To {
		n += len(`<to></to>`) + attrLen("jid", to)
	}
	enc := base64.StdEncoding.EncodedLen
	for _, k := range e.Keys {
		n += len(`<key fp=""></key>`) + enc(len(k.Fingerprint)) + enc(len(k.Key))
	}
	if len(e.KeyID) > 0 {
		n += elementLen("keyid", e.KeyID)
	}
	if e.Version == 1 {
		n += elementLen("checkpoint", e.Checkpoint)
	}
	return n + elementLen("nonce", e.Nonce) + elementLen("payload", e.Payload) + elementLen("sig", e.Signature)
}

// timeLen is the length of t as AppendXML writes it: 20 bytes but for
// years outside 0 to 9999.
func timeLen(t time.Time) int {
	var b [64]byte
	return len(t.UTC().AppendFormat(b[:0], timeLayout))
}

func elementLen(name string, data []byte) int {
	return 2*len(name) + len(`<></>`) + base64.StdEncoding.EncodedLen(len(data))
}

// attrLen is the length of appendAttr's ` name="value"`, escaping
// counted as encoding/xml escapes.
func attrLen(name, value string) int {
	var c countWriter
	_ = xml.EscapeText(&c, []byte(value)) // a countWriter never fails
	return len(name) + len(` =""`) + int(c)
}

type countWriter int

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

func appendElement(b []byte, name string, data []byte) []byte {
	b = append(b, '<')
	b = append(b, name...)
	b = append(b, '>')
	b = base64.StdEncoding.AppendEncode(b, data)
	b = append(b, "</"...)
	b = append(b, name...)
	return append(b, '>')
}

// appendAttr appends ` name="value"`, the value escaped as encoding/xml
// escapes attribute values.
func appendAttr(b []byte, name, value string) []byte {
	b = append(b, ' ')
	b = append(b, name...)
	b = append(b, `="`...)
	w := appendWriter{b}
	_ = xml.EscapeText(&w, []byte(value)) // an appendWriter never fails
	return append(w.b, '"')
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// namespace is the namespace of e's version (NS1 for 1, NS otherwise).
func (e Envelope) namespace() string {
	if e.Version == 1 {
		return NS1
	}
	return NS
}

// Namespace is the namespace of e's format version: NS or NS1.
func (e *Envelope) Namespace() string { return e.namespace() }

func encodeElement(enc *xml.Encoder, name string, attr []xml.Attr, data []byte) error {
	start := xml.StartElement{Name: xml.Name{Local: name}, Attr: attr}
	if err := enc.EncodeToken(start); err != nil {
		return err
	}
	if data != nil {
		if err := enc.EncodeToken(xml.CharData(b64(data))); err != nil {
			return err
		}
	}
	return enc.EncodeToken(start.End())
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// unb64 decodes canonical padded standard base64 of at most max decoded
// bytes, and at least one. Anything else (whitespace, missing padding,
// non-zero trailing bits) is an error, so that each value has exactly one
// encoding.
//
// With a nil arena the bytes get memory of their own. Otherwise they are
// decoded into *arena's spare capacity (grown when it has too little),
// *arena is extended over them, and the result's capacity ends where it
// does, so that appending to one field never writes into the next.
func unb64(s []byte, max int, arena *[]byte) ([]byte, error) {
	if len(s) == 0 {
		return nil, errors.New("empty")
	}
	if len(s) > base64.StdEncoding.EncodedLen(max) {
		return nil, fmt.Errorf("more than %d bytes", max)
	}
	// Strict decoding with padding refuses everything non-canonical but
	// the line breaks the decoder skips; refusing those too leaves one
	// encoding per value, without encoding b again to compare.
	var b []byte
	if arena == nil {
		b = make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	} else {
		*arena = slices.Grow(*arena, base64.StdEncoding.DecodedLen(len(s)))
		b = (*arena)[len(*arena) : len(*arena)+base64.StdEncoding.DecodedLen(len(s))]
	}
	n, err := base64.StdEncoding.Strict().Decode(b, s)
	if err != nil || bytes.ContainsAny(s, "\r\n") {
		return nil, errors.New("not canonical base64")
	}
	b = b[:n:n]
	if len(b) > max {
		return nil, fmt.Errorf("more than %d bytes", max)
	}
	if arena != nil {
		*arena = (*arena)[:len(*arena)+n]
	}
	return b, nil
}

// UnmarshalXML reads an envelope element. An envelope of another format
// version gives an error wrapping ErrUnsupportedVersion; anything else that
// does not fit the Envelope type gives one wrapping ErrInvalid. Bounds on
// counts and sizes are enforced while reading, so a hostile element cannot
// make it allocate much more than its own size; call Validate for the rest.
func (e *Envelope) UnmarshalXML(d *xml.Decoder, start xml.StartElement) error {
	return e.DecodeTokens(d, start)
}

// DecodeTokens is UnmarshalXML for a reader of tokens that an XML reader
// has already checked and whose names it has already translated to their
// namespaces: the envelope's start element, which the caller has read, and
// r, which gives the rest of it, up to and including its end element.
// clinkd's stanzas (component.Stanza.Decode) call it directly, without an
// xml.Decoder around their tokens, which cost more than the decoding.
// It does not change the tokens it reads.
func (e *Envelope) DecodeTokens(r xml.TokenReader, start xml.StartElement) error {
	return e.decode(r, start, &decoding{})
}

// DecodeTokensInto is DecodeTokens for a caller that decodes envelope
// after envelope and is done with each before the next: e's binary fields
// are decoded into buf's spare capacity instead of memory of their own,
// and share it. r's tokens must stay as they are while it reads them (a
// stanza's held tokens do; an xml.Decoder's text does not), as their
// text is decoded where it lies. It returns buf extended over them (a larger copy when buf
// had too little room), the buffer to pass again, from its start, once
// nothing uses e any more. clinkd's router decodes every relayed envelope
// so, keeping only its canonical XML: with a buffer of an envelope's size,
// decoding allocates nothing for its fields (issue 15). What e held before
// is replaced, and on error e is unchanged.
func (e *Envelope) DecodeTokensInto(buf []byte, r xml.TokenReader, start xml.StartElement) ([]byte, error) {
	err := e.decode(r, start, &decoding{arena: &buf, heldTokens: true})
	return buf, err
}

// decode is DecodeTokens and DecodeTokensInto: an envelope of another
// format version is skipped with ErrUnsupportedVersion; e changes only
// when the whole envelope decodes.
func (e *Envelope) decode(r xml.TokenReader, start xml.StartElement, d *decoding) error {
	if start.Name.Local == "envelope" && start.Name.Space != NS && start.Name.Space != NS1 && strings.HasPrefix(start.Name.Space, nsFamily) {
		if err := skip(r); err != nil {
			return err
		}
		return fmt.Errorf("%w: namespace %q", ErrUnsupportedVersion, start.Name.Space)
	}
	var out Envelope
	if err := out.unmarshal(r, start, d); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalid, err)
	}
	*e = out
	return nil
}

// decoding is what one decode of an envelope reuses from child to child.
type decoding struct {
	text  []byte  // a child's text, when it is copied
	arena *[]byte // where binary fields go; nil: memory of their own
	// heldTokens: the reader's tokens stay valid after the next Token
	// call, so text that comes as one token is decoded where it lies.
	heldTokens bool
}

// skip reads up to and including the end of the element whose start was
// read.
func skip(r xml.TokenReader) error {
	for depth := 1; depth > 0; {
		tok, err := r.Token()
		if err != nil {
			return err
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
	}
	return nil
}

func (e *Envelope) unmarshal(d xml.TokenReader, start xml.StartElement, dec *decoding) error {
	switch start.Name {
	case xml.Name{Space: NS, Local: "envelope"}:
	case xml.Name{Space: NS1, Local: "envelope"}:
		e.Version = 1
	default:
		return fmt.Errorf("element <%s xmlns=%q> is not an envelope", start.Name.Local, start.Name.Space)
	}
	var haveKind, haveFrom, haveID, haveTime, haveExpires bool
	for _, a := range start.Attr {
		if isXMLNS(a.Name) {
			continue
		}
		if a.Name.Space != "" {
			return fmt.Errorf("unknown attribute %s:%s", a.Name.Space, a.Name.Local)
		}
		var dup bool
		var err error
		switch a.Name.Local {
		case "kind":
			dup, haveKind = haveKind, true
			e.Kind = Kind(a.Value)
		case "from":
			dup, haveFrom = haveFrom, true
			e.From = a.Value
		case "id":
			dup, haveID = haveID, true
			e.ID = a.Value
		case "time":
			dup, haveTime = haveTime, true
			e.Time, err = parseTime(a.Value)
		case "expires":
			dup, haveExpires = haveExpires, true
			e.Expires, err = parseTime(a.Value)
		default:
			return fmt.Errorf("unknown attribute %s", a.Name.Local)
		}
		if err != nil {
			return fmt.Errorf("%s: %v", a.Name.Local, err)
		}
		if dup {
			return fmt.Errorf("duplicate attribute %s", a.Name.Local)
		}
	}
	if !haveKind || !haveFrom || !haveID || !haveTime {
		return errors.New("missing attribute: kind, from, id and time are required")
	}

	for {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.EndElement:
			return nil
		case xml.CharData:
			if len(bytes.TrimLeft(t, " \t\r\n")) != 0 {
				return errors.New("text in envelope")
			}
		case xml.Comment:
		case xml.StartElement:
			if err := e.unmarshalChild(d, t, dec); err != nil {
				return fmt.Errorf("<%s>: %v", t.Name.Local, err)
			}
		default:
			return fmt.Errorf("unexpected %T in envelope", tok)
		}
	}
}

// unmarshalChild reads one child of the envelope.
func (e *Envelope) unmarshalChild(d xml.TokenReader, start xml.StartElement, dec *decoding) error {
	if start.Name.Space != e.namespace() {
		return fmt.Errorf("unknown element in namespace %q", start.Name.Space)
	}
	// Attribute lists per element; every listed attribute is required.
	var attrs []string
	switch start.Name.Local {
	case "to":
		attrs = []string{"jid"}
	case "key":
		attrs = []string{"fp"}
	case "keyid", "nonce", "payload", "sig":
	case "checkpoint":
		if e.Version != 1 {
			return errors.New("unknown element")
		}
	default:
		return errors.New("unknown element")
	}
	vals, err := attributes(start, attrs)
	if err != nil {
		return err
	}

	var max int
	var dst *[]byte
	switch start.Name.Local {
	case "to":
		if len(e.To) == MaxRecipients {
			return fmt.Errorf("more than %d", MaxRecipients)
		}
		max = 0
	case "key":
		if len(e.Keys) == MaxKeys {
			return fmt.Errorf("more than %d", MaxKeys)
		}
		max = MaxRSASize
	case "keyid":
		max, dst = KeyIDSize, &e.KeyID
	case "nonce":
		max, dst = NonceSize, &e.Nonce
	case "payload":
		max, dst = MaxPayloadSize, &e.Payload
	case "sig":
		max, dst = MaxRSASize, &e.Signature
	case "checkpoint":
		max, dst = MaxCheckpointSize, &e.Checkpoint
	}
	var text []byte
	text, dec.text, err = readText(d, base64.StdEncoding.EncodedLen(max), dec.text[:0], dec.heldTokens)
	if err != nil {
		return err
	}
	var data []byte
	if max > 0 {
		if data, err = unb64(text, max, dec.arena); err != nil {
			return err
		}
	} else if len(text) != 0 {
		return errors.New("unexpected text")
	}
	switch start.Name.Local {
	case "to":
		e.To = append(e.To, vals[0])
	case "key":
		fp, err := unb64([]byte(vals[0]), FingerprintSize, dec.arena)
		if err != nil {
			return fmt.Errorf("fp: %v", err)
		}
		e.Keys = append(e.Keys, WrappedKey{Fingerprint: fp, Key: data})
	default:
		if *dst != nil {
			return errors.New("duplicate element")
		}
		*dst = data
	}
	return nil
}

// attributes returns the values of the named attributes of start, in order,
// and an error if one is missing, repeated or not in names.
func attributes(start xml.StartElement, names []string) ([]string, error) {
	vals := make([]string, len(names))
	seen := make([]bool, len(names))
	for _, a := range start.Attr {
		if isXMLNS(a.Name) {
			continue
		}
		i := -1
		if a.Name.Space == "" {
			for j, n := range names {
				if a.Name.Local == n {
					i = j
				}
			}
		}
		if i < 0 {
			return nil, fmt.Errorf("unknown attribute %s", a.Name.Local)
		}
		if seen[i] {
			return nil, fmt.Errorf("duplicate attribute %s", a.Name.Local)
		}
		seen[i], vals[i] = true, a.Value
	}
	for i, ok := range seen {
		if !ok {
			return nil, fmt.Errorf("missing attribute %s", names[i])
		}
	}
	return vals, nil
}

// isXMLNS reports whether an attribute is a namespace declaration, which the
// decoder has already applied.
func isXMLNS(n xml.Name) bool {
	return n.Space == "xmlns" || (n.Space == "" && n.Local == "xmlns")
}

// readText reads the text content of an element, up to and including its
// end, at most max bytes of it. Child elements are an error. With held
// tokens (valid after the next Token call), text that comes as one token
// (as a stanza's tokens hold text without comments in it) is returned as
// that token, not copied, and must not be changed; otherwise the text is
// copied into buf, which is returned too, for reuse, grown or not.
func readText(d xml.TokenReader, max int, buf []byte, held bool) (text, grown []byte, err error) {
	var first xml.CharData // the text while it is one token
	pieces := 0
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, buf, err
		}
		switch t := tok.(type) {
		case xml.CharData:
			if len(first)+len(buf)+len(t) > max {
				return nil, buf, errors.New("content too long")
			}
			switch pieces++; {
			case !held:
				buf = append(buf, t...)
			case pieces == 1:
				first = t
			case pieces == 2:
				buf = append(append(buf, first...), t...)
				first = nil
			default:
				buf = append(buf, t...)
			}
		case xml.EndElement:
			if held && pieces <= 1 {
				return first, buf, nil
			}
			return buf, buf, nil
		case xml.Comment:
		default:
			return nil, buf, fmt.Errorf("unexpected %T", tok)
		}
	}
}
