package keylog

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// A Checkpoint is the body of a C2SP tlog-checkpoint: the log's origin,
// its size and the RFC 6962 root hash of that many leaves.
type Checkpoint struct {
	Origin string
	Size   int64
	Hash   tlog.Hash
}

// MaxCheckpointSize bounds a signed checkpoint (body and signatures).
// C2SP signed-note: verifiers MUST accept at least 16 signatures, and a
// post-quantum cosignature line is nearly 5 kB; note.Open refuses more
// than 100 signature lines. 128 KiB holds 16 of the largest and more.
const MaxCheckpointSize = 128 << 10

// Marshal returns the checkpoint body:
//
//	<origin>\n<size>\n<base64 root hash>\n
func (c Checkpoint) Marshal() []byte {
	return fmt.Appendf(nil, "%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Hash[:]))
}

// ErrBadCheckpoint is wrapped by every checkpoint parse error.
var ErrBadCheckpoint = errors.New("keylog: malformed checkpoint")

// ParseCheckpoint parses a checkpoint body as C2SP tlog-checkpoint
// defines it. Extension lines after the root hash are allowed, as the
// spec requires, and ignored; the size must be canonical decimal and the
// hash exactly 32 bytes of standard base64.
func ParseCheckpoint(text []byte) (Checkpoint, error) {
	bad := func(what string) (Checkpoint, error) {
		return Checkpoint{}, fmt.Errorf("%w: %s", ErrBadCheckpoint, what)
	}
	if len(text) > MaxCheckpointSize {
		return bad("too long")
	}
	if !utf8.Valid(text) {
		return bad("not UTF-8")
	}
	lines := bytes.SplitAfter(text, []byte("\n"))
	if len(lines) < 4 || len(lines[len(lines)-1]) != 0 {
		return bad("want origin, size and hash lines, each ending in a newline")
	}
	line := func(i int) []byte { return bytes.TrimSuffix(lines[i], []byte("\n")) }
	origin := line(0)
	if len(origin) == 0 || bytes.ContainsAny(origin, "\x00\r") {
		return bad("empty or invalid origin line")
	}
	sz := line(1)
	if !canonicalUint(sz) {
		return bad("size is not a canonical decimal")
	}
	n, err := strconv.ParseInt(string(sz), 10, 64)
	if err != nil {
		return bad("size out of range")
	}
	hb, err := base64.StdEncoding.Strict().DecodeString(string(line(2)))
	if err != nil || len(hb) != tlog.HashSize {
		return bad("root hash is not base64 of 32 bytes")
	}
	for _, ext := range lines[3 : len(lines)-1] {
		if len(ext) == 1 { // an empty line: the body never holds one
			return bad("empty extension line")
		}
	}
	c := Checkpoint{Origin: string(origin), Size: n}
	copy(c.Hash[:], hb)
	return c, nil
}

// SignCheckpoint signs a checkpoint as a C2SP signed note.
func SignCheckpoint(c Checkpoint, s note.Signer) ([]byte, error) {
	msg, err := note.Sign(&note.Note{Text: string(c.Marshal())}, s)
	if err != nil {
		return nil, fmt.Errorf("keylog: sign checkpoint: %w", err)
	}
	return msg, nil
}

// ErrCheckpointSignature is returned by OpenCheckpoint when the note is not
// validly signed by the expected key.
var ErrCheckpointSignature = errors.New("keylog: checkpoint not signed by the log's key")

// OpenCheckpoint verifies a signed checkpoint against the log's verifier
// key and parses it. It fails when the note is malformed or oversized,
// when no valid signature by v is on it (ErrCheckpointSignature), when the
// body is malformed (ErrBadCheckpoint) or when the origin is not v's name.
func OpenCheckpoint(msg []byte, v note.Verifier) (Checkpoint, error) {
	if len(msg) > MaxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("%w: too long", ErrBadCheckpoint)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpointSignature, err)
	}
	c, err := ParseCheckpoint([]byte(n.Text))
	if err != nil {
		return Checkpoint{}, err
	}
	if c.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("%w: origin %q, want %q", ErrBadCheckpoint, c.Origin, v.Name())
	}
	return c, nil
}
