package client

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// cosignatureVectors is keylog/testdata/cosignature_vectors.json: real
// litewitness cosignatures and changes to them, with the outcome each
// must have. The device checks them with its own code (witness.go).
type cosignatureVectors struct {
	LogVKey   string   `json:"log_vkey"`
	Witnesses []string `json:"witnesses"`
	Cases     []struct {
		Name       string `json:"name"`
		Checkpoint string `json:"checkpoint"`
		Threshold  int    `json:"threshold"`
		Expect     string `json:"expect"`
	} `json:"cases"`
	Keys []struct {
		Name   string `json:"name"`
		Key    string `json:"key"`
		Expect string `json:"expect"`
	} `json:"keys"`
}

func readCosignatureVectors(t testing.TB) cosignatureVectors {
	t.Helper()
	b, err := os.ReadFile("../keylog/testdata/cosignature_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v cosignatureVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestWitnessVectors: the device's witness policy reaches every vector's
// outcome; "not cosigned" is ErrNotCosigned, a checkpoint the log did
// not sign ErrBadCheckpoint (what openCheckpoint, which runs first in
// acceptCheckpoint, also says).
func TestWitnessVectors(t *testing.T) {
	t.Parallel()
	vec := readCosignatureVectors(t)
	logV, err := note.NewVerifier(vec.LogVKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range vec.Cases {
		pol, err := parseWitnessPolicy(WitnessPolicy{Keys: vec.Witnesses, Threshold: c.Threshold})
		if c.Threshold == 0 {
			// A device either requires cosignatures or has no policy.
			if err == nil {
				t.Errorf("%s: parseWitnessPolicy(threshold 0 with keys) = nil error", c.Name)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		err = pol.check([]byte(c.Checkpoint), logV)
		if _, oerr := openCheckpoint([]byte(c.Checkpoint), logV); oerr != nil && err == nil {
			err = oerr
		}
		got := "ok"
		switch {
		case err == nil:
		case errors.Is(err, ErrNotCosigned):
			got = "not cosigned"
		case errors.Is(err, ErrBadCheckpoint):
			got = "bad checkpoint"
		default:
			got = "error: " + err.Error()
		}
		if got != c.Expect {
			t.Errorf("%s: check = %q (%v), want %q", c.Name, got, err, c.Expect)
		}
	}
	for _, k := range vec.Keys {
		_, err := parseWitnessKey(k.Key)
		got := "ok"
		if err != nil {
			got = "bad key"
		}
		if got != k.Expect {
			t.Errorf("%s: parseWitnessKey(%q) = %v, want %s", k.Name, k.Key, err, k.Expect)
		}
	}
	if p, err := parseWitnessPolicy(WitnessPolicy{}); p != nil || err != nil {
		t.Errorf("parseWitnessPolicy(zero) = %v, %v; want no policy", p, err)
	}
	for _, bad := range []WitnessPolicy{
		{Keys: vec.Witnesses, Threshold: 3},
		{Threshold: 1},
		{Keys: []string{vec.Witnesses[0], vec.Witnesses[0]}, Threshold: 1},
		{Keys: []string{strings.ToUpper(vec.Witnesses[0])}, Threshold: 1},
	} {
		if _, err := parseWitnessPolicy(bad); err == nil {
			t.Errorf("parseWitnessPolicy(%+v) = nil error", bad)
		}
	}
}

// FuzzWitnessCheck: a checkpoint from the network with cosignature
// lines never passes the policy without the log's signature and enough
// valid cosignatures (keylog's check agrees: its own FuzzWitnessCheck).
func FuzzWitnessCheck(f *testing.F) {
	vec := readCosignatureVectors(f)
	for _, c := range vec.Cases {
		f.Add([]byte(c.Checkpoint))
	}
	logV, _ := note.NewVerifier(vec.LogVKey)
	pol, _ := parseWitnessPolicy(WitnessPolicy{Keys: vec.Witnesses, Threshold: 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		if err := pol.check(in, logV); err == nil {
			n, oerr := note.Open(in, note.VerifierList(logV))
			if oerr != nil || len(n.UnverifiedSigs) < 2 {
				t.Fatalf("check(%q) passed: %v", in, oerr)
			}
		}
	})
}
