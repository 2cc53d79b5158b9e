package clinkid_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/clinkid"
)

func TestNormalizeName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string // want "" means ErrInvalidName
	}{
		{"alice", "alice"},
		{"Alice", "alice"},
		{"ALICE.Smith-1_x", "alice.smith-1_x"},
		{"Ünïcödé", "ünïcödé"},
		{"Σίσυφος", "σίσυφος"},
		{"ｆｕｌｌｗｉｄｔｈ", "fullwidth"}, // width mapping (RFC 8265 §3.3.1)
		{"", ""},
		{"a b", ""},
		{"a@b", ""},
		{"a:b", ""},
		{"a/b", ""},
		{"a<b", ""},
		{"a>b", ""},
		{"a&b", ""},
		{"a'b", ""},
		{`a"b`, ""},
		{`a\40b`, ""},
		{"a\x00b", ""},
		{"a\u200bb", ""}, // zero-width space
		{"\xff", ""},
		{strings.Repeat("a", 64), strings.Repeat("a", 64)},
		{strings.Repeat("a", 65), ""},
		{strings.Repeat("é", 33), ""}, // 66 bytes
	}
	for _, tt := range tests {
		got, err := clinkid.NormalizeName(tt.in)
		if tt.want == "" {
			if !errors.Is(err, clinkid.ErrInvalidName) {
				t.Errorf("NormalizeName(%q) = %q, %v, want ErrInvalidName", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeName(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

// FuzzNormalizeName: a name is accepted only in a form that normalises to
// itself and makes a JID the XMPP library accepts.
func FuzzNormalizeName(f *testing.F) {
	for _, s := range []string{"alice", "Alice", "ｆｕｌｌ", "a b", "Σ", "\u0130", "ß"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := clinkid.NormalizeName(s)
		if err != nil {
			return
		}
		again, err := clinkid.NormalizeName(n)
		if err != nil || again != n {
			t.Fatalf("NormalizeName(%q) = %q, but NormalizeName(%q) = %q, %v", s, n, n, again, err)
		}
		if len(n) > clinkid.MaxNameBytes || strings.ContainsAny(n, "\"&'/:<>@\\ ") {
			t.Fatalf("NormalizeName(%q) = %q, which should have been refused", s, n)
		}
	})
}
