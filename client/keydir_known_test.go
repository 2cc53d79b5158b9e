package client

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// TestConditionalLookupState: what a device says it holds (knownSize)
// and which "unchanged" answers it takes (VerifyLookup), from one valid
// answer at size 3 (v1Answer). The end-to-end attacks, with the server's
// real answers on Prosody and ejabberd, are keydir's
// TestConditionalLookups.
func TestConditionalLookupState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, ans := v1Answer(t)
	alice := []string{"alice@example.org"}
	unchanged := func(size int64) *keydirxml.Lookup1 { return &keydirxml.Lookup1{Unchanged: size} }
	if n, err := d.knownSize(alice); err != nil || n != 0 {
		t.Fatalf("knownSize before any answer = %d, %v; want 0", n, err)
	}
	if _, err := d.VerifyLookup(ctx, unchanged(3), alice...); !errors.Is(err, ErrBadAnswer) {
		t.Fatalf("unchanged before any answer = %v, want ErrBadAnswer", err)
	}
	full, err := d.VerifyLookup(ctx, ans, alice...)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		want  []string
		known int64
	}{
		{"the JID verified", alice, 3},
		{"with one never verified", []string{"alice@example.org", "bob@example.org"}, 0},
		{"none", nil, 0},
	}
	for _, tt := range tests {
		if n, err := d.knownSize(tt.want); err != nil || n != tt.known {
			t.Errorf("knownSize(%s) = %d, %v; want %d", tt.name, n, err, tt.known)
		}
	}
	got, err := d.VerifyLookup(ctx, unchanged(3), alice...)
	if err != nil || len(got) != 1 || got[0].Key == nil || got[0].Key.Fingerprint != full[0].Key.Fingerprint || got[0].Version != full[0].Version {
		t.Fatalf("unchanged at 3 = %+v, %v; want the full answer's %+v", got, err, full)
	}
	if d.UnchangedLookups() != 1 {
		t.Errorf("UnchangedLookups = %d, want 1", d.UnchangedLookups())
	}
	refusals := []struct {
		name string
		res  *keydirxml.Lookup1
		want []string
		err  error
	}{
		{"another size", unchanged(4), alice, ErrBadAnswer},
		{"a JID never verified", unchanged(3), []string{"bob@example.org"}, ErrBadAnswer},
		{"no JID", unchanged(3), nil, ErrBadAnswer},
		{"unchanged with entries", &keydirxml.Lookup1{Unchanged: 3, Entries: ans.Entries}, alice, ErrBadAnswer},
		{"a result naming a size known", &keydirxml.Lookup1{Known: 3, Checkpoint: ans.Checkpoint, Head: ans.Head, Entries: ans.Entries}, alice, ErrBadAnswer},
	}
	for _, r := range refusals {
		if _, err := d.VerifyLookup(ctx, r.res, r.want...); !errors.Is(err, r.err) {
			t.Errorf("%s: %v, want %v", r.name, err, r.err)
		}
	}
	// Past the maximum age of the head of size 3: nothing is held.
	d.v1.now = func() time.Time { return time.Now().Add(25 * time.Hour) }
	if n, _ := d.knownSize(alice); n != 0 {
		t.Errorf("knownSize 25 h later = %d, want 0", n)
	}
	if _, err := d.VerifyLookup(ctx, unchanged(3), alice...); !errors.Is(err, ErrStaleCheckpoint) {
		t.Errorf("unchanged 25 h later = %v, want ErrStaleCheckpoint", err)
	}
}

// TestCheckpointSize reads the size line of a signed checkpoint.
func TestCheckpointSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"o\n3\nhash\n\n— o sig\n": 3,
		"o\n1048577\nh\n":         1048577,
		"":                        -1,
		"o\n":                     -1,
		"o\nx\nh\n":               -1,
	} {
		if got := checkpointSize([]byte(in)); got != want {
			t.Errorf("checkpointSize(%q) = %d, want %d", in, got, want)
		}
	}
}

