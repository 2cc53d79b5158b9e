package client

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestSafetyCodeVectors checks SafetyCode against the vectors computed
// in Python (testdata/safety_vectors.py), and that the code does not
// depend on the order of the two users.
func TestSafetyCodeVectors(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("testdata", "safety_vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Vectors []struct {
			JIDA string `json:"jid_a"`
			FPA  string `json:"fingerprint_a"`
			JIDB string `json:"jid_b"`
			FPB  string `json:"fingerprint_b"`
			Code string `json:"code"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) < 4 {
		t.Fatalf("%d vectors", len(f.Vectors))
	}
	for _, v := range f.Vectors {
		fa, _ := hex.DecodeString(v.FPA)
		fb, _ := hex.DecodeString(v.FPB)
		if got := SafetyCode(v.JIDA, [32]byte(fa), v.JIDB, [32]byte(fb)); got != v.Code {
			t.Errorf("SafetyCode(%s, %s) = %q, want %q", v.JIDA, v.JIDB, got, v.Code)
		}
		if got := SafetyCode(v.JIDB, [32]byte(fb), v.JIDA, [32]byte(fa)); got != v.Code {
			t.Errorf("SafetyCode(%s, %s) in the other order = %q, want %q", v.JIDB, v.JIDA, got, v.Code)
		}
	}
}

func TestNormalizeCode(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want string }{
		{"12345 67890", "1234567890"},
		{"12345-67890\n", "1234567890"},
		{"", ""},
	} {
		if got := normalizeCode(tt.in); got != tt.want {
			t.Errorf("normalizeCode(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
