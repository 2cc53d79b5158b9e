package client

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/client/envelope"
)

// BenchmarkGossip measures what gossip (docs/envelope.md, section 12)
// adds per envelope, against a baseline in the same run:
//
//   - bytes: an envelope of version 1 against the same of version 0
//     (a standard text of 100 bytes), as marshalled (bytes/op metrics);
//   - the recipient's cost: opening the envelope (envelope.Open: RSA
//     signature, key unwrap, decryption: the baseline) against the
//     gossip check with a consistency proof to verify (the note's
//     signature and an RFC 6962 proof between trees of 2^20-10 and 2^20
//     leaves, the proof in memory: the request's round trip is not
//     counted) and against a checkpoint already proven (cached).
func BenchmarkGossip(b *testing.B) {
	alice, err := envelope.GenerateIdentity("alice@example.org")
	if err != nil {
		b.Fatal(err)
	}
	bob, err := envelope.GenerateIdentity("bob@example.org")
	if err != nil {
		b.Fatal(err)
	}
	const origin = "clink.example.org/keydir"
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		b.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	verifier, _ := note.NewVerifier(vkey)
	// A tree of 2^20 leaves, hashed in memory.
	const n = 1 << 20
	var hashes []tlog.Hash
	for i := int64(0); i < n; i++ {
		leaf := tlog.RecordHash([]byte(fmt.Sprintf("record %d", i)))
		hs, err := tlog.StoredHashesForRecordHash(i, leaf, tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
			out := make([]tlog.Hash, len(idx))
			for j, x := range idx {
				out[j] = hashes[x]
			}
			return out, nil
		}))
		if err != nil {
			b.Fatal(err)
		}
		hashes = append(hashes, hs...)
	}
	hr := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for j, x := range idx {
			out[j] = hashes[x]
		}
		return out, nil
	})
	sign := func(size int64) *VerifiedCheckpoint {
		h, err := tlog.TreeHash(size, hr)
		if err != nil {
			b.Fatal(err)
		}
		msg, err := note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\n", origin, size, base64.StdEncoding.EncodeToString(h[:]))}, signer)
		if err != nil {
			b.Fatal(err)
		}
		cp, err := openCheckpoint(msg, verifier)
		if err != nil {
			b.Fatal(err)
		}
		return cp
	}
	theirs, mine := sign(n-10), sign(n)
	p, err := tlog.ProveTree(n, n-10, hr)
	if err != nil {
		b.Fatal(err)
	}
	hs := make([][32]byte, len(p))
	for i := range p {
		hs[i] = p[i]
	}
	_ = rfc6962.DefaultHasher

	h := envelope.Header{ID: "bench", Time: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	text := envelope.Content{Kind: envelope.KindText, Text: string(make([]byte, 100))}
	rcpt := []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}}
	v0, err := envelope.SealStandard(alice, rcpt, h, text)
	if err != nil {
		b.Fatal(err)
	}
	h.Checkpoint = theirs.Signed
	v1, err := envelope.SealStandard(alice, rcpt, h, text)
	if err != nil {
		b.Fatal(err)
	}
	x0, _ := xml.Marshal(v0)
	x1, _ := xml.Marshal(v1)

	b.Logf("envelope of version 0: %d bytes; version 1: %d bytes; gossip adds %d (%.2fx); the checkpoint note is %d bytes",
		len(x0), len(x1), len(x1)-len(x0), float64(len(x1))/float64(len(x0)), len(v1.Checkpoint))
	b.Run("open-v1-baseline", func(b *testing.B) {
		for b.Loop() {
			if _, err := envelope.Open(v1, bob, alice.PublicKey(), nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gossip-check-proof", func(b *testing.B) {
		for b.Loop() {
			cp, err := openCheckpoint(v1.Checkpoint, verifier)
			if err != nil {
				b.Fatal(err)
			}
			if err := verifyConsistency(cp, mine, hs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gossip-check-cached", func(b *testing.B) {
		var c gossipCache
		c.add(sha256.Sum256(v1.Checkpoint))
		for b.Loop() {
			if !c.has(sha256.Sum256(v1.Checkpoint)) {
				b.Fatal("not cached")
			}
		}
	})
}
