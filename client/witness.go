package client

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// This file is the device's witness policy (docs/protocol.md, "Witness
// cosignatures"): a device given witnesses accepts a checkpoint only when
// enough of them cosigned it (C2SP tlog-cosignature, cosignature/v1), so
// that a server showing this device a log nobody else sees (a split
// view) needs the witnesses' help, and a witness cosigns only a tree
// that extends every tree of that log it cosigned before. As for the
// rest of the device, the check is this file's own code, from the spec:
// the server and the auditor use keylog's.

// ErrNotCosigned: the checkpoint of an answer does not carry valid
// cosignatures of as many distinct trusted witnesses as the device's
// policy requires. The answer is refused and the pin kept. An honest
// server shows this while its witnesses are down or do not know its log;
// a server that forked its log for this device shows it always (the
// witnesses refuse to cosign a tree that does not extend the one they
// saw). The app must tell the user, and not fall back.
var ErrNotCosigned = errors.New("client: keydir checkpoint is not cosigned by enough of the device's witnesses")

// A WitnessPolicy names the witnesses a device trusts (their
// cosignature/v1 verifier keys, "name+hash+base64(0x04 ‖ key)", shipped
// with the app; lab.json's witnesses) and how many of them must
// have cosigned every checkpoint the device accepts. The zero value
// requires none.
type WitnessPolicy struct {
	Keys      []string
	Threshold int // 1 ≤ Threshold ≤ len(Keys) when Keys are given
}

type witnessKey struct {
	name string
	hash uint32
	pub  ed25519.PublicKey
}

type witnessPolicy struct {
	keys      []witnessKey
	threshold int
}

// parseWitnessPolicy checks p; nil when it requires nothing.
func parseWitnessPolicy(p WitnessPolicy) (*witnessPolicy, error) {
	if len(p.Keys) == 0 && p.Threshold == 0 {
		return nil, nil
	}
	if p.Threshold < 1 || p.Threshold > len(p.Keys) {
		return nil, fmt.Errorf("client: keydir witness policy: threshold %d with %d witnesses", p.Threshold, len(p.Keys))
	}
	out := &witnessPolicy{threshold: p.Threshold}
	seen := map[string]bool{}
	for _, k := range p.Keys {
		wk, err := parseWitnessKey(strings.TrimSpace(k))
		if err != nil {
			return nil, err
		}
		if seen[wk.name] || seen[string(wk.pub)] {
			return nil, fmt.Errorf("client: keydir witness policy: %q (or its key) is listed twice", wk.name)
		}
		seen[wk.name], seen[string(wk.pub)] = true, true
		out.keys = append(out.keys, wk)
	}
	return out, nil
}

// parseWitnessKey reads a cosignature/v1 verifier key: the name, the key
// hash (8 hex digits: the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x04 ‖
// key)) and base64 of 0x04 and the 32-byte Ed25519 key.
func parseWitnessKey(s string) (witnessKey, error) {
	bad := func(why string) (witnessKey, error) {
		return witnessKey{}, fmt.Errorf("client: keydir witness key %q: %s", s, why)
	}
	f := strings.SplitN(s, "+", 3) // base64 may hold a plus sign
	if len(f) != 3 || f[0] == "" || strings.ContainsFunc(f[0], func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return bad("want name+hash+key")
	}
	h, err := strconv.ParseUint(f[1], 16, 32)
	if err != nil || len(f[1]) != 8 || strings.ToLower(f[1]) != f[1] {
		return bad("the key hash is not 8 lower-case hex digits")
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(f[2])
	if err != nil || len(raw) != 33 || raw[0] != 0x04 {
		return bad("not an Ed25519 cosignature/v1 key (type 0x04)")
	}
	sum := sha256.Sum256(append([]byte(f[0]+"\n"), raw...))
	if binary.BigEndian.Uint32(sum[:]) != uint32(h) {
		return bad("the key hash does not match")
	}
	return witnessKey{name: f[0], hash: uint32(h), pub: ed25519.PublicKey(raw[1:])}, nil
}

// check counts the trusted witnesses that validly cosigned signed (a
// checkpoint note the log's key v verifies) and refuses it with
// ErrNotCosigned below the threshold. Each witness counts once; a line
// with a trusted witness's name and key hash that does not verify counts
// for nothing.
func (p *witnessPolicy) check(signed []byte, v note.Verifier) error {
	if p == nil {
		return nil
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadCheckpoint, err)
	}
	valid := 0
	for _, k := range p.keys {
		for _, s := range n.UnverifiedSigs {
			if s.Name == k.name && s.Hash == k.hash && k.verify(n.Text, s.Base64) {
				valid++
				break
			}
		}
	}
	if valid < p.threshold {
		return fmt.Errorf("%w: %d valid cosignatures of the device's %d witnesses, %d required", ErrNotCosigned, valid, len(p.keys), p.threshold)
	}
	return nil
}

// verify checks a cosignature/v1 signature: base64 of the key hash, a
// big-endian uint64 timestamp t and the Ed25519 signature of
// "cosignature/v1\ntime <t>\n" ‖ the checkpoint body.
func (k witnessKey) verify(body, b64 string) bool {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 4+8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(raw[4:])
	if t > 1<<63-1 {
		return false
	}
	msg := "cosignature/v1\ntime " + strconv.FormatUint(t, 10) + "\n" + body
	return ed25519.Verify(k.pub, []byte(msg), raw[12:])
}
