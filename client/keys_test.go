package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// TestKeydirVectors: the SDK's own label and record code reproduces the
// spec's vectors (computed with coreutils), independently of the server's
// package.
func TestKeydirVectors(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../keydir/testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
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
