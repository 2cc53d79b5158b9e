package keylog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// This file holds the witness formats every verifier of the key log
// needs: C2SP tlog-cosignature (cosignature/v1, Ed25519) verifier keys
// and signatures, a witness policy (which witnesses, how many must
// cosign), and the two bodies of C2SP tlog-witness's add-checkpoint call
// that a log sends and reads. docs/protocol.md, "Witness cosignatures".

// CosignatureAlg is the signature type byte of an Ed25519 cosignature/v1
// key (C2SP tlog-cosignature): the first byte of a verifier key's
// base64 part, and of the key hash's input.
const CosignatureAlg = 0x04

// cosignatureSize is the signature of a cosignature/v1 line after the
// key hash: a big-endian uint64 timestamp and an Ed25519 signature.
const cosignatureSize = 8 + ed25519.SignatureSize

// MaxWitnesses bounds a witness policy: a checkpoint carries one line per
// witness, and note.Open refuses more than 100 signature lines.
const MaxWitnesses = 32

// A CosignatureVerifier checks the cosignature/v1 signatures of one
// witness. It is a note.Verifier: Verify takes the checkpoint body (the
// note's text) and the signature after the key hash (timestamp and
// Ed25519 signature).
type CosignatureVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

// ErrBadWitnessKey is wrapped by every ParseCosignatureVerifier error.
var ErrBadWitnessKey = errors.New("keylog: malformed witness verifier key")

// ParseCosignatureVerifier parses a witness's verifier key,
// "<name>+<8 hex digits of key hash>+<base64(0x04 ‖ 32-byte Ed25519
// public key)>" (C2SP signed-note vkey, tlog-cosignature type 0x04). The
// key hash must be the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x04 ‖
// key).
func ParseCosignatureVerifier(vkey string) (*CosignatureVerifier, error) {
	bad := func(what string) (*CosignatureVerifier, error) {
		return nil, fmt.Errorf("%w: %s", ErrBadWitnessKey, what)
	}
	vkey = strings.TrimSpace(vkey)
	name, rest, ok1 := strings.Cut(vkey, "+")
	hexHash, b64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 {
		return bad("want name+hash+key")
	}
	if !validKeyName(name) {
		return bad("the name is empty or holds a space or a plus sign")
	}
	if len(hexHash) != 8 || strings.ToLower(hexHash) != hexHash {
		return bad("the key hash is not 8 lower-case hex digits")
	}
	h, err := strconv.ParseUint(hexHash, 16, 32)
	if err != nil {
		return bad("the key hash is not 8 lower-case hex digits")
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(raw) != 1+ed25519.PublicKeySize {
		return bad("the key is not base64 of a type byte and 32 bytes")
	}
	if raw[0] != CosignatureAlg {
		return bad(fmt.Sprintf("key type 0x%02x, want 0x04 (an Ed25519 cosignature/v1 key; a log's own key is type 0x01)", raw[0]))
	}
	v := &CosignatureVerifier{name: name, key: ed25519.PublicKey(raw[1:])}
	v.hash = cosignatureKeyHash(name, v.key)
	if uint32(h) != v.hash {
		return bad("the key hash does not match the name and key")
	}
	return v, nil
}

// NewCosignatureVerifier returns the verifier of a witness named name
// with Ed25519 public key pub (what a lab that made the key knows).
func NewCosignatureVerifier(name string, pub ed25519.PublicKey) (*CosignatureVerifier, error) {
	if !validKeyName(name) || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: name %q, %d-byte key", ErrBadWitnessKey, name, len(pub))
	}
	return &CosignatureVerifier{name: name, hash: cosignatureKeyHash(name, pub), key: pub}, nil
}

func cosignatureKeyHash(name string, key ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name + "\n"))
	h.Write([]byte{CosignatureAlg})
	h.Write(key)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// Name implements note.Verifier: the witness's name.
func (v *CosignatureVerifier) Name() string { return v.name }

// KeyHash implements note.Verifier.
func (v *CosignatureVerifier) KeyHash() uint32 { return v.hash }

// Verify implements note.Verifier: sig is the timestamp and the Ed25519
// signature of "cosignature/v1\ntime <timestamp>\n" ‖ msg, msg being the
// checkpoint body.
func (v *CosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != cosignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	if t > 1<<63-1 {
		return false
	}
	return ed25519.Verify(v.key, cosignedMessage(t, msg), sig[8:])
}

