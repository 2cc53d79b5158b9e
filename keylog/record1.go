package keylog

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
)

// The kinds of v1 record beside publish, reset and delete.
const (
	// KindMigrate moves a v0 label to its VRF index (one per v0 label,
	// right after genesis).
	KindMigrate Kind = "migrate"
	// KindGenesis starts the v1 records of a log: first leaf of a new
	// log, or the first after the v0 records of a migrated one.
	KindGenesis Kind = "genesis"
	// KindTick changes nothing; it puts a recent time in the log's head
	// when nothing else was appended for a while (freshness).
	KindTick Kind = "tick"
)

// ErrUnsupportedVersion is wrapped (with ErrBadRecord) by ParseRecord and
// ParseRecordV1 for a record of another clinkme-keydir version: a reader
// must say "unsupported version", never "corrupt".
var ErrUnsupportedVersion = errors.New("keylog: unsupported record version")

// MaxRecordSizeV1 bounds a v1 record's text; the longest (a genesis with
// a long origin in its VRF key) is far below it.
const MaxRecordSizeV1 = 512

const recordHeaderV1 = "clinkme-keydir v1\n"

// A RecordV1 is a leaf of a v1 log (docs/protocol.md, "v1 records").
// Which fields a kind has:
//
//	publish, reset, delete   Index, Fingerprint, Version, Time, Map
//	migrate                  Index, Label, Version, Time, Map
//	genesis                  VRFKey, Migrate, Time, Map
//	tick                     Time, Map
//
// Its text (Marshal) is what the leaf hash commits to, as for v0:
// tlog.RecordHash(text).
type RecordV1 struct {
	Kind        Kind
	Index       [32]byte // the JID's map index (VRF output)
	Fingerprint [32]byte // the key bound, or whose binding ended
	Label       [32]byte // migrate: the v0 label moved to Index
	Version     int64    // the index's version after this entry (≥ 1; ≥ 2 for reset and delete)
	VRFKey      string   // genesis: the log's VRF public key (ParseVRFKey)
	Migrate     int64    // genesis: the number of migrate records that follow it
	Time        int64    // Unix seconds at the server, never decreasing over v1 records
	Map         [32]byte // the map root after this entry
}

// Marshal returns the record's text: the header, then one line per field
// in the order of the table above, each "name value\n" with hashes as 64
// lower-case hex digits and numbers in decimal without sign or leading
// zeros.
func (r RecordV1) Marshal() []byte {
	b := make([]byte, 0, 300)
	b = append(b, recordHeaderV1...)
	b = append(b, "kind "...)
	b = append(b, r.Kind...)
	b = append(b, '\n')
	hexLine := func(name string, h [32]byte) {
		b = append(b, name...)
		b = append(b, ' ')
		b = hex.AppendEncode(b, h[:])
		b = append(b, '\n')
	}
	numLine := func(name string, n int64) {
		b = append(b, name...)
		b = append(b, ' ')
		b = strconv.AppendInt(b, n, 10)
		b = append(b, '\n')
	}
	switch r.Kind {
	case KindPublish, KindReset, KindDelete:
		hexLine("index", r.Index)
		hexLine("fingerprint", r.Fingerprint)
		numLine("version", r.Version)
	case KindMigrate:
		hexLine("index", r.Index)
		hexLine("label", r.Label)
		numLine("version", r.Version)
	case KindGenesis:
		b = append(b, "vrf "...)
		b = append(b, r.VRFKey...)
		b = append(b, '\n')
		numLine("migrate", r.Migrate)
	}
	numLine("time", r.Time)
	hexLine("map", r.Map)
	return b
}

