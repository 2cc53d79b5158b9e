package keydir_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// BenchmarkLookupCPU splits the CPU time of key lookups between the
// processes that spend it, in the same run on each server, in three
// phases of b.N requests from one device, one in flight: XEP-0199 pings
// to the XMPP server (what the device and the server spend on a round
// trip), pings to clinkd (the baseline of clinkd's share: a request it
// answers without work), v1 lookups of one JID in a log of 1,000
// bindings (as BenchmarkLookupVsPing), and conditional lookups of one
// JID the device holds at the log's size, answered "unchanged". The
// phases take turns in ten rounds.
//
// CPU time is utime+stime from /proc/<pid>/stat, of the XMPP server's
// processes, of the lab's PostgreSQL when it is a private one (unset
// CLINK_TEST_DATABASE_URL), of clinkd, which runs in a process of its own
// (the cmd/clinkd binary, clinkdtest.StartProcess), and of this process,
// which runs the device. Reported per request: clinkd's CPU per lookup and
// per ping to it and their ratio (issue 15's target: ≤ 1.5), the server's
// and PostgreSQL's per lookup, the lookup/ping throughput ratio (target
// ≥ 0.8), the most that ratio could be if clinkd spent on a lookup
// only what it spends on a ping (throughput-cap-clinkd-at-ping), the most
// it could be if the device did too (throughput-cap-server-only: the XMPP
// server's CPU on the larger answer alone), and the
// two ratios for conditional lookups (clinkd-lookup-known/ping,
// lookup-known/ping-throughput).
//
//	go test -run '^$' -bench LookupCPU -benchtime 2000x -timeout 30m ./keydir/
func BenchmarkLookupCPU(b *testing.B) {
	for _, kind := range lab.Kinds() {
		b.Run(string(kind), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			var pg *lab.Postgres
			if os.Getenv("CLINK_TEST_DATABASE_URL") == "" {
				pg = labtest.Postgres(b)
			}
			srv := labtest.NewXMPP(b, lab.XMPPOptions{Kind: kind, Fast: true})
			dep := newDeployment(b, srv)
			dep.tune = func(cfg *daemon.Config) {
				cfg.Log.Level = "warn"
				cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1e9, 1e6
			}
			cfg := dep.config(b)
			proc := clinkdtest.StartProcess(b, cfg)
			db, err := pgxpool.New(ctx, dep.dbURL)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			vrf, err := keylog.LoadVRFSigner(dep.vrfFile)
			if err != nil {
				b.Fatal(err)
			}
			store, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler), VRF: vrf})
			if err != nil {
				b.Fatal(err)
			}
			users := keydirtest.PublishMany(ctx, b, store, 1000, srv.Domain)
			dev := clinkdtest.NewDevice(b, srv)
			comp := jid.MustParse(cfg.Link.Domain)
			server := jid.MustParse(srv.Domain)
			lookupOf := func(u jid.JID) error {
				var res keydirxml.Lookup1
				if err := dev.IQ(ctx, stanza.GetIQ, comp, keydirxml.Lookup1{JIDs: []string{u.String()}}, &res); err != nil {
					return err
				}
				if len(res.Entries) != 1 || res.Entries[0].Status != keydirxml.StatusFound {
					return fmt.Errorf("lookup = %+v", res)
				}
				return nil
			}
			lookup := func() error { return lookupOf(users[rand.IntN(len(users))]) }
			size, err := store.Size(ctx)
			if err != nil {
				b.Fatal(err)
			}
			// A conditional lookup of a JID the device holds at the
			// log's size (what a device sends before each message while
			// the log does not grow): answered "unchanged".
			lookupKnown := func() error {
				var res keydirxml.Lookup1
				u := users[rand.IntN(len(users))]
				if err := dev.IQ(ctx, stanza.GetIQ, comp, keydirxml.Lookup1{Known: size, JIDs: []string{u.String()}}, &res); err != nil {
					return err
				}
				if res.Unchanged != size {
					return fmt.Errorf("lookup known %d = %+v", size, res)
				}
				return nil
			}
			ping := func(to jid.JID) func() error { return func() error { return dev.Ping(ctx, to) } }
			type sample struct {
				at           time.Time
				self, clinkd time.Duration
				server, pgsq map[int]time.Duration
			}
			read := func() sample {
				runtime.GC() // the device's garbage is collected in the phase
				self, err := lab.CPUTime(0)
				if err != nil {
					b.Fatal(err)
				}
				clinkd, err := lab.CPUTime(proc.PID())
				if err != nil {
					b.Fatal(err)
				}
				s := sample{at: time.Now(), self: self, clinkd: clinkd, server: lab.CPUTimes(srv.PIDs())}
				if pg != nil {
					s.pgsq = lab.CPUTimes(pg.PIDs())
				}
				return s
			}
			// The phases take turns, n/rounds requests each per round, so
			// that the machine's speed, which drifts over a run of
			// minutes, weighs on every phase alike.
			const rounds = 10
			n := max(b.N, 100) / rounds * rounds
			type cost struct{ self, clinkd, server, pgsq, rate float64 } // µs per request; requests/s
			type spent struct{ self, clinkd, server, pgsq, wall time.Duration }
			phases := func(ops ...func() error) []cost {
				total := make([]spent, len(ops))
				for range rounds {
					for i, op := range ops {
						a := read()
						for range n / rounds {
							if err := op(); err != nil {
								b.Fatal(err)
							}
						}
						z := read()
						t := &total[i]
						t.self += z.self - a.self
						t.clinkd += z.clinkd - a.clinkd
						t.server += lab.CPUSince(a.server, z.server)
						t.pgsq += lab.CPUSince(a.pgsq, z.pgsq)
						t.wall += z.at.Sub(a.at)
					}
				}
				per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
				out := make([]cost, len(ops))
				for i, t := range total {
					out[i] = cost{per(t.self), per(t.clinkd), per(t.server), per(t.pgsq), float64(n) / t.wall.Seconds()}
				}
				return out
			}
			// Warm every path: connections, the map, and what clinkd keeps
			// per JID (its VRF proof, records, keys and hashes), so that
			// the phases measure the steady state. The first lookup of a
			// JID in a clinkd's life costs a VRF proof more
			// (docs/keydir.md, "Performance").
			for range 20 {
				for _, op := range []func() error{ping(server), ping(comp)} {
					if err := op(); err != nil {
						b.Fatal(err)
					}
				}
			}
			for _, u := range users {
				if err := lookupOf(u); err != nil {
					b.Fatal(err)
				}
			}
			metric := func(name string) float64 {
				v, err := proc.Metric(ctx, name)
				if err != nil {
					b.Fatal(err)
				}
				return v
			}
			b.ResetTimer()
			reads := metric("clinkd_keydir_size_row_reads_total")
			costs := phases(ping(server), ping(comp), lookup, lookupKnown)
			reads = metric("clinkd_keydir_size_row_reads_total") - reads
			b.StopTimer()
			base, pings, lookups, known := costs[0], costs[1], costs[2], costs[3]
			// Under the size lease a lookup of a JID kept reads nothing,
			// in full or conditional (docs/keydir.md, "Size leases").
			b.ReportMetric(reads/float64(2*n), "size-row-reads/lookup")
			b.ReportMetric(pings.clinkd, "clinkd-cpu-µs/ping")
			b.ReportMetric(lookups.clinkd, "clinkd-cpu-µs/lookup")
			b.ReportMetric(lookups.clinkd/pings.clinkd, "clinkd-lookup/ping")
			b.ReportMetric(lookups.server, "server-cpu-µs/lookup")
			b.ReportMetric(pings.server, "server-cpu-µs/ping")
			b.ReportMetric(lookups.rate/pings.rate, "lookup/ping-throughput")
			// One request in flight: its time is the CPU of every process
			// on its way, one after the other, plus their wake-ups. Had
			// clinkd spent on a lookup what it spends on a ping, the
			// throughput ratio could be at most this: the device's, the
			// server's and PostgreSQL's share of a lookup (the answer is
			// larger: proofs, key, checkpoint) bounds it, whatever
			// clinkd costs.
			b.ReportMetric((pings.self+pings.clinkd+pings.server)/(lookups.self+pings.clinkd+lookups.server+lookups.pgsq), "throughput-cap-clinkd-at-ping")
			// Had the device too spent on a lookup only what it spends on
			// a ping, the XMPP server's share alone, carrying the larger
			// answer, would bound the ratio at this.
			b.ReportMetric((pings.self+pings.clinkd+pings.server)/(pings.self+pings.clinkd+lookups.server), "throughput-cap-server-only")
			// Conditional lookups answered "unchanged" (docs/protocol.md,
			// "Conditional lookups").
			b.ReportMetric(known.clinkd/pings.clinkd, "clinkd-lookup-known/ping")
			b.ReportMetric(known.rate/pings.rate, "lookup-known/ping-throughput")
			if pg != nil {
				b.ReportMetric(lookups.pgsq, "pg-cpu-µs/lookup")
			}
			b.Logf("%s, %d of each, load average %s; CPU µs per request: server ping: device %.0f, server %.0f (%.0f/s) | clinkd ping: device %.0f, clinkd %.0f, server %.0f (%.0f/s) | lookup: device %.0f, clinkd %.0f, server %.0f, postgres %.0f (%.0f/s)",
				kind, n, loadAverage(), base.self, base.server, base.rate, pings.self, pings.clinkd, pings.server, pings.rate,
				lookups.self, lookups.clinkd, lookups.server, lookups.pgsq, lookups.rate)
			b.Logf("%s: lookup known (answered \"unchanged\"): device %.0f, clinkd %.0f, server %.0f, postgres %.0f (%.0f/s)",
				kind, known.self, known.clinkd, known.server, known.pgsq, known.rate)
		})
	}
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}
