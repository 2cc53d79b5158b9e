package logdb_test

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// Every benchmark here reports against a baseline measured in the same
// run, never alone:
//
//	go test -run '^$' -bench 'StoreVsPgbench|Proof1M' -benchtime 1x -timeout 30m ./keydir/logdb/
//
// (The whole path, device to directory and back, is keydir's
// BenchmarkLookupVsPing.)
//
// Nothing asserts on timing.

// BenchmarkStoreVsPgbench: the store's read path alone (a v1 lookup of
// one JID: one statement, its map proof from memory and checked, then
// the tree hash and the entry's inclusion proof read from the database
// and checked), 4 clients for 10 s, against `pgbench -S` (primary-key
// SELECTs) with 4 clients for 10 s on a fresh database of the same
// PostgreSQL server, in the same run.
func BenchmarkStoreVsPgbench(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const clients, dur = 4, 10 * time.Second
	pg := labtest.Postgres(b)
	pgbench := "/usr/lib/postgresql/15/bin/pgbench"
	if _, err := os.Stat(pgbench); err != nil {
		if pgbench, err = exec.LookPath("pgbench"); err != nil {
			b.Fatal("pgbench not found")
		}
	}
	benchURL, err := pg.CreateDatabase(ctx, "pgbench")
	if err != nil {
		b.Fatal(err)
	}
	defer pg.DropDatabase(context.Background(), benchURL)
	if out, err := exec.CommandContext(ctx, pgbench, "-i", "-q", benchURL).CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}

	l := keydirtest.New(b, keydir.Config{})
	users := keydirtest.PublishMany(ctx, b, l.Store, 1000, "lab.localhost")
	for b.Loop() {
		// pgbench first, then the store, each alone on the machine.
		out, err := exec.CommandContext(ctx, pgbench, "-S", "-n", "-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(int(dur.Seconds())), benchURL).CombinedOutput()
		if err != nil {
			b.Fatalf("pgbench -S: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`).FindSubmatch(out)
		if m == nil {
			b.Fatalf("no tps in pgbench output:\n%s", out)
		}
		tps, _ := strconv.ParseFloat(string(m[1]), 64)

		var proofs atomic.Int64
		var wg sync.WaitGroup
		deadline := time.Now().Add(dur)
		for range clients {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					u := users[rand.IntN(len(users))]
					snap, err := l.Store.Lookup(ctx, []jid.JID{u})
					if err != nil {
						b.Error(err)
						return
					}
					e := snap.Entries[0]
					root, err := tlog.TreeHash(snap.Size, l.Store.HashReader(ctx))
					if err != nil || keylog.VerifyMap(snap.MapRoot, e.Index, e.Value, e.MapProof) != nil {
						b.Errorf("lookup of %s: %v", u, err)
						return
					}
					p, err := tlog.ProveRecord(snap.Size, e.Value.Entry, l.Store.HashReader(ctx))
					if err != nil || tlog.CheckRecord(p, snap.Size, root, e.Value.Entry, tlog.RecordHash(e.Record)) != nil {
						b.Errorf("proof of %d: %v", e.Value.Entry, err)
						return
					}
					proofs.Add(1)
				}
			})
		}
		wg.Wait()
		perSec := float64(proofs.Load()) / dur.Seconds()
		b.ReportMetric(tps, "pgbench-S-tps")
		b.ReportMetric(perSec, "store-lookup+proof/s")
		b.ReportMetric(perSec/tps, "store/pgbench")
		b.ReportMetric(3, "queries/lookup+proof") // the lookup's statement, the tree hash's and the proof's reads
	}
}

// BenchmarkProof1M: proof generation and checking at 1,000,000 leaves,
// from hashes in memory and from hashes in PostgreSQL (the same 2M stored
// hashes copied into keydir_hashes), against the tree hash of the same
// tree as the baseline of work per query.
func BenchmarkProof1M(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	const n = 1_000_000
	mem := new(keylog.Hashes)
	t0 := time.Now()
	for i := range int64(n) {
		mem.Append(keylog.Record{Label: [32]byte{byte(i), byte(i >> 8), byte(i >> 16)}, Kind: keylog.KindPublish, Time: 1795636800 + i}.Marshal())
	}
	build := time.Since(t0)
	root, _ := tlog.TreeHash(n, mem)
	hashes := mem.Stored()

	l := keydirtest.New(b, keydir.Config{})
	t1 := time.Now()
	rows := make([][]any, len(hashes))
	for i := range hashes {
		rows[i] = []any{int64(i), hashes[i][:]}
	}
	if _, err := l.DB.CopyFrom(ctx, pgx.Identifier{"keydir_hashes"}, []string{"idx", "hash"}, pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	load := time.Since(t1)
	pgr := l.Store.HashReader(ctx)

	measure := func(f func(i int64)) time.Duration {
		const rounds = 2000
		t := time.Now()
		for range rounds {
			f(rand.Int64N(n))
		}
		return time.Since(t) / rounds
	}
	for b.Loop() {
		memProof := measure(func(i int64) {
			p, err := tlog.ProveRecord(n, i, mem)
			if err != nil || tlog.CheckRecord(p, n, root, i, hashes[tlog.StoredHashIndex(0, i)]) != nil {
				b.Fatal("memory proof failed")
			}
		})
		pgProof := measure(func(i int64) {
			p, err := tlog.ProveRecord(n, i, pgr)
			if err != nil || tlog.CheckRecord(p, n, root, i, hashes[tlog.StoredHashIndex(0, i)]) != nil {
				b.Fatalf("PostgreSQL proof failed: %v", err)
			}
		})
		pgTree := measure(func(int64) {
			if h, err := tlog.TreeHash(n, pgr); err != nil || h != root {
				b.Fatal("tree hash from PostgreSQL differs")
			}
		})
		memCons := measure(func(i int64) {
			old := max(i, 1)
			if _, err := tlog.ProveTree(n, old, mem); err != nil {
				b.Fatal(err)
			}
		})
		b.ReportMetric(float64(memProof.Nanoseconds())/1e3, "mem-prove+check-µs")
		b.ReportMetric(float64(memCons.Nanoseconds())/1e3, "mem-consistency-µs")
		b.ReportMetric(float64(pgProof.Nanoseconds())/1e3, "pg-prove+check-µs")
		b.ReportMetric(float64(pgTree.Nanoseconds())/1e3, "pg-treehash-µs")
		b.ReportMetric(float64(pgProof)/float64(pgTree), "pg-proof/treehash")
		b.ReportMetric(build.Seconds(), "build-1M-s")
		b.ReportMetric(load.Seconds(), "copy-2M-hashes-s")
	}
}
