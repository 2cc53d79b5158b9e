// Package keydirxml implements the payloads of ClinkMe's verifiable public-key
// directory (urn:clinkme:keydir:0), specified in docs/protocol.md.
//
// Only the wire types and their structural checks live here: package
// keydir (the server) answers the requests, package client verifies the
// answers. Nothing here does I/O or cryptography beyond decoding base64.
package keydirxml

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// NS is the namespace of every payload. A change that an older peer would
// misread gets a new namespace (urn:clinkme:keydir:1), never a silent
// change of this one.
const NS = "urn:clinkme:keydir:0"

// Limits every decoder enforces, so that a hostile peer cannot make the
// other side allocate much: a proof never has more hashes than a tree of
// 2^63 leaves needs, and a key is far below the component's stanza limit.
const (
	MaxProofHashes  = 64
	MaxKeyBase64    = 4096      // room to spare: an RSA-4096 SubjectPublicKeyInfo is 550 bytes of DER, 736 of base64
	MaxCheckpoint   = 128 << 10 // a signed checkpoint is about 200 bytes; C2SP signed-note wants at least 16 signatures accepted, post-quantum ones up to ~5 kB each
	MaxJIDBytes     = 3071      // RFC 7622: each of the three parts at most 1023 bytes
	MaxBatchOnWire  = 256       // the server's configured batch bound is lower; this bounds decoding
	MaxHistoryItems = 1024      // entries in one history answer
)

// Entry statuses in a lookup answer.
const (
	StatusFound = "found" // the JID has a binding; key, index and proof follow
	StatusNone  = "none"  // the JID has no binding (absence is not provable, see docs/protocol.md)
)

// Entry kinds in the log, as in the leaf record.
const (
	KindPublish = "publish"
	KindReset   = "reset"
	KindDelete  = "delete"
)

// Publish is the request (IQ set) to bind the sender's bare JID to Key,
// and its result: the binding as a lookup would return it.
type Publish struct {
	XMLName    xml.Name `xml:"urn:clinkme:keydir:0 publish"`
	Key        string   `xml:"key,omitempty"`        // request: base64 SubjectPublicKeyInfo DER
	Checkpoint string   `xml:"checkpoint,omitempty"` // result only
	Entry      *Entry   `xml:"entry,omitempty"`      // result only
}

// Lookup is the request (IQ get) for the bindings of one or several bare
// JIDs, and its result.
type Lookup struct {
	XMLName    xml.Name `xml:"urn:clinkme:keydir:0 lookup"`
	JIDs       []string `xml:"jid"`                  // request only
	Checkpoint string   `xml:"checkpoint,omitempty"` // result only
	Entries    []Entry  `xml:"entry"`                // result only, one per distinct requested JID
}

// Entry is one JID's binding in a lookup or publish result.
type Entry struct {
	XMLName     xml.Name `xml:"urn:clinkme:keydir:0 entry"`
	JID         string   `xml:"jid,attr"`
	Status      string   `xml:"status,attr"`                // found or none
	Index       int64    `xml:"index,attr"`                 // the binding's leaf index in the log (found only)
	Time        int64    `xml:"time,attr"`                  // Unix seconds, as in the leaf record (found only)
	Fingerprint string   `xml:"fingerprint,attr,omitempty"` // hex SHA-256 of the key's DER
	Key         string   `xml:"key,omitempty"`              // base64 SubjectPublicKeyInfo DER
	Proof       *Proof   `xml:"proof,omitempty"`            // inclusion of the leaf in the checkpoint's tree
}

// entryNone is how an entry without a binding goes on the wire: index 0
// is a real leaf, so a none entry must not carry index or time at all.
type entryNone struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:0 entry"`
	JID     string   `xml:"jid,attr"`
	Status  string   `xml:"status,attr"`
}

// MarshalXML writes index and time only for found entries.
func (e Entry) MarshalXML(enc *xml.Encoder, start xml.StartElement) error {
	if e.Status == StatusNone {
		return enc.Encode(entryNone{JID: e.JID, Status: e.Status})
	}
	type plain Entry // no methods: avoids recursion
	return enc.Encode(plain(e))
}

// Proof is a list of hashes, base64, in the order RFC 6962 (and
// golang.org/x/mod/sumdb/tlog) gives them.
type Proof struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:0 proof"`
	Hashes  []string `xml:"hash"`
}

// Checkpoint is the request (IQ get, empty) for the latest signed
// checkpoint, and its result (the signed note as text).
type Checkpoint struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:0 checkpoint"`
	Text    string   `xml:",chardata"`
}

// Consistency asks (IQ get) for the proof that the tree of size Old is a
// prefix of the tree of size New; the result carries it.
type Consistency struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:0 consistency"`
	Old     int64    `xml:"old,attr"`
	New     int64    `xml:"new,attr"`
	Hashes  []string `xml:"hash"` // result only
}

// History asks (IQ get) for every log entry of the sender's own bare JID;
// the result lists them, each with its inclusion proof.
type History struct {
	XMLName    xml.Name `xml:"urn:clinkme:keydir:0 history"`
	JID        string   `xml:"jid,attr,omitempty"` // request: optional, must be the sender's; result: set
	Checkpoint string   `xml:"checkpoint,omitempty"`
	Records    []Record `xml:"record"`
}