// String returns the verifier key, as ParseCosignatureVerifier reads it.
func (v *CosignatureVerifier) String() string {
	return fmt.Sprintf("%s+%08x+%s", v.name, v.hash, base64.StdEncoding.EncodeToString(append([]byte{CosignatureAlg}, v.key...)))
}

func cosignedMessage(t uint64, body []byte) []byte {
	return append(fmt.Appendf(nil, "cosignature/v1\ntime %d\n", t), body...)
}

// A WitnessPolicy says which witnesses a verifier trusts and how many of
// them must have cosigned a checkpoint before it is accepted. The zero
// value requires nothing (no witnesses, threshold 0).
type WitnessPolicy struct {
	Witnesses []*CosignatureVerifier // distinct names and keys
	Threshold int                    // 0 ≤ Threshold ≤ len(Witnesses)
}

// NewWitnessPolicy parses the witnesses' verifier keys and checks the
// threshold: witnesses with distinct names and keys, at most
// MaxWitnesses, and 0 ≤ threshold ≤ their number. A threshold of 0 with
// witnesses configured checks cosignatures that are there but requires
// none.
func NewWitnessPolicy(vkeys []string, threshold int) (WitnessPolicy, error) {
	if len(vkeys) > MaxWitnesses {
		return WitnessPolicy{}, fmt.Errorf("keylog: witness policy: %d witnesses, at most %d", len(vkeys), MaxWitnesses)
	}
	var p WitnessPolicy
	names, keys := map[string]bool{}, map[string]bool{}
	for _, k := range vkeys {
		v, err := ParseCosignatureVerifier(k)
		if err != nil {
			return WitnessPolicy{}, fmt.Errorf("keylog: witness policy: %w", err)
		}
		if names[v.name] || keys[string(v.key)] {
			return WitnessPolicy{}, fmt.Errorf("keylog: witness policy: witness %q (or its key) is listed twice", v.name)
		}
		names[v.name], keys[string(v.key)] = true, true
		p.Witnesses = append(p.Witnesses, v)
	}
	if threshold < 0 || threshold > len(p.Witnesses) {
		return WitnessPolicy{}, fmt.Errorf("keylog: witness policy: threshold %d with %d witnesses", threshold, len(p.Witnesses))
	}
	p.Threshold = threshold
	return p, nil
}

// ErrNotCosigned: a checkpoint does not carry valid cosignatures of as
// many distinct trusted witnesses as the policy's threshold. Wrapped in
// a *NotCosignedError.
var ErrNotCosigned = errors.New("keylog: checkpoint is not cosigned by enough witnesses")

// NotCosignedError says how many trusted witnesses validly cosigned a
// checkpoint and how many the policy requires.
type NotCosignedError struct {
	Valid, Threshold int
}

func (e *NotCosignedError) Error() string {
	return fmt.Sprintf("%v: %d valid cosignatures of trusted witnesses, %d required", ErrNotCosigned, e.Valid, e.Threshold)
}

func (e *NotCosignedError) Unwrap() error { return ErrNotCosigned }

// Cosigners returns the witnesses of p that validly cosigned the
// checkpoint body text among sigs (the note's signatures other than the
// log's): each witness once, however many lines name it. A line of a
// trusted witness's name and key hash whose signature does not verify is
// not counted.
func (p WitnessPolicy) Cosigners(text string, sigs []note.Signature) []*CosignatureVerifier {
	var out []*CosignatureVerifier
	for _, w := range p.Witnesses {
		for _, s := range sigs {
			if w.VerifySignature(text, s) {
				out = append(out, w)
				break
			}
		}
	}
	return out
}

