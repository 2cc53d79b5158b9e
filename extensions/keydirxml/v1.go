package keydirxml

import (
	"encoding/base64"
	"encoding/xml"
)

// NS1 is the namespace of the v1 payloads (docs/protocol.md, "Key
// directory v1"): the same five requests as NS, whose answers prove that
// each binding is the JID's current one (or that the JID has none) in the
// map the checkpoint commits to, with JIDs indexed by a VRF.
const NS1 = "urn:clinkme:keydir:1"

// Bounds of the v1 payloads' fields, beside the v0 ones.
const (
	MaxVRFProofBase64 = 108                                     // 80 bytes
	MaxMapProofBase64 = (3 + 32 + 256*32 + 32 + 49 + 2) / 3 * 4 // a proof of depth 256 with no empty sibling
	MaxRecordBase64   = 684                                     // 512 bytes, the v1 record bound
)

// Entry statuses of v1 beside found and none.
const StatusEnded = "ended" // a tombstone: the JID's binding ended (reset or delete)

// Record formats an entry's record can have.
const (
	RecordV0 = "v0"
	RecordV1 = "v1"
)

// Head is the log's last leaf at the checkpoint's size, which names the
// map root the entries are proven against: the record (base64 of its
// text) and its RFC 6962 audit path (base64 of the concatenated hashes).
type Head struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:1 head"`
	Index   int64    `xml:"index,attr"`
	Record  string   `xml:"record,attr"`
	Proof   string   `xml:",chardata"`
}

// Entry1 is one JID's answer in a v1 lookup, publish or history result.
type Entry1 struct {
	XMLName     xml.Name `xml:"urn:clinkme:keydir:1 entry"`
	JID         string   `xml:"jid,attr"`
	Status      string   `xml:"status,attr"`                // found, ended or none
	VRF         string   `xml:"vrf,attr"`                   // base64 of the JID's 80-byte VRF proof
	Version     int64    `xml:"version,attr"`               // found, ended: the map value's version
	Index       int64    `xml:"index,attr"`                 // found, ended: the entry that set the value
	Time        int64    `xml:"time,attr"`                  // found, ended: that entry's time
	Fingerprint string   `xml:"fingerprint,attr,omitempty"` // found, ended
	Kind        string   `xml:"kind,attr,omitempty"`        // ended: reset or delete
	Record      string   `xml:"record,attr,omitempty"`      // found, ended: v0 or v1, the entry's format
	Root        string   `xml:"root,attr,omitempty"`        // record v1: base64 of the entry's map line
	Key         string   `xml:"key,omitempty"`              // found: base64 SubjectPublicKeyInfo DER
	Map         string   `xml:"map"`                        // base64 of the map proof
	Proof       string   `xml:"proof,omitempty"`            // found, ended: base64 audit path of the entry
}

type entry1None struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:1 entry"`
	JID     string   `xml:"jid,attr"`
	Status  string   `xml:"status,attr"`
	VRF     string   `xml:"vrf,attr"`
	Map     string   `xml:"map"`
}

// MarshalXML writes a none entry without the attributes of a value.
func (e Entry1) MarshalXML(enc *xml.Encoder, start xml.StartElement) error {
	if e.Status == StatusNone {
		return enc.Encode(entry1None{JID: e.JID, Status: e.Status, VRF: e.VRF, Map: e.Map})
	}
	type plain Entry1
	return enc.Encode(plain(e))
}

// Publish1 is the v1 publish request (IQ set, the key) and its result.
type Publish1 struct {
	XMLName    xml.Name `xml:"urn:clinkme:keydir:1 publish"`
	Key        string   `xml:"key,omitempty"`
	Checkpoint string   `xml:"checkpoint,omitempty"`
	Head       *Head    `xml:"head,omitempty"`
	Entry      *Entry1  `xml:"entry,omitempty"`
}

