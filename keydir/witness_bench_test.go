package keydir_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// The cost of witnesses, each against a baseline in the same run:
//
//	go test -run '^$' -bench 'Cosigning|CosignedLookups' -benchtime 300x -timeout 30m ./keydir/

// BenchmarkCosigning: the checkpoint of a new size, signed (and the
// signer's state file written) by a directory without witnesses, and by
// directories with one and with two real litewitness processes, which
// each get an add-checkpoint with the consistency proof from the size
// they cosigned last, verify it, write their SQLite database and sign
// through their ssh-agent; clinkd then verifies each cosignature. One
// entry is appended to every log before each round, untimed. Reports the
// mean time per checkpoint of each and the ratios to the one without.
func BenchmarkCosigning(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	newLog := func(n int) *keydirtest.Log {
		var ws []*lab.Witness
		cfg := keydir.Config{}
		for i := range n {
			w := labtest.NewWitness(b, fmt.Sprintf("w%d.witness.lab.localhost", i+1))
			v, err := keylog.ParseCosignatureVerifier(w.VerifierKey)
			if err != nil {
				b.Fatal(err)
			}
			ws = append(ws, w)
			cfg.Witnesses.Witnesses = append(cfg.Witnesses.Witnesses, keydir.Witness{URL: w.URL, Verifier: v})
		}
		l := keydirtest.New(b, cfg)
		for _, w := range ws {
			if err := w.AddLog(ctx, keydirtest.Origin, l.VKey); err != nil {
				b.Fatal(err)
			}
		}
		return l
	}
	logs := []*keydirtest.Log{newLog(0), newLog(1), newLog(2)}
	n := 0
	grow := func() {
		for _, l := range logs {
			j := keydirtest.MustJID(b, fmt.Sprintf("cosign%d@lab.localhost", n))
			if _, _, err := l.Store.Publish(ctx, j, keydirtest.FakeRSAKey(b, 3072), time.Now()); err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
	// Warm up: connections, the witnesses' first checkpoint.
	for range 5 {
		grow()
		for _, l := range logs {
			if _, _, err := l.Dir.Checkpoint(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	sum := make([]time.Duration, len(logs))
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		grow()
		b.StartTimer()
		for i, l := range logs {
			t0 := time.Now()
			msg, _, err := l.Dir.Checkpoint(ctx)
			sum[i] += time.Since(t0)
			if err != nil {
				b.Fatal(err)
			}
			if _, got := l.Dir.Witnesses(); got != i {
				b.Fatalf("%d cosignatures with %d witnesses:\n%s", got, i, msg)
			}
		}
	}
	b.StopTimer()
	mean := func(i int) float64 { return float64(sum[i].Microseconds()) / float64(b.N) }
	b.ReportMetric(mean(0), "plain-µs/checkpoint")
	b.ReportMetric(mean(1), "1-witness-µs/checkpoint")
	b.ReportMetric(mean(2), "2-witnesses-µs/checkpoint")
	b.ReportMetric(mean(1)/mean(0), "1-witness/plain")
	b.ReportMetric(mean(2)/mean(0), "2-witnesses/plain")
}

// BenchmarkCosignedLookups: one device looks up one JID at a time (a log
// of 10 bindings), verifying every answer, alternately through a clinkd
// whose checkpoints two real witnesses cosign (the device requires both:
// it checks both cosignatures) and through a clinkd without witnesses (a
// device without a policy), on the same private Prosody with its shapers
// off. The log does not grow meanwhile, so the cosigned checkpoint is
// the cached one, as between publishes. Reports lookups per second of
// each and the ratio.
func BenchmarkCosignedLookups(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	srv := labtest.NewXMPP(b, lab.XMPPOptions{Kind: lab.Prosody, Fast: true})
	fast := func(cfg *daemon.Config) {
		cfg.Log.Level = "warn"
		cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1e9, 1e6
	}
	plain := startDeployment(b, srv, fast)
	witnessed := newDeployment(b, srv)
	for i := range 2 {
		w := labtest.NewWitness(b, fmt.Sprintf("w%d.witness.lab.localhost", i+1))
		if err := w.AddLog(ctx, origin, witnessed.vkey); err != nil {
			b.Fatal(err)
		}
		witnessed.witnesses = append(witnessed.witnesses, w)
	}
	witnessed.threshold, witnessed.tune = 2, fast
	witnessed.start(b)

	// Ten users publish through devices on each (every size cosigned,
	// on the witnessed one).
	known := map[*deployment][]string{}
	for _, dep := range []*deployment{plain, witnessed} {
		for range 10 {
			c := clinkdtest.NewDevice(b, srv)
			if _, err := dep.directory(b, c, &client.MemoryPins{}, nil).PublishKey(ctx, rsaKey(b, 3072)); err != nil {
				b.Fatal(err)
			}
			known[dep] = append(known[dep], c.JID().Bare().String())
		}
	}
	_, plainKD := plain.device(b)
	_, witKD := witnessed.witnessedDevice(b, witnessed.policy(2))
	lookup := func(kd *client.KeyDirectory, j string) error {
		_, err := kd.LookupKeys(ctx, j)
		return err
	}
	for i := range 20 {
		if err := lookup(plainKD, known[plain][i%10]); err != nil {
			b.Fatal(err)
		}
		if err := lookup(witKD, known[witnessed][i%10]); err != nil {
			b.Fatal(err)
		}
	}
	var tPlain, tWit time.Duration
	i := 0
	b.ResetTimer()
	for b.Loop() {
		i++
		t0 := time.Now()
		if err := lookup(plainKD, known[plain][i%10]); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := lookup(witKD, known[witnessed][i%10]); err != nil {
			b.Fatal(err)
		}
		tPlain, tWit = tPlain+t1.Sub(t0), tWit+time.Since(t1)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/tPlain.Seconds(), "plain-lookups/s")
	b.ReportMetric(float64(b.N)/tWit.Seconds(), "cosigned-lookups/s")
	b.ReportMetric(tPlain.Seconds()/tWit.Seconds(), "cosigned/plain-rate")
}
