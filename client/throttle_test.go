package client

import (
	"testing"
	"time"
)

// TestSenderBuckets: a sender's tokens run out after the burst and come
// back with time; senders do not share tokens; the first refusal of a
// run is told apart; the set stays within its bound.
func TestSenderBuckets(t *testing.T) {
	t.Parallel()
	type step struct {
		op          string // spend, allow, advance
		key         string
		d           time.Duration
		ok, first   bool
		description string
	}
	for _, tt := range []struct {
		name        string
		burst       int
		every       time.Duration
		max         int
		steps       []step
		wantBuckets int
	}{
		{name: "burst then refused", burst: 2, every: time.Minute, max: 8, steps: []step{
			{op: "allow", key: "a", ok: true},
			{op: "spend", key: "a", ok: true},
			{op: "spend", key: "a", ok: true},
			{op: "allow", key: "a", ok: false, first: true, description: "first refusal of the run"},
			{op: "allow", key: "a", ok: false, first: false, description: "later refusals are not first"},
			{op: "spend", key: "a", ok: false},
			{op: "allow", key: "b", ok: true, description: "another sender is not affected"},
		}, wantBuckets: 1},
		{name: "tokens come back", burst: 2, every: time.Minute, max: 8, steps: []step{
			{op: "spend", key: "a", ok: true},
			{op: "spend", key: "a", ok: true},
			{op: "allow", key: "a", ok: false, first: true},
			{op: "advance", d: 59 * time.Second},
			{op: "allow", key: "a", ok: false, first: false, description: "not a whole token yet"},
			{op: "advance", d: time.Second},
			{op: "allow", key: "a", ok: true, description: "one back"},
			{op: "spend", key: "a", ok: true},
			{op: "allow", key: "a", ok: false, first: true, description: "a new run of refusals"},
			{op: "advance", d: 10 * time.Minute},
			{op: "allow", key: "a", ok: true, description: "full again: forgotten"},
		}, wantBuckets: 0},
		{name: "bounded", burst: 1, every: time.Hour, max: 3, steps: []step{
			{op: "spend", key: "a", ok: true},
			{op: "spend", key: "b", ok: true},
			{op: "spend", key: "c", ok: true},
			{op: "spend", key: "d", ok: true, description: "evicts a"},
			{op: "allow", key: "a", ok: true, description: "a starts again"},
			{op: "allow", key: "b", ok: false, first: true},
		}, wantBuckets: 3},
	} {
		b := newSenderBuckets(tt.burst, tt.every)
		b.max = tt.max
		now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
		for i, s := range tt.steps {
			switch s.op {
			case "advance":
				now = now.Add(s.d)
			case "spend":
				if got := b.spend(s.key, now); got != s.ok {
					t.Errorf("%s, step %d (%s): spend(%s) = %v, want %v", tt.name, i, s.description, s.key, got, s.ok)
				}
			case "allow":
				ok, first := b.allow(s.key, now)
				if ok != s.ok || first != s.first {
					t.Errorf("%s, step %d (%s): allow(%s) = %v, %v; want %v, %v", tt.name, i, s.description, s.key, ok, first, s.ok, s.first)
				}
			}
		}
		if b.lru.Len() != tt.wantBuckets || len(b.m) != tt.wantBuckets {
			t.Errorf("%s: %d buckets (%d in the map), want %d", tt.name, b.lru.Len(), len(b.m), tt.wantBuckets)
		}
	}
}

// TestFailThrottle: the device's failure throttle lets a flooding sender
// through for failBurst envelopes and then failRefill apart, so a flood of
// 1,000 costs few checks, whatever its rate.
func TestFailThrottle(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		rate     time.Duration // between envelopes
		n        int
		maxCheck int
	}{
		{time.Millisecond, 1000, failBurst},           // a second of flood
		{100 * time.Millisecond, 1000, failBurst + 7}, // 100 s: 6 refills and the first
		{failRefill, 20, 20},                          // as fast as the refill: never throttled
	} {
		b := newSenderBuckets(failBurst, failRefill)
		now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
		checked := 0
		for range tt.n {
			if ok, _ := b.allow("mallory", now); ok {
				checked++
				b.spend("mallory", now) // it failed
			}
			now = now.Add(tt.rate)
		}
		if checked > tt.maxCheck {
			t.Errorf("%d failing envelopes %v apart: %d checked, want at most %d", tt.n, tt.rate, checked, tt.maxCheck)
		}
		if checked == 0 {
			t.Errorf("%d failing envelopes %v apart: none checked", tt.n, tt.rate)
		}
	}
}
