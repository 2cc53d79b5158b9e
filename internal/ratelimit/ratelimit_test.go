package ratelimit_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/clinkme/clinkd/internal/ratelimit"
)

func TestBurstThenRate(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(2, 3, 10)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if !l.AllowN("a", now, 1) {
			t.Fatalf("event %d of the burst refused", i)
		}
	}
	if l.AllowN("a", now, 1) {
		t.Fatal("event past the burst allowed")
	}
	if !l.AllowN("b", now, 1) {
		t.Fatal("another key shares a's bucket")
	}
	if !l.AllowN("a", now.Add(500*time.Millisecond), 1) {
		t.Fatal("a token did not refill after 1/rate")
	}
}

func TestBoundedKeys(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(1, 1, 100)
	now := time.Unix(1000, 0)
	for i := range 10000 {
		l.AllowN(fmt.Sprint(i), now, 1)
	}
	if n := l.Len(); n != 100 {
		t.Fatalf("Len = %d, want 100", n)
	}
}

// TestEvictsLeastRecentlyUsed: at the cap, the key evicted is the one
// used longest ago, not a key in active use, so a requester who is being
// limited stays limited while others come and go.
func TestEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(1.0/3600, 1, 3)
	now := time.Unix(1000, 0)
	for _, k := range []string{"attacker", "b", "c"} {
		l.AllowN(k, now, 1) // each bucket is now empty
	}
	// The attacker keeps trying (and stays the most recently used)...
	for i := range 10 {
		now = now.Add(time.Second)
		if l.AllowN("attacker", now, 1) {
			t.Fatalf("attempt %d of the limited key allowed", i)
		}
		// ...while new keys push the others out.
		l.AllowN(fmt.Sprint("new", i), now, 1)
	}
	if l.AllowN("attacker", now, 1) {
		t.Fatal("the limited key was evicted while in use: its bucket came back full")
	}
	if l.Len() != 3 {
		t.Fatalf("Len = %d, want 3", l.Len())
	}
}

// TestForgetsRefilled: buckets idle long enough to be full again are
// dropped as new keys arrive, well before the cap.
func TestForgetsRefilled(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(1, 2, 1000) // refills in 2 s
	now := time.Unix(1000, 0)
	for i := range 100 {
		l.AllowN(fmt.Sprint("old", i), now, 1)
	}
	later := now.Add(time.Minute)
	for i := range 60 {
		l.AllowN(fmt.Sprint("new", i), later, 1)
	}
	// Each new key drops up to two refilled ones: 100 old keys are gone
	// after 50 new ones.
	if n := l.Len(); n != 60 {
		t.Fatalf("Len = %d, want the 60 keys in use", n)
	}
}

func TestPeek(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(1.0/60, 2, 10)
	now := time.Unix(1000, 0)
	if !l.Peek("a", now) {
		t.Fatal("Peek on an unknown key = false, want true (a fresh bucket is full)")
	}
	for range 5 {
		l.Peek("a", now) // takes nothing
	}
	if !l.AllowN("a", now, 1) || !l.AllowN("a", now, 1) {
		t.Fatal("Peek took tokens")
	}
	if l.Peek("a", now) {
		t.Fatal("Peek on an empty bucket = true")
	}
	if !l.Peek("a", now.Add(time.Minute)) {
		t.Fatal("Peek after a refill = false")
	}
}

func TestUnlimited(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(0, 1, 1)
	for range 1000 {
		if !l.Allow("a") || !l.Peek("a", time.Now()) {
			t.Fatal("refused with no limit")
		}
	}
}

func TestConcurrent(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(100, 10, 50)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				l.Allow(fmt.Sprint(g, "-", i%80))
				l.Peek(fmt.Sprint(i%80), time.Now())
			}
		})
	}
	wg.Wait()
	if n := l.Len(); n > 50 {
		t.Fatalf("Len = %d, want ≤ 50", n)
	}
}

// scanLimiter is the eviction clinkd used before (kept here as the
// benchmark's baseline): at the cap, every new key scanned the whole map
// for refilled buckets, under the lock.
type scanLimiter struct {
	limit   rate.Limit
	burst   int
	maxKeys int
	refill  time.Duration
	mu      sync.Mutex
	buckets map[string]*scanBucket
}

type scanBucket struct {
	lim  *rate.Limiter
	last time.Time
}

func newScan(perSecond float64, burst, maxKeys int) *scanLimiter {
	return &scanLimiter{limit: rate.Limit(perSecond), burst: burst, maxKeys: maxKeys,
		refill:  time.Duration(float64(burst) / perSecond * float64(time.Second)),
		buckets: make(map[string]*scanBucket)}
}

func (l *scanLimiter) AllowN(key string, now time.Time, n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.maxKeys {
			for k, b := range l.buckets {
				if now.Sub(b.last) >= l.refill {
					delete(l.buckets, k)
				}
			}
			if len(l.buckets) >= l.maxKeys {
				for k := range l.buckets {
					delete(l.buckets, k)
					break
				}
			}
		}
		b = &scanBucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[key] = b
	}
	b.last = now
	return b.lim.AllowN(now, n)
}

// BenchmarkEviction measures a new key arriving when the limiter holds
// keys (100,000, clinkd's cap for login addresses) that are all fresh,
// which is what an attacker with many addresses produces: each new key
// evicts one. The baseline, the map scan clinkd used before, runs in the
// same benchmark; old/new is the speed-up.
//
//	go test -run '^$' -bench Eviction -benchtime 200x ./internal/ratelimit/
func BenchmarkEviction(b *testing.B) {
	for _, keys := range []int{100_000, 400_000} {
		b.Run(fmt.Sprint(keys, "keys"), func(b *testing.B) {
			now := time.Unix(1000, 0)
			fresh := ratelimit.New(20.0/60, 10, keys)
			old := newScan(20.0/60, 10, keys)
			for i := range keys {
				k := fmt.Sprint("fill", i)
				fresh.AllowN(k, now, 1)
				old.AllowN(k, now, 1)
			}
			names := make([]string, b.N)
			for i := range names {
				names[i] = fmt.Sprint("new", i)
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				old.AllowN(names[i], now, 1)
			}
			oldNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			start = time.Now()
			for i := range b.N {
				fresh.AllowN(names[i], now, 1)
			}
			newNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			b.StopTimer()
			b.ReportMetric(oldNs, "scan-ns/key")
			b.ReportMetric(newNs, "lru-ns/key")
			b.ReportMetric(oldNs/newNs, "speedup")
		})
	}
}
