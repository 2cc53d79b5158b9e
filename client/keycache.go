package client

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// The sender keys a device has verified, cached.
//
// A device needs the key of the author of every envelope it receives.
// Asking the directory each time spent the device's own lookup budget
// (the directory rate-limits lookups per requester, docs/config.md), so a
// flood of junk from one account made the directory refuse the device's
// lookups for everyone, and real messages were dropped with them. The
// cache keeps each verified answer, a key or "no key bound", and a miss is
// one lookup per sender, shared by every envelope that needs it meanwhile.
//
// How long an answer is trusted:
//
//   - A key is used while its pin (PinStore) still names it and for at most
//     keyCacheTTL after the lookup that verified it. The pin is the device's
//     memory of the key it accepted; any lookup (a Send, `keys verify`)
//     that sees a change updates both, so the cache never disagrees with
//     what the device last verified.
//   - A key change is noticed at the first envelope signed with the new
//     key: its signature fails with the cached one, and the device asks
//     again (RefreshSenderKey), at most once per keyRefreshInterval per
//     sender, so junk with bad signatures cannot turn into one lookup each.
//   - A reset that no new envelope reveals (a key revoked, still used by
//     whoever holds it) is noticed when the TTL runs out: after
//     keyCacheTTL, ten minutes. That is the longest a revoked key is still
//     believed; shorter would cost a lookup per active contact that often.
//   - "No key bound" is kept for keyCacheMissTTL, one minute: a new user
//     who publishes a key is seen within a minute, and a flood from an
//     account without a key costs one lookup a minute.
//
// Sending does not use the cache: Send looks the recipient up each time,
// so that a message is never wrapped for a key the directory no longer
// binds.
const (
	keyCacheSize       = 1024
	keyCacheTTL        = 10 * time.Minute
	keyCacheMissTTL    = time.Minute
	keyRefreshInterval = 10 * time.Second
	// lookupTimeout bounds one shared lookup: a directory that does not
	// answer within it is unavailable for now (the envelopes waiting for
	// it are kept and retried), not a reason to block every caller.
	lookupTimeout = 10 * time.Second
)

// keyCache is a bounded, least recently used cache of directory answers
// by bare JID, with lookups shared between concurrent callers
// (singleflight). It knows nothing of pins: KeyDirectory checks them.
type keyCache struct {
	max             int           // entries, ≥ 1
	ttl, missTTL    time.Duration // how long a key, and "no key", stay fresh
	refreshInterval time.Duration // the least age of an answer refreshed
	now             func() time.Time

	mu      sync.Mutex
	entries map[string]*list.Element // of *cachedKey
	lru     list.List                // front: most recently used
	flights map[string]*keyFlight

	gossip gossipCache // checkpoints of contacts proven consistent (gossip.go)
}

type cachedKey struct {
	jid     string
	key     *VerifiedKey // nil: the directory binds no key
	fetched time.Time
}

// keyFlight is one lookup in progress; its result is set before done is
// closed.
type keyFlight struct {
	done    chan struct{}
	key     *VerifiedKey
	err     error
	callers int // that asked for it, under keyCache.mu
}

func newKeyCache() *keyCache {
	return &keyCache{max: keyCacheSize, ttl: keyCacheTTL, missTTL: keyCacheMissTTL, refreshInterval: keyRefreshInterval, now: time.Now}
}

// get returns the fresh answer cached for bare.
func (c *keyCache) get(bare string) (*VerifiedKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[bare]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cachedKey)
	ttl := c.ttl
	if e.key == nil {
		ttl = c.missTTL
	}
	if c.now().Sub(e.fetched) >= ttl {
		return nil, false
	}
	c.lru.MoveToFront(el)
	return e.key, true
}

// refreshable reports whether bare's answer is old enough to be asked
// for again after a signature failed with it (or there is none).
func (c *keyCache) refreshable(bare string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[bare]
	return !ok || c.now().Sub(el.Value.(*cachedKey).fetched) >= c.refreshInterval
}

// fetchedAt returns when bare's cached answer was verified.
func (c *keyCache) fetchedAt(bare string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[bare]
	if !ok {
		return time.Time{}, false
	}
	return el.Value.(*cachedKey).fetched, true
}

// put records a verified answer for bare, evicting the least recently
// used entry past the bound.
func (c *keyCache) put(bare string, k *VerifiedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]*list.Element{}
	}
	if el, ok := c.entries[bare]; ok {
		*el.Value.(*cachedKey) = cachedKey{jid: bare, key: k, fetched: c.now()}
		c.lru.MoveToFront(el)
		return
	}
	c.entries[bare] = c.lru.PushFront(&cachedKey{jid: bare, key: k, fetched: c.now()})
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*cachedKey).jid)
	}
}

// forget drops bare's answer.
func (c *keyCache) forget(bare string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[bare]; ok {
		c.lru.Remove(el)
		delete(c.entries, bare)
	}
}

// shared runs fetch for bare, once for every caller that asks while it
// runs, and returns its result to each. fetch runs on its own goroutine
// with a context that no caller's cancellation ends (it is bounded by
// lookupTimeout), so one caller giving up does not fail the others; a
// caller whose ctx ends stops waiting.
func (c *keyCache) shared(ctx context.Context, bare string, fetch func(context.Context) (*VerifiedKey, error)) (*VerifiedKey, error) {
	c.mu.Lock()
	f, ok := c.flights[bare]
	if !ok {
		if c.flights == nil {
			c.flights = map[string]*keyFlight{}
		}
		f = &keyFlight{done: make(chan struct{})}
		c.flights[bare] = f
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		go func() {
			defer cancel()
			f.key, f.err = fetch(fctx)
			c.mu.Lock()
			delete(c.flights, bare)
			c.mu.Unlock()
			close(f.done)
		}()
	}
	f.callers++
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.key, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
