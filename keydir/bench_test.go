package keydir_test

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// Every benchmark here reports against a baseline measured in the same
// run, never alone:
//
//	go test -run '^$' -bench LookupVsPing -benchtime 2000x -timeout 30m ./keydir/
//
// (The store alone is measured by keydir/logdb's benchmarks.)
//
// Nothing asserts on timing.

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
			store, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			users := keydirtest.PublishMany(ctx, b, store, 1000, srv.Domain)
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
