package lab_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// testLog is a log in memory with a note key: what a witness sees of a
// log.
type testLog struct {
	origin string
	signer note.Signer
	vkey   string
	mem    keylog.Hashes
}

func newTestLog(t *testing.T, origin string) *testLog {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return &testLog{origin: origin, signer: s, vkey: vkey}
}

func (l *testLog) grow(t *testing.T, prefix string, n int) {
	for i := range n {
		l.mem.Append(fmt.Appendf(nil, "%s %d\n", prefix, i))
	}
}

// request is an add-checkpoint body for the log's current size, with the
// consistency proof from old.
func (l *testLog) request(t *testing.T, old int64) ([]byte, []byte) {
	t.Helper()
	size := l.mem.Size()
	root, err := keylog.TreeHash(size, &l.mem)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := keylog.SignCheckpoint(keylog.Checkpoint{Origin: l.origin, Size: size, Hash: root}, l.signer)
	if err != nil {
		t.Fatal(err)
	}
	var proof tlog.TreeProof
	if old > 0 {
		if proof, err = tlog.ProveTree(size, old, &l.mem); err != nil {
			t.Fatal(err)
		}
	}
	return keylog.AddCheckpointRequest(old, proof, signed), signed
}

func addCheckpoint(t *testing.T, w *lab.Witness, body []byte) (int, string, []byte) {
	t.Helper()
	resp, err := http.Post(w.URL+"/add-checkpoint", "text/plain", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

// TestWitness starts a real litewitness with its key in a real ssh-agent,
// registers a log with witnessctl, and plays C2SP tlog-witness against
// it: the first checkpoint (old 0) is cosigned with a cosignature/v1
// line that keylog verifies with the verifier key the lab computed; a
// request from a size the witness did not see gets 409 with its size; a
// later checkpoint with the consistency proof is cosigned; a fork of the
// same log (another tree, the same key) gets 422 and is not cosigned; a
// log it does not know is refused. Nothing is left running after Close.
func TestWitness(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := labtest.NewWitness(t, "witness.lab.localhost")
	if !strings.HasPrefix(w.URL, "http://127.0.0.1:") {
		t.Fatalf("URL = %q, want loopback", w.URL)
	}
	pol, err := keylog.NewWitnessPolicy([]string{w.VerifierKey}, 1)
	if err != nil {
		t.Fatalf("NewWitnessPolicy(%q) = %v", w.VerifierKey, err)
	}
	honest := newTestLog(t, "log.lab.localhost/test")
	if err := w.AddLog(ctx, honest.origin, honest.vkey); err != nil {
		t.Fatal(err)
	}
	logV, _ := note.NewVerifier(honest.vkey)

	cosign := func(body, signed []byte) {
		t.Helper()
		code, _, resp := addCheckpoint(t, w, body)
		if code != http.StatusOK {
			t.Fatalf("add-checkpoint = %d %q, want 200", code, resp)
		}
		sigs, err := keylog.ParseCosignatures(resp)
		if err != nil {
			t.Fatalf("ParseCosignatures(%q) = %v", resp, err)
		}
		if _, n, err := pol.Check(keylog.AppendCosignatures(signed, sigs), logV); err != nil || n != 1 {
			t.Fatalf("policy check of the cosigned checkpoint = %d, %v; want 1 valid", n, err)
		}
	}
	honest.grow(t, "honest", 3)
	cosign(honest.request(t, 0))
	if n, err := w.TreeSize(ctx, honest.origin); n != 3 || err != nil {
		t.Fatalf("TreeSize = %d, %v; want 3", n, err)
	}

	// A log that restarted and does not know what the witness saw.
	honest.grow(t, "honest", 2)
	body, _ := honest.request(t, 0)
	code, ctype, resp := addCheckpoint(t, w, body)
	if code != http.StatusConflict || ctype != "text/x.tlog.size" {
		t.Fatalf("add-checkpoint(old 0 after 3) = %d %s %q, want 409 text/x.tlog.size", code, ctype, resp)
	}
	if n, err := keylog.ParseTreeSize(resp); n != 3 || err != nil {
		t.Fatalf("ParseTreeSize(%q) = %d, %v; want 3", resp, n, err)
	}
	cosign(honest.request(t, 3))

	// A fork: the first 3 entries, then others; signed with the same key.
	fork := &testLog{origin: honest.origin, signer: honest.signer}
	fork.grow(t, "honest", 3)
	fork.grow(t, "fork", 4)
	body, _ = fork.request(t, 5)
	code, _, resp = addCheckpoint(t, w, body)
	if code != http.StatusUnprocessableEntity {
		t.Fatalf("add-checkpoint(fork) = %d %q, want 422", code, resp)
	}
	if n, _ := w.TreeSize(ctx, honest.origin); n != 5 {
		t.Fatalf("TreeSize after the fork = %d, want 5", n)
	}

	// A log the witness does not know.
	other := newTestLog(t, "other.lab.localhost/test")
	other.grow(t, "other", 1)
	body, _ = other.request(t, 0)
	if code, _, resp := addCheckpoint(t, w, body); code != http.StatusForbidden && code != http.StatusNotFound {
		t.Fatalf("add-checkpoint(unknown log) = %d %q, want 403 or 404", code, resp)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range lab.Processes() {
		if strings.Contains(p.Cmdline, w.Dir) {
			t.Errorf("left running after Close: %d %s", p.PID, p.Cmdline)
		}
	}
	if _, err := w.TreeSize(ctx, honest.origin); err == nil {
		t.Error("the witness still answers after Close")
	}
}
