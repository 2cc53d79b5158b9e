package client

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestKeyCache walks the cache through its rules: a key is fresh for the
// TTL, "no key" for the shorter miss TTL, a refresh is allowed only once
// the answer is old enough, and the least recently used entry goes past
// the bound.
func TestKeyCache(t *testing.T) {
	t.Parallel()
	ka, kb := &VerifiedKey{JID: "a@x", Fingerprint: [32]byte{1}}, &VerifiedKey{JID: "b@x", Fingerprint: [32]byte{2}}
	type step struct {
		op      string // put, get, advance, refreshable, forget
		jid     string
		key     *VerifiedKey  // put; get: the key wanted
		d       time.Duration // advance
		ok      bool          // get: found fresh; refreshable: allowed
		comment string
	}
	for _, tt := range []struct {
		name  string
		max   int
		steps []step
	}{
		{"key fresh for the TTL", 8, []step{
			{op: "get", jid: "a@x", ok: false, comment: "empty"},
			{op: "put", jid: "a@x", key: ka},
			{op: "get", jid: "a@x", key: ka, ok: true},
			{op: "advance", d: keyCacheTTL - time.Second},
			{op: "get", jid: "a@x", key: ka, ok: true, comment: "just within the TTL"},
			{op: "advance", d: time.Second},
			{op: "get", jid: "a@x", ok: false, comment: "TTL over"},
		}},
		{"no key fresh for the miss TTL", 8, []step{
			{op: "put", jid: "a@x", key: nil},
			{op: "get", jid: "a@x", key: nil, ok: true},
			{op: "advance", d: keyCacheMissTTL},
			{op: "get", jid: "a@x", ok: false},
		}},
		{"refresh only after the interval", 8, []step{
			{op: "refreshable", jid: "a@x", ok: true, comment: "nothing cached"},
			{op: "put", jid: "a@x", key: ka},
			{op: "refreshable", jid: "a@x", ok: false, comment: "just verified"},
			{op: "advance", d: keyRefreshInterval - time.Second},
			{op: "refreshable", jid: "a@x", ok: false},
			{op: "advance", d: time.Second},
			{op: "refreshable", jid: "a@x", ok: true},
			{op: "put", jid: "a@x", key: kb, comment: "the refresh found another key"},
			{op: "refreshable", jid: "a@x", ok: false},
			{op: "get", jid: "a@x", key: kb, ok: true},
		}},
		{"bounded, least recently used first", 2, []step{
			{op: "put", jid: "a@x", key: ka},
			{op: "put", jid: "b@x", key: kb},
			{op: "get", jid: "a@x", key: ka, ok: true, comment: "a used last"},
			{op: "put", jid: "c@x", key: nil},
			{op: "get", jid: "b@x", ok: false, comment: "b evicted"},
			{op: "get", jid: "a@x", key: ka, ok: true},
			{op: "get", jid: "c@x", key: nil, ok: true},
		}},
		{"forget", 8, []step{
			{op: "put", jid: "a@x", key: ka},
			{op: "forget", jid: "a@x"},
			{op: "get", jid: "a@x", ok: false},
		}},
	} {
		clock := newFakeClock()
		c := newKeyCache()
		c.max, c.now = tt.max, clock.Now
		for i, s := range tt.steps {
			switch s.op {
			case "put":
				c.put(s.jid, s.key)
			case "forget":
				c.forget(s.jid)
			case "advance":
				clock.Advance(s.d)
			case "get":
				k, ok := c.get(s.jid)
				if ok != s.ok || ok && k != s.key {
					t.Errorf("%s, step %d (%s): get(%s) = %v, %v; want %v, %v", tt.name, i, s.comment, s.jid, k, ok, s.key, s.ok)
				}
			case "refreshable":
				if got := c.refreshable(s.jid); got != s.ok {
					t.Errorf("%s, step %d (%s): refreshable(%s) = %v, want %v", tt.name, i, s.comment, s.jid, got, s.ok)
				}
			}
		}
		if c.lru.Len() != len(c.entries) || c.lru.Len() > tt.max {
			t.Errorf("%s: %d in the list, %d in the map, bound %d", tt.name, c.lru.Len(), len(c.entries), tt.max)
		}
	}
}

// TestKeyCacheShared: concurrent callers for one JID share one lookup;
// one caller giving up neither cancels it nor fails the others; another
// JID gets its own.
func TestKeyCacheShared(t *testing.T) {
	t.Parallel()
	c := newKeyCache()
	release := make(chan struct{})
	var calls atomic.Int32
	key := &VerifiedKey{JID: "a@x"}
	fetch := func(ctx context.Context) (*VerifiedKey, error) {
		calls.Add(1)
		select {
		case <-release:
			return key, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	const callers = 20
	var wg sync.WaitGroup
	results := make(chan *VerifiedKey, callers)
	for range callers {
		wg.Go(func() {
			k, err := c.shared(context.Background(), "a@x", fetch)
			if err != nil {
				t.Errorf("shared = %v", err)
			}
			results <- k
		})
	}
	// One caller gives up while the lookup runs.
	gone, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.shared(gone, "a@x", fetch)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("shared(cancelled) = %v, want context.Canceled", err)
	}
	// Wait until every caller asked (the one that gave up included),
	// then end the lookup.
	for {
		c.mu.Lock()
		f := c.flights["a@x"]
		joined := f != nil && f.callers == callers+1
		c.mu.Unlock()
		if joined {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(results)
	for k := range results {
		if k != key {
			t.Errorf("shared = %v, want the one key", k)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d concurrent callers made %d lookups, want 1", callers+1, n)
	}
	other, err := c.shared(context.Background(), "b@x", func(context.Context) (*VerifiedKey, error) { calls.Add(1); return nil, nil })
	if other != nil || err != nil || calls.Load() != 2 {
		t.Errorf("shared(b) = %v, %v after %d lookups; want its own lookup", other, err, calls.Load())
	}
}

// TestPinAgrees: a cached answer is used only while the pin says the
// same.
func TestPinAgrees(t *testing.T) {
	t.Parallel()
	k := &VerifiedKey{Fingerprint: [32]byte{1}}
	for _, tt := range []struct {
		name string
		key  *VerifiedKey
		pin  KeyPin
		had  bool
		want bool
	}{
		{"key, pinned", k, KeyPin{Fingerprint: [32]byte{1}}, true, true},
		{"key, pin names another", k, KeyPin{Fingerprint: [32]byte{2}}, true, false},
		{"key, binding ended since", k, KeyPin{Fingerprint: [32]byte{1}, Ended: true}, true, false},
		{"key, no pin", k, KeyPin{}, false, false},
		{"no key, no pin", nil, KeyPin{}, false, true},
		{"no key, binding ended", nil, KeyPin{Fingerprint: [32]byte{1}, Ended: true}, true, true},
		{"no key, but a key pinned since", nil, KeyPin{Fingerprint: [32]byte{1}}, true, false},
	} {
		if got := pinAgrees(tt.key, tt.pin, tt.had); got != tt.want {
			t.Errorf("pinAgrees(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
