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
// to the XMPP server (the baseline: what the device and the server spend
// on a round trip), pings to clinkd, and v1 lookups of one JID in a log of
// 1,000 bindings (as BenchmarkLookupVsPing).
//
// CPU time is utime+stime from /proc/<pid>/stat, of the XMPP server's
// processes, of the lab's PostgreSQL when it is a private one (unset
// CLINK_TEST_DATABASE_URL), and of this process, which runs clinkd and the
// device. clinkd's CPU per ping is this process's CPU per clinkd ping less
// its CPU per server ping; per lookup, its CPU per lookup less the same.
// The device decodes a lookup's larger answer (it verifies nothing here),
// so clinkd's share of a lookup is slightly overstated.
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
			dep := startDeploymentWith(b, srv, func(cfg *daemon.Config) {
				cfg.Log.Level = "warn"
				cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1e9, 1e6
			}, nil)
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
			dev, _ := dep.device(b)
			comp := dep.d.Component().Domain()
			server := jid.MustParse(srv.Domain)
			lookup := func() error {
				u := users[rand.IntN(len(users))]
				var res keydirxml.Lookup1
				if err := dev.IQ(ctx, stanza.GetIQ, comp, keydirxml.Lookup1{JIDs: []string{u.String()}}, &res); err != nil {
					return err
				}
				if len(res.Entries) != 1 || res.Entries[0].Status != keydirxml.StatusFound {
					return fmt.Errorf("lookup = %+v", res)
				}
				return nil
			}
			ping := func(to jid.JID) func() error { return func() error { return dev.Ping(ctx, to) } }
			type sample struct {
				self         time.Duration
				server, pgsq map[int]time.Duration
			}
			read := func() sample {
				runtime.GC() // a phase's garbage is collected in the phase
				self, err := lab.CPUTime(0)
				if err != nil {
					b.Fatal(err)
				}
				s := sample{self: self, server: lab.CPUTimes(srv.PIDs())}
				if pg != nil {
					s.pgsq = lab.CPUTimes(pg.PIDs())
				}
				return s
			}
			n := max(b.N, 100)
			type cost struct{ self, server, pgsq float64 } // µs per request
			phase := func(op func() error) cost {
				a := read()
				for range n {
					if err := op(); err != nil {
						b.Fatal(err)
					}
				}
				z := read()
				per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
				return cost{per(z.self - a.self), per(lab.CPUSince(a.server, z.server)), per(lab.CPUSince(a.pgsq, z.pgsq))}
			}
			for range 20 { // warm every path: connections, caches, the map
				for _, op := range []func() error{ping(server), ping(comp), lookup} {
					if err := op(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ResetTimer()
			base, pings, lookups := phase(ping(server)), phase(ping(comp)), phase(lookup)
			b.StopTimer()
			perPing, perLookup := pings.self-base.self, lookups.self-base.self
			b.ReportMetric(perPing, "clinkd-cpu-µs/ping")
			b.ReportMetric(perLookup, "clinkd-cpu-µs/lookup")
			b.ReportMetric(perLookup/perPing, "clinkd-lookup/ping")
			b.ReportMetric(lookups.server, "server-cpu-µs/lookup")
			b.ReportMetric(pings.server, "server-cpu-µs/ping")
			if pg != nil {
				b.ReportMetric(lookups.pgsq, "pg-cpu-µs/lookup")
			}
			b.Logf("%s, %d of each, load average %s; CPU µs per request: server ping: device %.0f, server %.0f | clinkd ping: clinkd %.0f, server %.0f | lookup: clinkd %.0f, server %.0f, postgres %.0f",
				kind, n, loadAverage(), base.self, base.server, perPing, pings.server, perLookup, lookups.server, lookups.pgsq)
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
