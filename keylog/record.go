package keylog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"mellium.im/xmpp/jid"
)

// Kind is what a log entry does to a label's binding.
type Kind string

// The kinds of log entry. Only KindPublish starts a binding; the others
// end the one in force and carry its fingerprint.
const (
	KindPublish Kind = "publish"
	KindReset   Kind = "reset"  // an operator ended the binding (clinkd keys reset)
	KindDelete  Kind = "delete" // the account was deleted
)

func (k Kind) valid() bool { return k == KindPublish || k == KindReset || k == KindDelete }

// A Record is one leaf of the log. Its text form (Marshal) is what the
// leaf hash commits to: tlog.RecordHash(r.Marshal()), which is the RFC 6962
// leaf hash SHA-256(0x00 || text).
//
// The text is, byte for byte (docs/protocol.md):
//
//	clinkme-keydir v0\n
//	label <64 lower-case hex digits>\n
//	kind <publish|reset|delete>\n
//	fingerprint <64 lower-case hex digits>\n
//	time <Unix seconds, decimal, no sign, no leading zeros>\n
//
// A later version changes the first line; a parser of this version
// refuses it (ErrUnsupportedVersion). A log may hold v0 records followed
// by v1 records (RecordV1), never the reverse.
type Record struct {
	Label       [32]byte // Label(bare JID)
	Kind        Kind
	Fingerprint [32]byte // SHA-256 of the key's SubjectPublicKeyInfo DER
	Time        int64    // Unix seconds at the server (0 ≤ Time)
}

const recordHeader = "clinkme-keydir v0\n"

// MaxRecordSize bounds a record's text; the longest valid one is 204
// bytes.
const MaxRecordSize = 256

// Marshal returns the record's text.
func (r Record) Marshal() []byte {
	b := make([]byte, 0, 180)
	b = append(b, recordHeader...)
	b = append(b, "label "...)
	b = hex.AppendEncode(b, r.Label[:])
	b = append(b, "\nkind "...)
	b = append(b, r.Kind...)
	b = append(b, "\nfingerprint "...)
	b = hex.AppendEncode(b, r.Fingerprint[:])
	b = append(b, "\ntime "...)
	b = strconv.AppendInt(b, r.Time, 10)
	return append(b, '\n')
}

// ErrBadRecord is wrapped by every ParseRecord error.
var ErrBadRecord = errors.New("keylog: malformed log record")

// ParseRecord parses a record's text. It accepts exactly what Marshal
// produces: a record has one encoding, so its hash has one preimage.
func ParseRecord(b []byte) (Record, error) {
	var r Record
	bad := func(what string) (Record, error) { return Record{}, fmt.Errorf("%w: %s", ErrBadRecord, what) }
	rest, ok := bytes.CutPrefix(b, []byte(recordHeader))
	if !ok {
		if otherVersion(b, "v0") {
			return Record{}, fmt.Errorf("%w: %w: not a clinkme-keydir v0 record: %q", ErrBadRecord, ErrUnsupportedVersion, firstLine(b))
		}
		return bad("not a clinkme-keydir v0 record")
	}
	if len(b) > MaxRecordSize {
		return bad("too long")
	}
	field := func(name string) ([]byte, bool) {
		v, ok := bytes.CutPrefix(rest, []byte(name+" "))
		if !ok {
			return nil, false
		}
		line, after, ok := bytes.Cut(v, []byte("\n"))
		if !ok {
			return nil, false
		}
		rest = after
		return line, true
	}
	hex32 := func(v []byte, dst *[32]byte) bool {
		if len(v) != 64 || !bytes.Equal(bytes.ToLower(v), v) {
			return false
		}
		_, err := hex.Decode(dst[:], v)
		return err == nil
	}
	v, ok := field("label")
	if !ok || !hex32(v, &r.Label) {
		return bad("label line")
	}
	if v, ok = field("kind"); !ok || !Kind(v).valid() {
		return bad("kind line")
	}
	r.Kind = Kind(v)
	if v, ok = field("fingerprint"); !ok || !hex32(v, &r.Fingerprint) {
		return bad("fingerprint line")
	}
	if v, ok = field("time"); !ok || !canonicalUint(v) {
		return bad("time line")
	}
	t, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return bad("time line")
	}
	r.Time = t
	if len(rest) != 0 {
		return bad("trailing data")
	}
	return r, nil
}

// canonicalUint reports whether v is a decimal number without sign or
// leading zeros.
func canonicalUint(v []byte) bool {
	if len(v) == 0 || len(v) > 19 || (v[0] == '0' && len(v) > 1) {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

const labelPrefix = "clinkme-keydir label v0\n"

// Label returns the label of a bare JID: SHA-256 over a domain-separated
// prefix and the JID in its canonical (PRECIS) form, so that case or
// width variants of one address cannot make two labels.
//
// A label hides the JID from a casual reader of the log but not from a
// guesser: anyone can hash a candidate JID and compare. v1 records index
// JIDs by a VRF output instead (VRFSigner.Index); see docs/protocol.md.
func Label(bare jid.JID) [32]byte {
	h := sha256.New()
	h.Write([]byte(labelPrefix))
	h.Write([]byte(bare.String()))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// ErrBadJID is returned for an address that is not a user's bare JID.
var ErrBadJID = errors.New("keylog: not a bare user JID")

// ParseBareJID parses s as a user's bare JID (localpart@domain, no
// resource) and returns it in canonical form.
func ParseBareJID(s string) (jid.JID, error) {
	j, err := jid.Parse(s)
	if err != nil {
		return jid.JID{}, fmt.Errorf("%w: %v", ErrBadJID, err)
	}
	if j.Localpart() == "" || j.Resourcepart() != "" {
		return jid.JID{}, fmt.Errorf("%w: want localpart@domain", ErrBadJID)
	}
	// Parsing the canonical form again must be the identity, or two
	// spellings could still reach two labels.
	if again, err := jid.Parse(j.String()); err != nil || again.String() != j.String() {
		return jid.JID{}, fmt.Errorf("%w: no stable canonical form", ErrBadJID)
	}
	return j, nil
}

// An Entry is one leaf of the log: its index and its record.
type Entry struct {
	Index  int64
	Record Record
}