// Record is one log entry of a history.
type Record struct {
	XMLName     xml.Name `xml:"urn:clinkme:keydir:0 record"`
	Index       int64    `xml:"index,attr"`
	Kind        string   `xml:"kind,attr"` // publish, reset or delete
	Time        int64    `xml:"time,attr"`
	Fingerprint string   `xml:"fingerprint,attr"`
	Proof       *Proof   `xml:"proof,omitempty"`
}

// ErrInvalid is wrapped by every structural check's error.
var ErrInvalid = errors.New("keydir: invalid payload")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// DecodeHash decodes one base64 hash of 32 bytes.
func DecodeHash(s string) ([32]byte, error) {
	var h [32]byte
	if len(s) != 44 {
		return h, invalid("hash is not 44 characters of base64")
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != 32 {
		return h, invalid("hash is not base64 of 32 bytes")
	}
	copy(h[:], b)
	return h, nil
}

// EncodeHash encodes a hash as base64.
func EncodeHash(h [32]byte) string { return base64.StdEncoding.EncodeToString(h[:]) }

// DecodeHashes decodes a proof's hashes, at most MaxProofHashes of them.
func DecodeHashes(hs []string) ([][32]byte, error) {
	if len(hs) > MaxProofHashes {
		return nil, invalid("proof has %d hashes, more than %d", len(hs), MaxProofHashes)
	}
	out := make([][32]byte, len(hs))
	for i, s := range hs {
		h, err := DecodeHash(s)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

// DecodeFingerprint decodes a fingerprint: 64 lower-case hex digits.
func DecodeFingerprint(s string) ([32]byte, error) {
	var fp [32]byte
	if len(s) != 64 || strings.ToLower(s) != s {
		return fp, invalid("fingerprint is not 64 lower-case hex digits")
	}
	if _, err := hex.Decode(fp[:], []byte(s)); err != nil {
		return fp, invalid("fingerprint is not 64 lower-case hex digits")
	}
	return fp, nil
}

// Validate checks a publish request: one key, of bounded size.
func (p *Publish) Validate() error {
	if p.Key == "" {
		return invalid("publish carries no key")
	}
	if len(p.Key) > MaxKeyBase64 {
		return invalid("key is %d characters, more than %d", len(p.Key), MaxKeyBase64)
	}
	if p.Checkpoint != "" || p.Entry != nil {
		return invalid("a publish request carries only a key")
	}
	return nil
}

// Validate checks a lookup request: 1 to max JIDs, each of bounded size.
// It does not parse the JIDs; the server does.
func (l *Lookup) Validate(max int) error {
	max = min(max, MaxBatchOnWire)
	if len(l.JIDs) == 0 {
		return invalid("lookup names no JID")
	}
	if len(l.JIDs) > max {
		return invalid("lookup names %d JIDs, more than %d", len(l.JIDs), max)
	}
	for _, j := range l.JIDs {
		if j == "" || len(j) > MaxJIDBytes {
			return invalid("a JID is empty or longer than %d bytes", MaxJIDBytes)
		}
	}
	if l.Checkpoint != "" || len(l.Entries) != 0 {
		return invalid("a lookup request carries only JIDs")
	}
	return nil
}

// Validate checks a consistency request.
func (c *Consistency) Validate() error {
	if c.Old < 1 || c.New < c.Old {
		return invalid("consistency needs 1 ≤ old ≤ new, got old=%d new=%d", c.Old, c.New)
	}
	if len(c.Hashes) != 0 {
		return invalid("a consistency request carries no hashes")
	}
	return nil
}

// Validate checks the shape of a result entry (hash encodings, bounds);
// it proves nothing about the binding.
func (e *Entry) Validate() error {
	if e.JID == "" || len(e.JID) > MaxJIDBytes {
		return invalid("entry JID is empty or too long")
	}
	switch e.Status {
	case StatusNone:
		if e.Key != "" || e.Proof != nil || e.Fingerprint != "" {
			return invalid("entry %s has status none but carries a binding", e.JID)
		}
		return nil
	case StatusFound:
	default:
		return invalid("entry %s has unknown status %q", e.JID, e.Status)
	}
	if e.Index < 0 || e.Time < 0 {
		return invalid("entry %s has a negative index or time", e.JID)
	}
	if e.Key == "" || len(e.Key) > MaxKeyBase64 {
		return invalid("entry %s has no key or one too long", e.JID)
	}
	if _, err := DecodeFingerprint(e.Fingerprint); err != nil {
		return err
	}
	if e.Proof == nil {
		return invalid("entry %s has no proof", e.JID)
	}
	_, err := DecodeHashes(e.Proof.Hashes)
	return err
}

// Validate checks the shape of a history record.
func (r *Record) Validate() error {
	switch r.Kind {
	case KindPublish, KindReset, KindDelete:
	default:
		return invalid("record has unknown kind %q", r.Kind)
	}
	if r.Index < 0 || r.Time < 0 {
		return invalid("record has a negative index or time")
	}
	if _, err := DecodeFingerprint(r.Fingerprint); err != nil {
		return err
	}
	if r.Proof == nil {
		return invalid("record %d has no proof", r.Index)
	}
	_, err := DecodeHashes(r.Proof.Hashes)
	return err
}

// NewProof encodes hashes as a Proof.
func NewProof[H ~[32]byte](hs []H) *Proof {
	p := &Proof{Hashes: make([]string, len(hs))}
	for i, h := range hs {
		p.Hashes[i] = EncodeHash([32]byte(h))
	}
	return p
}
