package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// TestKeydirVectors: the SDK's own label and record code reproduces the
// spec's vectors (computed with coreutils), independently of the server's
// package.
func TestKeydirVectors(t *testing.T) {
	t.Parallel()
	b := repoFile(t, "keylog/testdata/vectors.json")
	var v struct {
		JIDs []struct {
			JID, Canonical, Label, Expect string
		} `json:"jids"`
		Records []struct {
			Record, Label, Kind, Fingerprint string
			Time                             int64
			Expect                           string
		} `json:"records"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	for _, j := range v.JIDs {
		c, err := canonicalBare(j.JID)
		if j.Expect != "" {
			if err == nil {
				t.Errorf("canonicalBare(%q) = %q, want error", j.JID, c)
			}
			continue
		}
		if l := jidLabel(c); err != nil || c != j.Canonical || hex.EncodeToString(l[:]) != j.Label {
			t.Errorf("canonicalBare(%q) = %q, %v, label %x; want %q, %s", j.JID, c, err, l, j.Canonical, j.Label)
		}
	}
	for _, r := range v.Records {
		if r.Expect != "ok" {
			continue
		}
		var label, fp [32]byte
		hex.Decode(label[:], []byte(r.Label))
		hex.Decode(fp[:], []byte(r.Fingerprint))
		if got := leafRecord(label, r.Kind, fp, r.Time); string(got) != r.Record {
			t.Errorf("leafRecord = %q, want %q", got, r.Record)
		}
	}
}

// TestKeyPins walks a contact's key through the changes a device must
// report: first sight (none), same key (none), reset (removed), another
// key (changed, against the key seen before the reset), same key again
// after an end (none).
func TestKeyPins(t *testing.T) {
	t.Parallel()
	d := &KeyDirectory{pins: &MemoryPins{}}
	k := func(b byte) *VerifiedKey { return &VerifiedKey{Fingerprint: [32]byte{b}} }
	steps := []struct {
		name    string
		key     *VerifiedKey
		changed bool
		newNil  bool
	}{
		{"first sight", k(1), false, false},
		{"same key", k(1), false, false},
		{"no key yet again", nil, true, true},
		{"still none", nil, false, false},
		{"new key after reset", k(2), true, false},
		{"reset again", nil, true, true},
		{"same key rebound", k(2), false, false},
		{"changed without reset", k(3), true, false},
	}
	for _, s := range steps {
		ch, err := d.pinKey("bob@example.org", s.key)
		if err != nil {
			t.Fatal(err)
		}
		if (ch != nil) != s.changed || ch != nil && (ch.New == nil) != s.newNil {
			t.Errorf("%s: pinKey = %+v, want changed=%v (removal=%v)", s.name, ch, s.changed, s.newNil)
		}
	}
}

// TestCheckpointChecks: the SDK's checkpoint parser accepts what the
// server signs and nothing else, and two different trees of one size are
// refused as a fork without asking the server anything.
func TestCheckpointChecks(t *testing.T) {
	t.Parallel()
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	sign := func(body string) []byte {
		msg, err := note.Sign(&note.Note{Text: body}, s)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	h1 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	h2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))
	for _, tt := range []struct {
		body string
		ok   bool
	}{
		{"clink.example.org/keydir\n5\n" + h1 + "\n", true},
		{"clink.example.org/keydir\n5\n" + h1 + "\nextension\n", true},
		{"other.example/keydir\n5\n" + h1 + "\n", false},
		{"clink.example.org/keydir\n05\n" + h1 + "\n", false},
		{"clink.example.org/keydir\n-5\n" + h1 + "\n", false},
		{"clink.example.org/keydir\n5\n" + h1[:43] + "\n", false},
	} {
		_, err := openCheckpoint(sign(tt.body), v)
		if (err == nil) != tt.ok {
			t.Errorf("openCheckpoint(%q) = %v, want ok=%v", tt.body, err, tt.ok)
		}
	}
	d := &KeyDirectory{verifier: v, pins: &MemoryPins{}}
	ctx := context.Background()
	if _, err := d.acceptCheckpoint(ctx, sign("clink.example.org/keydir\n5\n"+h1+"\n")); err != nil {
		t.Fatalf("acceptCheckpoint(first) = %v", err)
	}
	if _, err := d.acceptCheckpoint(ctx, sign("clink.example.org/keydir\n5\n"+h1+"\n")); err != nil {
		t.Fatalf("acceptCheckpoint(same) = %v", err)
	}
	if _, err := d.acceptCheckpoint(ctx, sign("clink.example.org/keydir\n5\n"+h2+"\n")); !errors.Is(err, ErrLogInconsistent) {
		t.Fatalf("acceptCheckpoint(fork) = %v, want ErrLogInconsistent", err)
	}
	// An older checkpoint, validly signed, is refused without asking the
	// server anything (d has no connection), and the pin stays.
	pinned, _ := d.pins.Checkpoint("clink.example.org/keydir")
	for _, size := range []string{"4", "1", "0"} {
		if _, err := d.acceptCheckpoint(ctx, sign("clink.example.org/keydir\n"+size+"\n"+h2+"\n")); !errors.Is(err, ErrStaleCheckpoint) || errors.Is(err, ErrLogInconsistent) {
			t.Errorf("acceptCheckpoint(size %s after 5) = %v, want ErrStaleCheckpoint", size, err)
		}
		if now, _ := d.pins.Checkpoint("clink.example.org/keydir"); !bytes.Equal(now, pinned) {
			t.Fatalf("acceptCheckpoint(size %s after 5) changed the pin to %q", size, now)
		}
	}
	if _, err := d.acceptCheckpoint(ctx, sign("clink.example.org/keydir\n5\n"+h1+"\n")); err != nil {
		t.Fatalf("acceptCheckpoint(the pinned one, after refusals) = %v", err)
	}

	_, otherV, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	ov, _ := note.NewVerifier(otherV)
	if _, err := (&KeyDirectory{verifier: ov, pins: &MemoryPins{}}).acceptCheckpoint(ctx, sign("clink.example.org/keydir\n5\n"+h1+"\n")); !errors.Is(err, ErrBadCheckpoint) {
		t.Fatalf("acceptCheckpoint(another key) = %v, want ErrBadCheckpoint", err)
	}
}

// TestKeydirEntryVectors: the device rebuilds the leaf of a lookup entry
// from the entry's own fields and checks its inclusion proof exactly as
// docs/protocol.md, "Checking an entry", says, against a vector computed
// with Python's hashlib (testdata/keydir_entry.py).
func TestKeydirEntryVectors(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("testdata/keydir_entry.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Comment    []string `json:"comment"`
		Checkpoint struct {
			Origin string `json:"origin"`
			Size   int64  `json:"size"`
			Root   []byte `json:"root"`
		} `json:"checkpoint"`
		Log []struct {
			Index                  int64
			JID, Kind, Fingerprint string
			Time                   int64
			Record                 string
			LeafHash               string `json:"leaf_hash"`
		} `json:"log"`
		Cases []struct {
			Name, Asked, Entry, Record string
			LeafHash                   string `json:"leaf_hash"`
			Expect                     string
		} `json:"cases"`
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	cp := &VerifiedCheckpoint{Origin: v.Checkpoint.Origin, Size: v.Checkpoint.Size, Hash: [32]byte(v.Checkpoint.Root)}

	// Every leaf of the log, publish or not, is the record leafRecord
	// makes from its fields, and hashes as RFC 6962 says.
	for _, l := range v.Log {
		var fp [32]byte
		if _, err := hex.Decode(fp[:], []byte(l.Fingerprint)); err != nil {
			t.Fatal(err)
		}
		rec := leafRecord(jidLabel(l.JID), l.Kind, fp, l.Time)
		if string(rec) != l.Record {
			t.Errorf("leafRecord(leaf %d) = %q, want %q", l.Index, rec, l.Record)
		}
		if h := rfc6962.DefaultHasher.HashLeaf(rec); hex.EncodeToString(h) != l.LeafHash {
			t.Errorf("leaf hash %d = %x, want %s", l.Index, h, l.LeafHash)
		}
	}

	want := map[string]error{"ok": nil, "bad proof": ErrBadProof, "bad answer": ErrBadAnswer}
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			exp, known := want[c.Expect]
			if !known {
				t.Fatalf("unknown expect %q", c.Expect)
			}
			var e keydirxml.Entry
			if err := xml.Unmarshal([]byte(c.Entry), &e); err != nil {
				t.Fatal(err)
			}
			vk, err := verifyEntry(e, c.Asked, cp)
			if exp == nil {
				if err != nil {
					t.Fatalf("verifyEntry = %v, want ok", err)
				}
				rec := leafRecord(jidLabel(c.Asked), keydirxml.KindPublish, vk.Fingerprint, vk.Time.Unix())
				if string(rec) != c.Record {
					t.Errorf("rebuilt record = %q, want %q", rec, c.Record)
				}
				if h := rfc6962.DefaultHasher.HashLeaf(rec); hex.EncodeToString(h) != c.LeafHash {
					t.Errorf("leaf hash = %x, want %s", h, c.LeafHash)
				}
				return
			}
			if !errors.Is(err, exp) {
				t.Fatalf("verifyEntry = %v, want %v", err, exp)
			}
			for name, other := range want {
				if other != nil && other != exp && errors.Is(err, other) {
					t.Errorf("verifyEntry = %v, which is also %q", err, name)
				}
			}
		})
	}
}

// TestProtocolExamples: the key directory examples of docs/protocol.md are
// what this package computes: the leaf record example and its leaf hash,
// the label example, and the worked example of "Checking an entry" (the
// record, its leaf hash and the proof, from testdata/keydir_entry.json).
func TestProtocolExamples(t *testing.T) {
	t.Parallel()
	b := repoFile(t, "docs/protocol.md")
	doc := string(b)

	// "The leaf record": Example, whose leaf hash is `H`:, then the record.
	m := regexp.MustCompile("Example, whose leaf hash is\\s+`([0-9a-f]{64})`:\\s+```\n((?s).*?)```").FindStringSubmatch(doc)
	if m == nil {
		t.Fatal("no leaf record example")
	}
	if h := rfc6962.DefaultHasher.HashLeaf([]byte(m[2])); hex.EncodeToString(h) != m[1] {
		t.Errorf("leaf hash of the leaf record example = %x, document says %s", h, m[1])
	}
	var lh, fh string
	var tm int64
	if _, err := fmt.Sscanf(m[2], "clinkme-keydir v0\nlabel %s\nkind publish\nfingerprint %s\ntime %d\n", &lh, &fh, &tm); err != nil {
		t.Fatalf("leaf record example: %v", err)
	}
	var label, fp [32]byte
	if _, err := hex.Decode(label[:], []byte(lh)); err != nil {
		t.Fatal(err)
	}
	if _, err := hex.Decode(fp[:], []byte(fh)); err != nil {
		t.Fatal(err)
	}
	if got := leafRecord(label, keydirxml.KindPublish, fp, tm); string(got) != m[2] {
		t.Errorf("leafRecord(example's fields) = %q, document says %q", got, m[2])
	}

	// "Labels": the label of alice@example.org.
	if l := jidLabel("alice@example.org"); !strings.Contains(doc, "label of `alice@example.org`:\n`"+hex.EncodeToString(l[:])+"`") {
		t.Errorf("docs/protocol.md, Labels, does not give alice@example.org the label %x", l)
	}

	// "Checking an entry": the worked example.
	vb, err := os.ReadFile("testdata/keydir_entry.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Checkpoint struct{ Root string }
		Cases      []struct {
			Entry, Record string
			LeafHash      string `json:"leaf_hash"`
		}
	}
	if err := json.Unmarshal(vb, &v); err != nil {
		t.Fatal(err)
	}
	c := v.Cases[0]
	var e keydirxml.Entry
	if err := xml.Unmarshal([]byte(c.Entry), &e); err != nil {
		t.Fatal(err)
	}
	want := []string{"```\n" + c.Record + "```", "`" + c.LeafHash + "`", "`" + v.Checkpoint.Root + "`", "fingerprint='" + e.Fingerprint + "'"}
	for _, h := range e.Proof.Hashes {
		want = append(want, "<hash>"+h+"</hash>")
	}
	for _, w := range want {
		if !strings.Contains(doc, w) {
			t.Errorf("docs/protocol.md, Checking an entry, lacks %q", w)
		}
	}
}
