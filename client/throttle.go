package client

import (
	"container/list"
	"sync"
	"time"
)

// Per-sender throttling on the device.
//
// What a sender can make a device spend is bounded per sender, so that
// one account flooding a device cannot use up its directory budget or its
// CPU for the others:
//
//   - Failures. Every envelope that fails after the device spent work on
//     it (a lookup or a signature check, or parsing it) costs its
//     sender's bucket a token: failBurst tokens, one back every
//     failRefill. A sender with no token left is throttled: its envelopes
//     are dropped on arrival, before they are parsed, counted with the
//     reason "throttled" (the first of a run is also returned as a
//     DropError naming the sender). A sender whose envelopes verify
//     spends nothing, so a real correspondent is never throttled; one
//     whose envelopes fail at 4 a minute or more is, and then costs at
//     most 4 checks and (with the key cache) one lookup a minute.
//     Replays and expired envelopes spend no token: they cost no lookup
//     or signature check, and a server that delivers a message twice must
//     not get its author throttled.
//   - Key shares. A share that verified is stored, which rewrites and
//     syncs the key store; each sender may have shareBurst shares stored
//     at once (the key store keeps that many keys per contact), then one
//     every shareRefill. Shares beyond it are dropped ("share throttled").
//
// The buckets are keyed by the peer, the user whose address at the
// component relayed the envelope (authenticated by the XMPP server), and
// bounded in number (least recently used first).
const (
	failBurst       = 8
	failRefill      = 15 * time.Second
	shareBurst      = 4
	shareRefill     = 10 * time.Minute
	throttleSenders = 4096
)

// senderBuckets is a bounded set of token buckets by sender. A bucket
// full again is forgotten, so only senders that spent tokens recently
// take room.
type senderBuckets struct {
	burst float64       // tokens when full, ≥ 1
	every time.Duration // one token back per every
	max   int           // buckets kept, ≥ 1

	mu  sync.Mutex
	m   map[string]*list.Element // of *senderBucket
	lru list.List                // front: most recently used
}

type senderBucket struct {
	key     string
	tokens  float64
	at      time.Time // of tokens
	limited bool      // refused since it last had a token
}

func newSenderBuckets(burst int, every time.Duration) *senderBuckets {
	return &senderBuckets{burst: float64(burst), every: every, max: throttleSenders}
}

// bucket returns key's bucket refilled to now, or nil if it is full (and
// forgets it then). b.mu is held.
func (b *senderBuckets) bucket(key string, now time.Time) *senderBucket {
	el, ok := b.m[key]
	if !ok {
		return nil
	}
	sb := el.Value.(*senderBucket)
	if d := now.Sub(sb.at); d > 0 {
		sb.tokens += float64(d) / float64(b.every)
		sb.at = now
	}
	if sb.tokens >= b.burst {
		b.lru.Remove(el)
		delete(b.m, key)
		return nil
	}
	b.lru.MoveToFront(el)
	return sb
}

// allow reports whether key has a token, spending none. When it has none,
// first says whether this is the first refusal since it last had one.
func (b *senderBuckets) allow(key string, now time.Time) (ok, first bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sb := b.bucket(key, now)
	if sb == nil || sb.tokens >= 1 {
		if sb != nil {
			sb.limited = false
		}
		return true, false
	}
	first = !sb.limited
	sb.limited = true
	return false, first
}

// spend takes a token from key's bucket and reports whether there was one.
func (b *senderBuckets) spend(key string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	sb := b.bucket(key, now)
	if sb == nil {
		if b.m == nil {
			b.m = map[string]*list.Element{}
		}
		sb = &senderBucket{key: key, tokens: b.burst, at: now}
		b.m[key] = b.lru.PushFront(sb)
		for b.lru.Len() > b.max {
			old := b.lru.Back()
			b.lru.Remove(old)
			delete(b.m, old.Value.(*senderBucket).key)
		}
	}
	if sb.tokens < 1 {
		return false
	}
	sb.tokens--
	return true
}
