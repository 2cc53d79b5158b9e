// Package ratelimit keeps one token bucket per key (a requester's bare JID,
// an account, an IP address) in bounded memory.
//
// Buckets are golang.org/x/time/rate limiters. The number of keys is capped:
// when the cap is reached, buckets idle long enough to have refilled are
// dropped (forgetting them changes nothing), and if none is, an arbitrary
// one is, which can only make the limiter more lenient for that one key,
// never let memory grow.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// A Limiter is a set of token buckets sharing one rate and burst.
type Limiter struct {
	limit   rate.Limit
	burst   int
	maxKeys int
	refill  time.Duration // time for an empty bucket to become full

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// New returns a limiter allowing perSecond events per key on average, with
// bursts of burst, for at most maxKeys keys at once. perSecond ≤ 0 means no
// limit at all.
func New(perSecond float64, burst, maxKeys int) *Limiter {
	l := &Limiter{limit: rate.Limit(perSecond), burst: max(burst, 1), maxKeys: max(maxKeys, 1), buckets: make(map[string]*bucket)}
	if perSecond > 0 {
		l.refill = time.Duration(float64(l.burst) / perSecond * float64(time.Second))
	}
	return l
}

// Allow takes one token from key's bucket and reports whether there was
// one.
func (l *Limiter) Allow(key string) bool { return l.AllowN(key, time.Now(), 1) }

// AllowN takes n tokens from key's bucket at time now.
func (l *Limiter) AllowN(key string, now time.Time, n int) bool {
	if l.limit <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.maxKeys {
			l.evict(now)
		}
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[key] = b
	}
	b.last = now
	return b.lim.AllowN(now, n)
}

// evict makes room for one key. Called with mu held.
func (l *Limiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if now.Sub(b.last) >= l.refill {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) < l.maxKeys {
		return
	}
	for k := range l.buckets {
		delete(l.buckets, k)
		return
	}
}

// Len returns the number of keys held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
