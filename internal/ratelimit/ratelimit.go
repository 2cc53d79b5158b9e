// Package ratelimit keeps one token bucket per key (a requester's bare JID,
// an account, an IP address or network) in bounded memory.
//
// Buckets are golang.org/x/time/rate limiters, kept in a map and in a list
// ordered by last use, so every operation costs O(1) whatever the number
// of keys. The number of keys is capped: a new key past the cap evicts the
// least recently used one. A bucket idle long enough to have refilled is
// forgotten at no cost (a fresh bucket is the same); evicting one that has
// not refilled can only make the limiter more lenient for that one key,
// never let memory grow. Each new key also drops up to two refilled
// buckets from the cold end, so idle keys do not sit in memory until the
// cap is reached.
package ratelimit

import (
	"container/list"
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
	buckets map[string]*list.Element // of *bucket
	lru     list.List                // front: most recently used
}

type bucket struct {
	key  string
	lim  *rate.Limiter
	last time.Time
}

// New returns a limiter allowing perSecond events per key on average, with
// bursts of burst, for at most maxKeys keys at once. perSecond ≤ 0 means no
// limit at all.
func New(perSecond float64, burst, maxKeys int) *Limiter {
	l := &Limiter{limit: rate.Limit(perSecond), burst: max(burst, 1), maxKeys: max(maxKeys, 1), buckets: make(map[string]*list.Element)}
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
	return l.get(key, now).lim.AllowN(now, n)
}

// Peek reports whether key's bucket holds a token at time now, without
// taking it. Callers that count only failures (wrong secrets) ask Peek
// before the check and Allow after a failure, so that a requester who is
// limited learns nothing from a right answer either.
func (l *Limiter) Peek(key string, now time.Time) bool {
	if l.limit <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.buckets[key]
	if !ok {
		return true // a fresh bucket is full
	}
	return e.Value.(*bucket).lim.TokensAt(now) >= 1
}

// get returns key's bucket, marked used at now, creating it (and evicting
// the least recently used bucket if the cap is reached). Called with mu
// held; O(1).
func (l *Limiter) get(key string, now time.Time) *bucket {
	if e, ok := l.buckets[key]; ok {
		b := e.Value.(*bucket)
		if now.After(b.last) {
			b.last = now
		}
		l.lru.MoveToFront(e)
		return b
	}
	// Forget up to two buckets that have refilled: amortised cleanup, so
	// memory follows the keys in use rather than the cap.
	for range 2 {
		back := l.lru.Back()
		if back == nil || now.Sub(back.Value.(*bucket).last) < l.refill {
			break
		}
		l.remove(back)
	}
	if len(l.buckets) >= l.maxKeys {
		l.remove(l.lru.Back())
	}
	b := &bucket{key: key, lim: rate.NewLimiter(l.limit, l.burst), last: now}
	l.buckets[key] = l.lru.PushFront(b)
	return b
}

func (l *Limiter) remove(e *list.Element) {
	delete(l.buckets, e.Value.(*bucket).key)
	l.lru.Remove(e)
}

// Len returns the number of keys held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