// Lookup1 is the v1 lookup request (IQ get, JIDs) and its result.
//
// A request may say Known: the size of the checkpoint the device holds,
// having verified at that size the head and an entry of every JID it
// names. If the log is still of that size, the result is Unchanged (that
// size) and carries nothing else: the device uses what it verified
// (docs/protocol.md, "Conditional lookups"). A server that does not know
// the attribute ignores it and answers in full.
type Lookup1 struct {
	XMLName    xml.Name `xml:"urn:clinkme:keydir:1 lookup"`
	Known      int64    `xml:"known,attr,omitempty"`     // request: the size held (0: none)
	Unchanged  int64    `xml:"unchanged,attr,omitempty"` // result: the log is still of this size
	JIDs       []string `xml:"jid"`
	Checkpoint string   `xml:"checkpoint,omitempty"`
	Head       *Head    `xml:"head,omitempty"`
	Entries    []Entry1 `xml:"entry"`
}

// Checkpoint1 is the v1 checkpoint request and result (as Checkpoint).
type Checkpoint1 struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:1 checkpoint"`
	Text    string   `xml:",chardata"`
}

// Consistency1 is the v1 consistency request and result (as Consistency,
// with the hashes as one base64 blob).
type Consistency1 struct {
	XMLName xml.Name `xml:"urn:clinkme:keydir:1 consistency"`
	Old     int64    `xml:"old,attr"`
	New     int64    `xml:"new,attr"`
	Proof   string   `xml:",chardata"`
}

// History1 asks for the versions From (default 1) onwards of the
// sender's own JID; the result carries the JID's entry (as a lookup
// answers it) and up to MaxHistoryItems records, oldest first.
type History1 struct {
	XMLName    xml.Name  `xml:"urn:clinkme:keydir:1 history"`
	JID        string    `xml:"jid,attr,omitempty"`
	From       int64     `xml:"from,attr,omitempty"`
	Checkpoint string    `xml:"checkpoint,omitempty"`
	Head       *Head     `xml:"head,omitempty"`
	Entry      *Entry1   `xml:"entry,omitempty"`
	Records    []Record1 `xml:"record"`
}

// Record1 is one version of a JID in a v1 history.
type Record1 struct {
	XMLName     xml.Name `xml:"urn:clinkme:keydir:1 record"`
	Version     int64    `xml:"version,attr"`
	Index       int64    `xml:"index,attr"`
	Kind        string   `xml:"kind,attr"`
	Time        int64    `xml:"time,attr"`
	Fingerprint string   `xml:"fingerprint,attr"`
	Record      string   `xml:"record,attr"`         // v0 or v1
	Root        string   `xml:"root,attr,omitempty"` // record v1: the map line
	Proof       string   `xml:"proof"`
}