// ParseRecordV1 parses a v1 record's text, accepting exactly what Marshal
// produces for a valid record: every field in range, the VRF key of a
// genesis well formed. A record of another version gets an error wrapping
// ErrUnsupportedVersion; anything else malformed, ErrBadRecord.
func ParseRecordV1(b []byte) (RecordV1, error) {
	bad := func(what string) (RecordV1, error) { return RecordV1{}, fmt.Errorf("%w: %s", ErrBadRecord, what) }
	if len(b) > MaxRecordSizeV1 {
		return bad("too long")
	}
	rest, ok := bytes.CutPrefix(b, []byte(recordHeaderV1))
	if !ok {
		if otherVersion(b, "v1") {
			return RecordV1{}, fmt.Errorf("%w: %w: %q", ErrBadRecord, ErrUnsupportedVersion, firstLine(b))
		}
		return bad("not a clinkme-keydir record")
	}
	var r RecordV1
	next := func(name string) ([]byte, bool) {
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
	hexField := func(name string, dst *[32]byte) bool {
		v, ok := next(name)
		if !ok || len(v) != 64 || !bytes.Equal(bytes.ToLower(v), v) {
			return false
		}
		_, err := hex.Decode(dst[:], v)
		return err == nil
	}
	numField := func(name string, dst *int64) bool {
		v, ok := next(name)
		if !ok || !canonicalUint(v) {
			return false
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		*dst = n
		return err == nil
	}
	k, ok := next("kind")
	if !ok {
		return bad("kind line")
	}
	r.Kind = Kind(k)
	switch r.Kind {
	case KindPublish, KindReset, KindDelete:
		if !hexField("index", &r.Index) || !hexField("fingerprint", &r.Fingerprint) || !numField("version", &r.Version) {
			return bad(string(r.Kind) + " lines")
		}
		if r.Version < 1 || (r.Kind != KindPublish && r.Version < 2) {
			return bad("version out of range")
		}
	case KindMigrate:
		if !hexField("index", &r.Index) || !hexField("label", &r.Label) || !numField("version", &r.Version) || r.Version < 1 {
			return bad("migrate lines")
		}
	case KindGenesis:
		v, ok := next("vrf")
		if !ok {
			return bad("vrf line")
		}
		if _, err := ParseVRFKey(string(v)); err != nil {
			return bad("vrf line: " + err.Error())
		}
		r.VRFKey = string(v)
		if !numField("migrate", &r.Migrate) {
			return bad("migrate line")
		}
	case KindTick:
	default:
		return bad("kind line")
	}
	if !numField("time", &r.Time) || !hexField("map", &r.Map) {
		return bad("time or map line")
	}
	if len(rest) != 0 {
		return bad("trailing data")
	}
	if !bytes.Equal(r.Marshal(), b) { // belt and braces: one encoding per record
		return bad("not in canonical form")
	}
	return r, nil
}

// RecordVersion returns the version of a record's text from its first
// line, 0 or 1; another clinkme-keydir version is ErrUnsupportedVersion,
// anything else ErrBadRecord.
func RecordVersion(b []byte) (int, error) {
	switch {
	case bytes.HasPrefix(b, []byte(recordHeader)):
		return 0, nil
	case bytes.HasPrefix(b, []byte(recordHeaderV1)):
		return 1, nil
	case otherVersion(b, ""):
		return 0, fmt.Errorf("%w: %w: %q", ErrBadRecord, ErrUnsupportedVersion, firstLine(b))
	}
	return 0, fmt.Errorf("%w: not a clinkme-keydir record", ErrBadRecord)
}

// otherVersion reports whether b starts "clinkme-keydir vN\n" for a
// decimal N other than the version named by except.
func otherVersion(b []byte, except string) bool {
	v, ok := bytes.CutPrefix(firstLine(b), []byte("clinkme-keydir "))
	if !ok || len(v) < 2 || v[0] != 'v' || !canonicalUint(v[1:]) || string(v) == except {
		return false
	}
	return len(b) > len(firstLine(b)) // the line ends in a newline
}

func firstLine(b []byte) []byte {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	if len(line) > 40 {
		line = line[:40]
	}
	return line
}
