package expiry_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinkme/clinkd/expiry"
)

// BenchmarkSweepPause measures how long the relay stops everything else
// when most of what it holds expires at once and its slab is compacted:
// it holds n messages of about 1 KB for n/10 users, one in forty valid
// for six hours and the rest for a minute (the pinning pattern of
// TestPinnedChunksAreCompacted), moves the clock past the minute and
// wakes the sweep, which drops 39 in 40, compacts the slab and scrubs the
// memory it freed. Meanwhile another goroutine asks the relay how much it
// holds (Relay.Held, which takes the lock every delivery, hold and receipt
// takes) in a loop. Reported: the longest any sweep or compaction step
// held the lock (locked-ms), the longest Held call while the sweep,
// compaction and scrub ran (max-wait-ms: the lock, and the scrub's
// stop-the-world collections), and as the baseline, in the same run, the
// longest Held call while the messages were being held
// (baseline-max-wait-ms); also the time from the wake until the held
// count was the pinned messages' (sweep-ms), the scrub's (scrub-ms), and
// the slab's bytes per pinned message after the compaction.
//
//	go test -run '^$' -bench SweepPause -benchtime 1x ./expiry/
//	go test -run '^$' -bench SweepPause -benchtime 1x ./expiry/ -held1m
func BenchmarkSweepPause(b *testing.B) {
	sizes := []int{100_000}
	if *held1M {
		sizes = append(sizes, 1_000_000)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
			for range b.N {
				sweepPause(b, n)
			}
		})
	}
}

func sweepPause(b *testing.B, n int) {
	const pinEvery = 40
	var clock atomic.Int64
	start := time.Unix(1_800_000_000, 0).UTC()
	clock.Store(start.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	template, expires := timedTemplate(b, start, enhanced)
	short, long := expiresAt(start.Add(time.Minute)), expiresAt(start.Add(6*time.Hour))

	r, router := newRouter(b, expiry.Config{Limits: noQuotas, Now: now}, silent{}, unlimited)
	defer expiry.ReleaseSlab(r)
	ctx := running(b, r)

	// waits records the longest Held call until stop is closed.
	waits := func(stop <-chan struct{}) <-chan time.Duration {
		out := make(chan time.Duration, 1)
		go func() {
			var longest time.Duration
			for {
				select {
				case <-stop:
					out <- longest
					return
				default:
				}
				t0 := time.Now()
				r.Held()
				longest = max(longest, time.Since(t0))
				time.Sleep(100 * time.Microsecond)
			}
		}()
		return out
	}

	stopBase := make(chan struct{})
	base := waits(stopBase)
	users := max(n/10, 1)
	for i := range n {
		to := fmt.Sprintf("u%d@example.org", i%users)
		text := forRecipient(template, fmt.Sprintf("%032x", i), to)
		if i%pinEvery == 0 {
			text = strings.Replace(text, expires, long, 1)
		} else {
			text = strings.Replace(text, expires, short, 1)
		}
		if err := router.HandleMessage(ctx, timedStanza(b, to, text)); err != nil {
			b.Fatalf("message %d refused: %v", i, err)
		}
	}
	close(stopBase)
	baseline := <-base
	pinned := (n + pinEvery - 1) / pinEvery
	if held, _ := r.Held(); held != n {
		b.Fatalf("held %d, want %d", held, n)
	}
	compactions := expiry.Compactions(r)

	b.ResetTimer()
	stop := make(chan struct{})
	during := waits(stop)
	time.Sleep(10 * time.Millisecond) // the prober is running
	t0 := time.Now()
	clock.Add(int64(2 * time.Minute))
	expiry.Wake(r)
	for {
		if held, _ := r.Held(); held == pinned {
			break
		}
		time.Sleep(time.Millisecond)
	}
	sweep := time.Since(t0)
	// Then the sweep compacts the slab and scrubs the memory it freed
	// (at most every 30 s, without the lock; this is the first), and the
	// prober goes on until both are done.
	deadline := time.Now().Add(time.Minute)
	locked, scrub := expiry.LastSweep(r)
	for scrub == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		locked, scrub = expiry.LastSweep(r)
	}
	close(stop)
	longest := <-during
	b.StopTimer()
	if got := expiry.Compactions(r); got == compactions {
		b.Fatalf("the sweep did not compact the slab (compactions %d)", got)
	}
	b.ReportMetric(float64(locked.Microseconds())/1000, "locked-ms")
	b.ReportMetric(float64(scrub.Microseconds())/1000, "scrub-ms")
	b.ReportMetric(float64(longest.Microseconds())/1000, "max-wait-ms")
	b.ReportMetric(float64(sweep.Microseconds())/1000, "sweep-ms")
	b.ReportMetric(float64(baseline.Microseconds())/1000, "baseline-max-wait-ms")
	b.ReportMetric(float64(r.SlabUsed())/float64(pinned), "slab-B/pinned-msg")
}