// VerifySignature reports whether s is v's valid cosignature/v1 of the
// checkpoint body text: v's name and key hash, a timestamp and an
// Ed25519 signature that verifies.
func (v *CosignatureVerifier) VerifySignature(text string, s note.Signature) bool {
	if s.Name != v.name || s.Hash != v.hash {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(s.Base64)
	return err == nil && len(raw) == 4+cosignatureSize && v.Verify([]byte(text), raw[4:])
}

// CosignatureTime returns the timestamp of a cosignature/v1 line (not
// verified: VerifySignature checks it is signed).
func CosignatureTime(s note.Signature) (int64, bool) {
	raw, err := base64.StdEncoding.DecodeString(s.Base64)
	if err != nil || len(raw) != 4+cosignatureSize {
		return 0, false
	}
	t := binary.BigEndian.Uint64(raw[4:])
	return int64(t), t <= 1<<63-1
}

// Check opens a signed checkpoint with the log's verifier (as
// OpenCheckpoint) and counts the trusted witnesses that validly cosigned
// it; fewer than the threshold is a *NotCosignedError (ErrNotCosigned).
// It returns the checkpoint and the number of valid cosignatures.
func (p WitnessPolicy) Check(msg []byte, log note.Verifier) (Checkpoint, int, error) {
	cp, err := OpenCheckpoint(msg, log)
	if err != nil {
		return Checkpoint{}, 0, err
	}
	n, err := note.Open(msg, note.VerifierList(log))
	if err != nil { // OpenCheckpoint just opened it
		return Checkpoint{}, 0, fmt.Errorf("%w: %v", ErrCheckpointSignature, err)
	}
	valid := len(p.Cosigners(n.Text, n.UnverifiedSigs))
	if valid < p.Threshold {
		return cp, valid, &NotCosignedError{Valid: valid, Threshold: p.Threshold}
	}
	return cp, valid, nil
}

// MaxProofLines is the most consistency proof lines an add-checkpoint
// request may carry (C2SP tlog-witness).
const MaxProofLines = 63

// AddCheckpointRequest is the body of a C2SP tlog-witness add-checkpoint
// request: "old <size>\n", one base64 line per consistency proof hash
// (from oldSize to the checkpoint's size), an empty line, then the
// signed checkpoint.
func AddCheckpointRequest(oldSize int64, proof tlog.TreeProof, signed []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", oldSize)
	for _, h := range proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h[:]) + "\n")
	}
	b.WriteString("\n")
	b.Write(signed)
	return b.Bytes()
}

// ErrBadWitnessResponse is wrapped by every error parsing what a witness
// answered.
var ErrBadWitnessResponse = errors.New("keylog: malformed witness response")

// MaxWitnessResponse bounds an add-checkpoint response body: a few
// signature lines.
const MaxWitnessResponse = 16 << 10

// ParseCosignatures parses the body of an add-checkpoint 200 response:
// one or more note signature lines, each "— <name> <base64>\n" (U+2014),
// nothing else. The signatures are not verified here (Cosigners does).
func ParseCosignatures(body []byte) ([]note.Signature, error) {
	bad := func(format string, args ...any) ([]note.Signature, error) {
		return nil, fmt.Errorf("%w: %s", ErrBadWitnessResponse, fmt.Sprintf(format, args...))
	}
	if len(body) == 0 || len(body) > MaxWitnessResponse {
		return bad("%d bytes", len(body))
	}
	if !utf8.Valid(body) || body[len(body)-1] != '\n' {
		return bad("not UTF-8 lines ending in a newline")
	}
	var sigs []note.Signature
	for _, line := range strings.SplitAfter(string(body[:len(body)-1]), "\n") {
		line = strings.TrimSuffix(line, "\n")
		rest, ok := strings.CutPrefix(line, "— ")
		if !ok {
			return bad("a line does not start with \"— \"")
		}
		name, b64, ok := strings.Cut(rest, " ")
		if !ok || !validKeyName(name) {
			return bad("a signature line without a valid key name")
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(b64)
		if err != nil || len(raw) < 5 {
			return bad("the signature of %q is not base64 of a key hash and a signature", name)
		}
		sigs = append(sigs, note.Signature{Name: name, Hash: binary.BigEndian.Uint32(raw), Base64: b64})
		if len(sigs) > MaxWitnesses {
			return bad("more than %d signature lines", MaxWitnesses)
		}
	}
	return sigs, nil
}

// ParseTreeSize parses the body of an add-checkpoint 409 response (type
// text/x.tlog.size): the witness's size of the log, decimal, then a
// newline.
func ParseTreeSize(body []byte) (int64, error) {
	s, ok := bytes.CutSuffix(body, []byte("\n"))
	if !ok || !canonicalUint(s) {
		return 0, fmt.Errorf("%w: want a decimal size and a newline, got %q", ErrBadWitnessResponse, truncate(body, 40))
	}
	n, err := strconv.ParseInt(string(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: size out of range", ErrBadWitnessResponse)
	}
	return n, nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// AppendCosignatures returns the signed checkpoint msg with the lines of
// sigs appended after its own signatures: the cosigned checkpoint that
// is served.
func AppendCosignatures(msg []byte, sigs []note.Signature) []byte {
	out := bytes.Clone(msg)
	for _, s := range sigs {
		out = append(out, "— "+s.Name+" "+s.Base64+"\n"...)
	}
	return out
}
