package audit_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keylog"
)

// auditor audits l again and again, as a cron job would, keeping one
// state file.
func auditor(t testing.TB, l *keydirtest.Log) func(context.Context) (*audit.Report, error) {
	state := filepath.Join(t.TempDir(), "audit.checkpoint")
	return func(ctx context.Context) (*audit.Report, error) {
		return audit.Run(ctx, audit.Config{URL: l.URL, Verifier: l.Verifier, StateFile: state})
	}
}

// TestAuditCatchesTampering: one row changed in PostgreSQL, in the
// entries or in the stored hashes, or the whole log rewritten
// consistently by someone with database access, and the next audit fails.
func TestAuditCatchesTampering(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tamper func(ctx context.Context, t *testing.T, l *keydirtest.Log)
		want   string
	}{
		{"entry row", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			// Point entry 3 at another fingerprint: what a server that
			// swapped a key would have to do.
			l.MustExec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 3`)
		}, "do not hash to the signed checkpoint"},
		{"leaf hash row", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			l.MustExec(ctx, t, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(0, 5))
		}, "hash tile tile/0/000.p/10 differs"},
		{"inner hash row", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			// Level 3 is in no tile (tiles hold levels 0, 8, 16, ...):
			// the change shows once the hash feeds a new root. The
			// running server then refuses to sign a tree that does not
			// extend the one it signed before, and serves nothing.
			l.MustExec(ctx, t, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(3, 0))
			if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, "late@lab.localhost"), keydirtest.FakeRSAKey(t, 3072), time.Unix(1795640000, 0)); err != nil {
				t.Fatal(err)
			}
		}, "checkpoint: 503 Service Unavailable"},
		{"entry deleted", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			l.MustExec(ctx, t, `DELETE FROM keydir_events WHERE idx = 8`)
			l.MustExec(ctx, t, `DELETE FROM keydir_bindings WHERE idx = 8`)
			l.MustExec(ctx, t, `DELETE FROM keydir_map WHERE changed = 8`)
			l.MustExec(ctx, t, `DELETE FROM keydir_entries WHERE idx = 8`)
		}, "tile/entries/000.p/10: 500 Internal Server Error"},
		{"history rewritten", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			// Change entry 2, then recompute every hash so that the log
			// is self-consistent again, and, holding the signing key,
			// sign the rewritten tree into the signer's state file so
			// that the restarted server serves it: only the checkpoint
			// the auditor kept shows the rewrite.
			l.MustExec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 2`)
			recs, err := l.Store.ReadRecords(ctx, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			var mem keylog.Hashes
			for _, rec := range recs {
				mem.Append(rec)
			}
			for i, h := range mem.Stored() {
				l.MustExec(ctx, t, `UPDATE keydir_hashes SET hash = $2 WHERE idx = $1`, i, h[:])
			}
			forgeState(t, l, &mem)
			l.Restart(t)
		}, "history was rewritten"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := keydirtest.New(t, keydir.Config{})
			run := auditor(t, l)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for i := range 9 {
				if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, fmt.Sprintf("u%d@lab.localhost", i)), keydirtest.FakeRSAKey(t, 3072), time.Unix(1795636800+int64(i), 0)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := run(ctx); err != nil {
				t.Fatalf("Audit(before tampering) = %v", err)
			}
			tt.tamper(ctx, t, l)
			_, err := run(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Audit(after tampering) = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// forgeState signs the tree of mem with the log's key into its state
// file, as an operator holding the key and the host could.
func forgeState(t *testing.T, l *keydirtest.Log, mem *keylog.Hashes) {
	t.Helper()
	root, err := keylog.TreeHash(mem.Size(), mem)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := keylog.SignCheckpoint(keylog.Checkpoint{Origin: l.Signer.Name(), Size: mem.Size(), Hash: root}, l.Signer)
	if err != nil {
		t.Fatal(err)
	}
	if err := keydir.WriteState(l.StateFile, msg); err != nil {
		t.Fatal(err)
	}
}

// TestAuditPolicyViolation: a server that appends a second publish for a
// label whose binding is still in force (breaking first-key-wins) is
// caught, even though its log is otherwise intact.
func TestAuditPolicyViolation(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vrf, err := keylog.NewVRFSigner(keydirtest.Origin, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := keylog.Label(keydirtest.MustJID(t, "alice@lab.localhost")), keylog.Label(keydirtest.MustJID(t, "bob@lab.localhost"))
	k1, k2 := keylog.Fingerprint([]byte("k1")), keylog.Fingerprint([]byte("k2"))
	genesis := keylog.RecordV1{Kind: keylog.KindGenesis, VRFKey: vrf.Public().String(), Time: 1, Map: keylog.MapEmpty}
	// Each case is a log a dishonest server could serve, with every map
	// root computed honestly unless the case says otherwise: only the
	// policy, or the one line named, is broken.
	tests := []struct {
		name  string
		recs  []keylog.RecordV1
		wrong int // index of a record whose map line is made wrong; -1 none
		want  string
	}{
		{"second key while one is in force", []keylog.RecordV1{genesis,
			{Kind: keylog.KindPublish, Index: alice, Fingerprint: k1, Version: 1, Time: 2},
			{Kind: keylog.KindPublish, Index: alice, Fingerprint: k2, Version: 2, Time: 3}}, -1, "second key"},
		{"reset of a key not in force", []keylog.RecordV1{genesis,
			{Kind: keylog.KindPublish, Index: alice, Fingerprint: k1, Version: 1, Time: 2},
			{Kind: keylog.KindReset, Index: alice, Fingerprint: k2, Version: 2, Time: 3}}, -1, "not the binding in force"},
		{"version reused", []keylog.RecordV1{genesis,
			{Kind: keylog.KindPublish, Index: alice, Fingerprint: k1, Version: 1, Time: 2},
			{Kind: keylog.KindReset, Index: alice, Fingerprint: k1, Version: 2, Time: 3},
			{Kind: keylog.KindPublish, Index: alice, Fingerprint: k2, Version: 2, Time: 4}}, -1, "versions must go up by one"},
		{"a map line that does not follow from the log", []keylog.RecordV1{genesis,
			{Kind: keylog.KindPublish, Index: alice, Fingerprint: k1, Version: 1, Time: 2},
			{Kind: keylog.KindPublish, Index: bob, Fingerprint: k2, Version: 1, Time: 3},
			{Kind: keylog.KindTick, Time: 4}}, 2, "map root of entry 2"},
		{"time going back", []keylog.RecordV1{genesis,
			{Kind: keylog.KindPublish, Index: alice, Fingerprint: k1, Version: 1, Time: 5},
			{Kind: keylog.KindTick, Time: 4}}, -1, "goes back"},
		{"a second genesis", []keylog.RecordV1{genesis, genesis}, -1, "second genesis"},
		{"migrate records a new log does not have", []keylog.RecordV1{genesis,
			{Kind: keylog.KindMigrate, Index: alice, Label: bob, Version: 1, Time: 2}}, -1, "past the ones genesis announced"},
	}
	for _, tt := range tests {
		m := new(keylog.Map)
		var texts [][]byte
		for i, r := range tt.recs {
			switch r.Kind {
			case keylog.KindPublish, keylog.KindReset, keylog.KindDelete:
				m.Set(r.Index, keylog.MapValue{Ended: r.Kind != keylog.KindPublish, Fingerprint: r.Fingerprint, Entry: int64(i), Version: r.Version})
			}
			if r.Kind != keylog.KindGenesis {
				r.Map = m.Root()
			}
			if i == tt.wrong {
				r.Map[0] ^= 1
			}
			texts = append(texts, r.Marshal())
		}
		url, v := serveLog(t, texts)
		_, err := audit.Run(ctx, audit.Config{URL: url, Verifier: v})
		if !errors.Is(err, audit.ErrFailed) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Audit = %v, want a failure saying %q", tt.name, err, tt.want)
		}
	}
}

// TestAuditManySignatures: C2SP signed-note wants at least 16 signatures
// accepted: the auditor reads a checkpoint with 16 Ed25519 cosignatures
// and 16 unknown post-quantum-sized signature lines (about 70 kB).
func TestAuditManySignatures(t *testing.T) {
	t.Parallel()
	vrf, _ := keylog.NewVRFSigner(keydirtest.Origin, make([]byte, 32))
	genesis := keylog.RecordV1{Kind: keylog.KindGenesis, VRFKey: vrf.Public().String(), Time: 1, Map: keylog.MapEmpty}
	url, v := serveLog(t, [][]byte{genesis.Marshal()}, func(msg []byte) []byte {
		n, err := note.Open(msg, note.VerifierList())
		var unverified *note.UnverifiedNoteError
		if errors.As(err, &unverified) {
			n = unverified.Note
		}
		var cosigners []note.Signer
		for i := range 16 {
			k, _, _ := note.GenerateKey(rand.Reader, fmt.Sprintf("witness%d.example", i))
			s, _ := note.NewSigner(k)
			cosigners = append(cosigners, s)
		}
		more, err := note.Sign(n, cosigners...)
		if err != nil {
			t.Fatal(err)
		}
		big := make([]byte, 3304)
		for i := range 16 {
			rand.Read(big)
			more = fmt.Appendf(more, "— pq%d.example %s\n", i, base64.StdEncoding.EncodeToString(big))
		}
		return more
	})
	if rep, err := audit.Run(context.Background(), audit.Config{URL: url, Verifier: v}); err != nil || rep.Checkpoint.Size != 1 {
		t.Fatalf("Audit(a checkpoint with 33 signatures) = %+v, %v", rep, err)
	}
}

// serveLog serves a log of the given records over C2SP tlog-tiles, signed
// by a key of its own (its note passed through cosign, if given), and
// returns its URL and verifier.
func serveLog(t *testing.T, records [][]byte, cosign ...func([]byte) []byte) (string, note.Verifier) {
	t.Helper()
	skey, vkey, _ := note.GenerateKey(rand.Reader, keydirtest.Origin)
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	var mem keylog.Hashes
	for _, r := range records {
		mem.Append(r)
	}
	n := mem.Size()
	root, _ := keylog.TreeHash(n, &mem)
	msg, err := keylog.SignCheckpoint(keylog.Checkpoint{Origin: keydirtest.Origin, Size: n, Hash: root}, s)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cosign {
		msg = c(msg) // note.Sign keeps the log's signature, first
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /checkpoint", func(w http.ResponseWriter, r *http.Request) { w.Write(msg) })
	mux.HandleFunc("GET /tile/", func(w http.ResponseWriter, r *http.Request) {
		tile, err := keylog.ParseTilePath(strings.TrimPrefix(r.URL.Path, "/"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if tile.L == keylog.EntriesLevel {
			start := tile.N * keylog.TileWidth
			w.Write(keylog.AppendEntryBundle(nil, records[start:start+int64(tile.W)]...))
			return
		}
		data, err := tlog.ReadTileData(tile, &mem)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, v
}