// EncodeBlob encodes bytes (a proof, a record) as a payload carries them.
func EncodeBlob(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// EncodeHashBlob concatenates hashes and encodes them.
func EncodeHashBlob[H ~[32]byte](hs []H) string {
	b := make([]byte, 0, 32*len(hs))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return EncodeBlob(b)
}

// DecodeBlob decodes standard base64 of at most max characters.
func DecodeBlob(s string, max int) ([]byte, error) {
	if len(s) > max {
		return nil, invalid("base64 field of %d characters, more than %d", len(s), max)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, invalid("not standard base64")
	}
	return b, nil
}

// DecodeHashBlob decodes a blob of at most MaxProofHashes hashes.
func DecodeHashBlob(s string) ([][32]byte, error) {
	b, err := DecodeBlob(s, (MaxProofHashes*32+2)/3*4)
	if err != nil {
		return nil, err
	}
	if len(b)%32 != 0 {
		return nil, invalid("hash list of %d bytes is not a multiple of 32", len(b))
	}
	out := make([][32]byte, len(b)/32)
	for i := range out {
		copy(out[i][:], b[32*i:])
	}
	return out, nil
}

// Validate checks a head's shape.
func (h *Head) Validate() error {
	if h.Index < 0 {
		return invalid("head has a negative index")
	}
	if _, err := DecodeBlob(h.Record, MaxRecordBase64); err != nil {
		return err
	}
	_, err := DecodeHashBlob(h.Proof)
	return err
}

// Validate checks the shape of a v1 result entry (encodings, bounds,
// which fields its status has); it proves nothing.
func (e *Entry1) Validate() error {
	if e.JID == "" || len(e.JID) > MaxJIDBytes {
		return invalid("entry JID is empty or too long")
	}
	if vrf, err := DecodeBlob(e.VRF, MaxVRFProofBase64); err != nil || len(vrf) != 80 {
		return invalid("entry %s: VRF proof is not 80 bytes of base64", e.JID)
	}
	if _, err := DecodeBlob(e.Map, MaxMapProofBase64); err != nil {
		return err
	}
	switch e.Status {
	case StatusNone:
		if e.Key != "" || e.Proof != "" || e.Fingerprint != "" || e.Record != "" || e.Root != "" || e.Kind != "" {
			return invalid("entry %s has status none but carries a value", e.JID)
		}
		return nil
	case StatusFound:
		if e.Kind != "" || e.Key == "" || len(e.Key) > MaxKeyBase64 {
			return invalid("found entry %s needs a key and no kind", e.JID)
		}
	case StatusEnded:
		if e.Key != "" || (e.Kind != KindReset && e.Kind != KindDelete) {
			return invalid("ended entry %s needs kind reset or delete and no key", e.JID)
		}
	default:
		return invalid("entry %s has unknown status %q", e.JID, e.Status)
	}
	if e.Index < 0 || e.Time < 0 || e.Version < 1 {
		return invalid("entry %s has a negative index or time, or a version below 1", e.JID)
	}
	if _, err := DecodeFingerprint(e.Fingerprint); err != nil {
		return err
	}
	if err := validRecordRoot(e.Record, e.Root); err != nil {
		return err
	}
	_, err := DecodeHashBlob(e.Proof)
	return err
}

func validRecordRoot(format, root string) error {
	switch format {
	case RecordV0:
		if root != "" {
			return invalid("a v0 record has no map root")
		}
		return nil
	case RecordV1:
		if r, err := DecodeBlob(root, 44); err != nil || len(r) != 32 {
			return invalid("a v1 record needs its map root, 32 bytes of base64")
		}
		return nil
	}
	return invalid("record format %q is not v0 or v1", format)
}

// Validate checks the shape of a history record.
func (r *Record1) Validate() error {
	switch r.Kind {
	case KindPublish, KindReset, KindDelete:
	default:
		return invalid("record has unknown kind %q", r.Kind)
	}
	if r.Index < 0 || r.Time < 0 || r.Version < 1 {
		return invalid("record has a negative index or time, or a version below 1")
	}
	if _, err := DecodeFingerprint(r.Fingerprint); err != nil {
		return err
	}
	if err := validRecordRoot(r.Record, r.Root); err != nil {
		return err
	}
	_, err := DecodeHashBlob(r.Proof)
	return err
}

// Validate checks a v1 publish request.
func (p *Publish1) Validate() error {
	if p.Key == "" || len(p.Key) > MaxKeyBase64 {
		return invalid("publish carries no key, or one too long")
	}
	if p.Checkpoint != "" || p.Entry != nil || p.Head != nil {
		return invalid("a publish request carries only a key")
	}
	return nil
}

// Validate checks a v1 lookup request.
func (l *Lookup1) Validate(max int) error {
	v0 := Lookup{JIDs: l.JIDs}
	if err := v0.Validate(max); err != nil {
		return err
	}
	if l.Checkpoint != "" || l.Head != nil || len(l.Entries) != 0 || l.Unchanged != 0 {
		return invalid("a lookup request carries only JIDs and the size known")
	}
	if l.Known < 0 {
		return invalid("known is a log size, not %d", l.Known)
	}
	return nil
}

// ValidateResult checks the shape of a lookup result as a whole: no
// result names a size known, and an Unchanged one carries nothing else.
// (A full result's JIDs, which no server writes, are ignored as they
// always were.) The parts of a full result have their own Validate.
func (l *Lookup1) ValidateResult() error {
	switch {
	case l.Known != 0:
		return invalid("a lookup result names no size known")
	case l.Unchanged < 0:
		return invalid("unchanged is a log size, not %d", l.Unchanged)
	case l.Unchanged > 0 && (l.Checkpoint != "" || l.Head != nil || len(l.Entries) != 0 || len(l.JIDs) != 0):
		return invalid("an unchanged lookup result carries nothing else")
	}
	return nil
}

// Validate checks a v1 consistency request.
func (c *Consistency1) Validate() error {
	if c.Old < 1 || c.New < c.Old {
		return invalid("consistency needs 1 ≤ old ≤ new, got old=%d new=%d", c.Old, c.New)
	}
	if c.Proof != "" {
		return invalid("a consistency request carries no hashes")
	}
	return nil
}
