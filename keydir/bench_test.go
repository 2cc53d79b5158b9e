package keydir_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/internal/migrate"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// Every benchmark here reports against a baseline measured in the same
// run, never alone:
//
//	go test -run '^$' -bench LookupVsPing -benchtime 2000x -timeout 30m ./keydir/
//	go test -run '^$' -bench 'StoreVsPgbench|Proof1M' -benchtime 1x -timeout 30m ./keydir/
//
// Nothing asserts on timing.

// publishMany binds n fake users' keys straight through the store.
func publishMany(ctx context.Context, b *testing.B, store *keydir.Store, n int, domain string) []jid.JID {
	b.Helper()
	users := make([]jid.JID, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 4 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				users[i] = mustJID(b, fmt.Sprintf("bench%d@%s", i, domain))
				if _, _, err := store.Publish(ctx, users[i], fakeRSAKey(b, 3072), time.Now()); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return users
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkLookupVsPing: one device, one request in flight, alternating
// an XEP-0199 ping to the component (the link's ceiling: client → server
// → clinkd → server → client with no work) and a one-JID lookup (a log of
// 1,000 bindings; the answer carries key, proof and signed checkpoint).
// Private servers with their shapers off (lab Fast), so the numbers are
// clinkd's, not the c2s rate limit's. Reports lookups/s and p50/p99 of
// both, and lookup/ping ratios. The device-side verification cost is
// client.BenchmarkVerifyLookup's.
func BenchmarkLookupVsPing(b *testing.B) {
	for _, kind := range lab.Kinds() {
		b.Run(string(kind), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			srv := labtest.NewXMPP(b, lab.XMPPOptions{Kind: kind, Fast: true})
			dep := startDeployment(b, srv, func(cfg *daemon.Config) {
				cfg.Log.Level = "warn"
				cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1e9, 1e6
			})
			db, err := pgxpool.New(ctx, dep.dbURL)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			users := publishMany(ctx, b, keydir.NewStore(db), 1000, srv.Domain)
			dev, _ := dep.device(b)
			comp := dep.d.Component().Domain()
			var pings, lookups []time.Duration
			// Warm up both paths (connections, caches) before measuring.
			for i := range 20 {
				dev.Ping(ctx, comp)
				dev.IQ(ctx, stanza.GetIQ, comp, keydirxml.Lookup{JIDs: []string{users[i].String()}}, &keydirxml.Lookup{})
			}
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				if err := dev.Ping(ctx, comp); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				var res keydirxml.Lookup
				if err := dev.IQ(ctx, stanza.GetIQ, comp, keydirxml.Lookup{JIDs: []string{users[rand.IntN(len(users))].String()}}, &res); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				if len(res.Entries) != 1 || res.Entries[0].Status != keydirxml.StatusFound {
					b.Fatalf("lookup = %+v", res)
				}
				pings, lookups = append(pings, t1.Sub(t0)), append(lookups, t2.Sub(t1))
			}
			b.StopTimer()
			var sumL, sumP time.Duration
			for i := range lookups {
				sumL += lookups[i]
				sumP += pings[i]
			}
			b.ReportMetric(float64(len(lookups))/sumL.Seconds(), "lookups/s")
			b.ReportMetric(float64(len(pings))/sumP.Seconds(), "pings/s")
			b.ReportMetric(ms(percentile(lookups, .5)), "lookup-p50-ms")
			b.ReportMetric(ms(percentile(lookups, .99)), "lookup-p99-ms")
			b.ReportMetric(ms(percentile(pings, .5)), "ping-p50-ms")
			b.ReportMetric(ms(percentile(pings, .99)), "ping-p99-ms")
			b.ReportMetric(float64(percentile(lookups, .5))/float64(percentile(pings, .5)), "lookup/ping-p50")
			b.ReportMetric(float64(percentile(lookups, .99))/float64(percentile(pings, .99)), "lookup/ping-p99")
		})
	}
}

// BenchmarkStoreVsPgbench: the store's read path alone (one binding
// lookup by label, then its inclusion proof read and checked), 4 clients
// for 10 s, against `pgbench -S` (primary-key SELECTs) with 4 clients for
// 10 s on a fresh database of the same PostgreSQL server, in the same run.
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

	l := newTestLogB(b)
	users := publishMany(ctx, b, l.store, 1000, "lab.localhost")
	labels := make([][32]byte, len(users))
	for i, u := range users {
		labels[i] = keylog.Label(u)
	}
	size, err := l.store.Size(ctx)
	if err != nil {
		b.Fatal(err)
	}
	root, err := tlog.TreeHash(size, l.store.HashReader(ctx))
	if err != nil {
		b.Fatal(err)
	}
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
					lb := labels[rand.IntN(len(labels))]
					found, size, err := l.store.Lookup(ctx, [][32]byte{lb})
					if err != nil {
						b.Error(err)
						return
					}
					bd := found[lb]
					p, err := tlog.ProveRecord(size, bd.Index, l.store.HashReader(ctx))
					if err != nil || tlog.CheckRecord(p, size, root, bd.Index, tlog.RecordHash(bd.Record().Marshal())) != nil {
						b.Errorf("proof of %d: %v", bd.Index, err)
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
		b.ReportMetric(2, "queries/lookup+proof")
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

	l := newTestLogB(b)
	t1 := time.Now()
	rows := make([][]any, len(hashes))
	for i := range hashes {
		rows[i] = []any{int64(i), hashes[i][:]}
	}
	if _, err := l.db.CopyFrom(ctx, pgx.Identifier{"keydir_hashes"}, []string{"idx", "hash"}, pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	load := time.Since(t1)
	pgr := l.store.HashReader(ctx)

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

// newTestLogB is newTestLog for benchmarks (no HTTP, no signer needed
// beyond the store).
func newTestLogB(b *testing.B) *testLog {
	b.Helper()
	ctx := context.Background()
	db, err := pgxpool.New(ctx, labtest.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	if _, err := migrate.Apply(ctx, db, slog.New(slog.DiscardHandler), keydir.Migrations()); err != nil {
		b.Fatal(err)
	}
	return &testLog{db: db, store: keydir.NewStore(db)}
}
