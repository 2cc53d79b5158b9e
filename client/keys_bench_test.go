package client

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keylog"
)

// BenchmarkVerifyLookup: what a device spends verifying one found entry
// of a lookup in a log of 1,000,000 leaves (checkpoint signature, key
// parse, fingerprint, record rebuild, inclusion proof of 20 hashes),
// against the Ed25519 note verification alone as the baseline, in the
// same run:
//
//	go test -run '^$' -bench VerifyLookup ./client/
func BenchmarkVerifyLookup(b *testing.B) {
	const n = 1 << 20
	const who = "alice@example.org"
	der := fuzzKeyDER()
	fp := sha256.Sum256(der)
	const idx = 123457
	rec := leafRecord(jidLabel(who), "publish", fp, 1795636800)
	// A tree of n leaves whose leaf idx is rec; the others are cheap.
	r := new(keylog.Hashes)
	for i := int64(0); i < n; i++ {
		data := []byte(fmt.Sprint(i))
		if i == idx {
			data = rec
		}
		r.Append(data)
	}
	root, _ := tlog.TreeHash(n, r)
	p, _ := tlog.ProveRecord(n, idx, r)
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	signed, _ := note.Sign(&note.Note{Text: fmt.Sprintf("clink.example.org/keydir\n%d\n%s\n", n, base64.StdEncoding.EncodeToString(root[:]))}, s)
	e := keydirxml.Entry{JID: who, Status: "found", Index: idx, Time: 1795636800, Fingerprint: hex.EncodeToString(fp[:]),
		Key: base64.StdEncoding.EncodeToString(der), Proof: keydirxml.NewProof(p)}
	measure := func(f func()) time.Duration {
		const rounds = 3000
		t := time.Now()
		for range rounds {
			f()
		}
		return time.Since(t) / rounds
	}
	for b.Loop() {
		base := measure(func() {
			if _, err := note.Open(signed, note.VerifierList(v)); err != nil {
				b.Fatal(err)
			}
		})
		full := measure(func() {
			cp, err := openCheckpoint(signed, v)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := verifyEntry(e, who, cp); err != nil {
				b.Fatal(err)
			}
		})
		b.ReportMetric(float64(full.Nanoseconds())/1e3, "verify-µs")
		b.ReportMetric(float64(base.Nanoseconds())/1e3, "ed25519-note-µs")
		b.ReportMetric(float64(full)/float64(base), "verify/note")
	}
}