// TestConditionalLookupReask: what LookupKeys does when an "unchanged"
// answer confirms what the device stopped holding while the request was
// on its way (its pin moved, or the head of that size grew too old): it
// asks again in full, once, and a second "unchanged" or a stale full
// answer is refused. The moment between sending and the answer cannot be
// chosen against a real server, so the answers are v1Answer's, handed
// over by ask; keydir's TestConditionalLookups plays the rest end to end.
func TestConditionalLookupReask(t *testing.T) {
	t.Parallel()
	alice := []string{"alice@example.org"}
	// movePin pins the same tree of size 3 with a witness's cosignature
	// added: the bytes another answer (a cosigned one) would pin.
	movePin := func(t *testing.T, d *KeyDirectory) {
		pinned, err := d.pinnedCheckpoint()
		if err != nil {
			t.Fatal(err)
		}
		n, err := note.Open(pinned, note.VerifierList(d.verifier))
		if err != nil {
			t.Fatal(err)
		}
		wkey, _, err := note.GenerateKey(rand.Reader, "witness.example.org")
		if err != nil {
			t.Fatal(err)
		}
		w, err := note.NewSigner(wkey)
		if err != nil {
			t.Fatal(err)
		}
		cosigned, err := note.Sign(n, w)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.pins.SetCheckpoint(d.verifier.Name(), cosigned); err != nil {
			t.Fatal(err)
		}
	}
	unchanged := &keydirxml.Lookup1{Unchanged: 3}
	tests := []struct {
		name string
		// answer returns the result of ask number i (from 0), given the
		// size it said; it may change the device as the world would
		// while the request is on its way.
		answer        func(t *testing.T, d *KeyDirectory, full *keydirxml.Lookup1, i int, known int64) *keydirxml.Lookup1
		wantKnown     []int64 // the known of each ask, in order
		wantErr       error   // nil: alice's key
		wantUnchanged uint64
	}{
		{"unchanged, taken", func(_ *testing.T, _ *KeyDirectory, _ *keydirxml.Lookup1, _ int, _ int64) *keydirxml.Lookup1 {
			return unchanged
		}, []int64{3}, nil, 1},
		{"the pin moved on the way: asked again in full", func(t *testing.T, d *KeyDirectory, full *keydirxml.Lookup1, i int, _ int64) *keydirxml.Lookup1 {
			if i == 0 {
				movePin(t, d)
				return unchanged
			}
			return full
		}, []int64{3, 0}, nil, 0},
		{"the head grew old on the way: asked again, still old", func(_ *testing.T, d *KeyDirectory, full *keydirxml.Lookup1, i int, _ int64) *keydirxml.Lookup1 {
			if i == 0 {
				d.v1.now = func() time.Time { return time.Now().Add(25 * time.Hour) }
				return unchanged
			}
			return full
		}, []int64{3, 0}, ErrStaleCheckpoint, 0},
		{"unchanged again to the lookup in full: refused, not asked a third time", func(t *testing.T, d *KeyDirectory, _ *keydirxml.Lookup1, i int, _ int64) *keydirxml.Lookup1 {
			if i == 0 {
				movePin(t, d)
			}
			return unchanged
		}, []int64{3, 0}, ErrBadAnswer, 0},
		{"a full answer that fails is not asked again", func(_ *testing.T, d *KeyDirectory, full *keydirxml.Lookup1, _ int, _ int64) *keydirxml.Lookup1 {
			d.v1.now = func() time.Time { return time.Now().Add(25 * time.Hour) }
			return full
		}, []int64{3}, ErrStaleCheckpoint, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			d, full := v1Answer(t)
			if _, err := d.VerifyLookup(ctx, full, alice...); err != nil {
				t.Fatal(err)
			}
			var asked []int64
			ask := func(_ context.Context, want []string, known int64) (*keydirxml.Lookup1, error) {
				if len(want) != 1 || want[0] != alice[0] {
					t.Fatalf("asked for %v, want %v", want, alice)
				}
				asked = append(asked, known)
				return tt.answer(t, d, full, len(asked)-1, known), nil
			}
			got, err := d.lookupVia(ctx, alice, ask)
			if !slices.Equal(asked, tt.wantKnown) {
				t.Errorf("asks said known %v, want %v", asked, tt.wantKnown)
			}
			switch {
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("lookup = %v, want %v", err, tt.wantErr)
			case tt.wantErr == nil && (err != nil || len(got) != 1 || got[0].Key == nil || got[0].Key.DER == nil):
				t.Errorf("lookup = %+v, %v; want alice's key", got, err)
			}
			if n := d.UnchangedLookups(); n != tt.wantUnchanged {
				t.Errorf("UnchangedLookups = %d, want %d", n, tt.wantUnchanged)
			}
		})
	}
	// A failure to ask is returned as it is, and not asked again.
	d, full := v1Answer(t)
	if _, err := d.VerifyLookup(context.Background(), full, alice...); err != nil {
		t.Fatal(err)
	}
	lost := errors.New("connection lost")
	asks := 0
	if _, err := d.lookupVia(context.Background(), alice, func(context.Context, []string, int64) (*keydirxml.Lookup1, error) {
		asks++
		return nil, lost
	}); !errors.Is(err, lost) || asks != 1 {
		t.Errorf("lookup with the connection lost = %v after %d asks, want %v after 1", err, asks, lost)
	}
}
