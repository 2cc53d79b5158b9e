package bench_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// stats summarises one measured phase.
type stats struct {
	n        int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (s stats) perSecond() float64 { return float64(s.n) / s.elapsed.Seconds() }

// run calls op total times spread over the workers, each worker doing its
// share sequentially, and records every call's latency.
func run(ctx context.Context, tb testing.TB, workers, total int, op func(ctx context.Context, worker int) error) stats {
	tb.Helper()
	lat, elapsed := measure(ctx, tb, workers, total, op)
	return summarize(lat, elapsed)
}

// runChunked is run in chunks of at most chunk calls with a pause between
// them that is not counted, for servers that free resources only some
// time after they are released.
func runChunked(ctx context.Context, tb testing.TB, workers, total, chunk int, pause time.Duration, op func(ctx context.Context, worker int) error) stats {
	tb.Helper()
	var all []time.Duration
	var elapsed time.Duration
	for done := 0; done < total; done += chunk {
		if done > 0 {
			time.Sleep(pause)
		}
		lat, e := measure(ctx, tb, workers, min(chunk, total-done), op)
		all = append(all, lat...)
		elapsed += e
	}
	return summarize(all, elapsed)
}

func measure(ctx context.Context, tb testing.TB, workers, total int, op func(ctx context.Context, worker int) error) ([]time.Duration, time.Duration) {
	tb.Helper()
	lat := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		share := total / workers
		if w < total%workers {
			share++
		}
		wg.Go(func() {
			l := make([]time.Duration, 0, share)
			for range share {
				t0 := time.Now()
				if err := op(ctx, w); err != nil {
					errs <- err
					return
				}
				l = append(l, time.Since(t0))
			}
			lat[w] = l
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	return all, elapsed
}

func summarize(all []time.Duration, elapsed time.Duration) stats {
	slices.Sort(all)
	q := func(p float64) time.Duration { return all[min(len(all)-1, int(p*float64(len(all))))] }
	return stats{n: len(all), elapsed: elapsed, p50: q(0.50), p99: q(0.99)}
}

// report publishes a measured phase and its baseline, and their ratios.
func report(b *testing.B, name string, got stats, baseName string, base stats) {
	b.ReportMetric(got.perSecond(), name+"/s")
	b.ReportMetric(float64(got.p50.Microseconds()), name+"-p50-µs")
	b.ReportMetric(float64(got.p99.Microseconds()), name+"-p99-µs")
	b.ReportMetric(base.perSecond(), baseName+"/s")
	b.ReportMetric(float64(base.p50.Microseconds()), baseName+"-p50-µs")
	b.ReportMetric(float64(base.p99.Microseconds()), baseName+"-p99-µs")
	b.ReportMetric(got.perSecond()/base.perSecond(), "throughput-ratio")
	b.ReportMetric(float64(got.p50)/float64(base.p50), "p50-ratio")
	b.ReportMetric(float64(got.p99)/float64(base.p99), "p99-ratio")
	b.Logf("%s: %.0f/s p50 %v p99 %v | %s: %.0f/s p50 %v p99 %v | throughput ratio %.2f, p50 ratio %.2f, p99 ratio %.2f",
		name, got.perSecond(), got.p50, got.p99, baseName, base.perSecond(), base.p50, base.p99,
		got.perSecond()/base.perSecond(), float64(got.p50)/float64(base.p50), float64(got.p99)/float64(base.p99))
}
