package keydir_test

import (
	"context"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// Every benchmark here reports against a baseline measured in the same
// run, never alone:
//
//	go test -run '^$' -bench LookupVsPing -benchtime 2000x -timeout 30m ./keydir/
//
// (The store alone is measured by keydir/logdb's benchmarks, the device's
// verification by client's, the map by keylog's.)
//
// Nothing asserts on timing.

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// inclusionLookup is the request of the baseline handler below.
type inclusionLookup struct {
	XMLName xml.Name `xml:"urn:clinkme:bench:inclusion lookup"`
	JIDs    []string `xml:"jid"`
}

// inclusionOnly is what a lookup cost before v1, as a handler on the same
// component: the binding and the log size in one statement, the signed
// checkpoint (cached), the entry's inclusion proof read and checked, the
// answer in v0's shape. No VRF, no map, no head: no freshness.
func inclusionOnly(d *daemon.Daemon, store *logdb.Store, db *pgxpool.Pool) component.IQHandlerFunc {
	return func(ctx context.Context, iq *component.Stanza) (any, error) {
		var req inclusionLookup
		if err := iq.Decode(xml.Name{Space: "urn:clinkme:bench:inclusion", Local: "lookup"}, &req); err != nil {
			return nil, err
		}
		j, err := keylog.ParseBareJID(req.JIDs[0])
		if err != nil {
			return nil, err
		}
		l := keylog.Label(j)
		var (
			size, idx int64
			fp, key   []byte
			rec       []byte
		)
		if err := db.QueryRow(ctx, `SELECT t.size, b.idx, b.fingerprint, b.public_key, e.record FROM keydir_tree t
			JOIN keydir_bindings b ON b.label = $1 JOIN keydir_entries e ON e.idx = b.idx`, l[:]).Scan(&size, &idx, &fp, &key, &rec); err != nil {
			return nil, err
		}
		msg, cp, err := d.KeyDir().Checkpoint(ctx)
		if err != nil {
			return nil, err
		}
		p, err := tlog.ProveRecord(cp.Size, idx, store.HashReader(ctx))
		if err != nil {
			return nil, err
		}
		if err := tlog.CheckRecord(p, cp.Size, cp.Hash, idx, tlog.RecordHash(rec)); err != nil {
			return nil, err
		}
		return keydirxml.Lookup{Checkpoint: string(msg), Entries: []keydirxml.Entry{{JID: j.String(), Status: keydirxml.StatusFound,
			Index: idx, Fingerprint: hex.EncodeToString(fp), Key: fmt.Sprintf("%x", key[:8]), Proof: keydirxml.NewProof(p)}}}, nil
	}
}

// BenchmarkLookupVsPing: one device, one request in flight, alternating
// an XEP-0199 ping to the component (the link's ceiling: client → server
// → clinkd → server → client with no work), a v1 lookup of one JID (a log
// of 1,000 bindings; the answer carries key, VRF, map and head proofs and
// the signed checkpoint) and the inclusion-only lookup of before v1
// through the same server and component (the baseline handler above).
// Private servers with their shapers off (lab Fast), so the numbers are
// clinkd's, not the c2s rate limit's. Reports p50/p99 and rates of all
// three and the ratios. The device-side verification cost is
// client.BenchmarkVerifyLookupV1's.
func BenchmarkLookupVsPing(b *testing.B) {
	for _, kind := range lab.Kinds() {
		b.Run(string(kind), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			srv := labtest.NewXMPP(b, lab.XMPPOptions{Kind: kind, Fast: true})
			var (
				dep   *deployment
				db    *pgxpool.Pool
				store *logdb.Store
			)
			dep = startDeploymentWith(b, srv, func(cfg *daemon.Config) {
				cfg.Log.Level = "warn"
				cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1e9, 1e6
			}, func(d *daemon.Daemon) {
				d.Component().HandleIQ(xml.Name{Space: "urn:clinkme:bench:inclusion", Local: "lookup"}, component.IQHandlerFunc(func(ctx context.Context, iq *component.Stanza) (any, error) {
					return inclusionOnly(d, store, db)(ctx, iq)
				}))
			})
			db, err := pgxpool.New(ctx, dep.dbURL)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			vrf, err := keylog.LoadVRFSigner(dep.vrfFile)
			if err != nil {
				b.Fatal(err)
			}
			if store, err = logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler), VRF: vrf}); err != nil {
				b.Fatal(err)
			}
			users := keydirtest.PublishMany(ctx, b, store, 1000, srv.Domain)
			dev, _ := dep.device(b)
			comp := dep.d.Component().Domain()
			lookup := func(u jid.JID) error {
				var res keydirxml.Lookup1
				if err := dev.IQ(ctx, stanza.GetIQ, comp, keydirxml.Lookup1{JIDs: []string{u.String()}}, &res); err != nil {
					return err
				}
				if len(res.Entries) != 1 || res.Entries[0].Status != keydirxml.StatusFound {
					return fmt.Errorf("lookup = %+v", res)
				}
				return nil
			}
			inclusion := func(u jid.JID) error {
				var res keydirxml.Lookup
				return dev.IQ(ctx, stanza.GetIQ, comp, inclusionLookup{JIDs: []string{u.String()}}, &res)
			}
			// Warm up every path (connections, caches, the map) first.
			for i := range 20 {
				dev.Ping(ctx, comp)
				if err := lookup(users[i]); err != nil {
					b.Fatal(err)
				}
				if err := inclusion(users[i]); err != nil {
					b.Fatal(err)
				}
			}
			var pings, lookups, incls []time.Duration
			b.ResetTimer()
			for b.Loop() {
				u := users[rand.IntN(len(users))]
				t0 := time.Now()
				if err := dev.Ping(ctx, comp); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := lookup(u); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				if err := inclusion(u); err != nil {
					b.Fatal(err)
				}
				t3 := time.Now()
				pings, lookups, incls = append(pings, t1.Sub(t0)), append(lookups, t2.Sub(t1)), append(incls, t3.Sub(t2))
			}
			b.StopTimer()
			rate := func(d []time.Duration) float64 {
				var sum time.Duration
				for _, x := range d {
					sum += x
				}
				return float64(len(d)) / sum.Seconds()
			}
			b.ReportMetric(rate(lookups), "lookups/s")
			b.ReportMetric(rate(incls), "inclusion-only/s")
			b.ReportMetric(rate(pings), "pings/s")
			b.ReportMetric(ms(percentile(lookups, .5)), "lookup-p50-ms")
			b.ReportMetric(ms(percentile(lookups, .99)), "lookup-p99-ms")
			b.ReportMetric(ms(percentile(incls, .5)), "inclusion-p50-ms")
			b.ReportMetric(ms(percentile(incls, .99)), "inclusion-p99-ms")
			b.ReportMetric(ms(percentile(pings, .5)), "ping-p50-ms")
			b.ReportMetric(ms(percentile(pings, .99)), "ping-p99-ms")
			b.ReportMetric(float64(percentile(lookups, .5))/float64(percentile(incls, .5)), "lookup/inclusion-p50")
			b.ReportMetric(float64(percentile(lookups, .99))/float64(percentile(incls, .99)), "lookup/inclusion-p99")
			b.ReportMetric(float64(percentile(lookups, .5))/float64(percentile(pings, .5)), "lookup/ping-p50")
			b.ReportMetric(float64(percentile(lookups, .99))/float64(percentile(pings, .99)), "lookup/ping-p99")
		})
	}
}
