package client

import (
	"context"
	"errors"
	"testing"
	"time"

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
