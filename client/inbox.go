package client

import (
	"context"
	"sync"
	"sync/atomic"
)

// The inbox's default bounds. 32 MiB is what bounds memory: 128 stanzas
// of Prosody's default maximum size (256 KiB), or over ten thousand
// ordinary envelopes. 8,192 stanzas bound the work of each Next, which
// looks through what is queued; they hold many times what a device that
// reads its events has waiting even under a flood (it drops a throttled
// sender's envelopes at microseconds each), and a burst of thousands of
// messages that a test or a benchmark reads only once all are sent.
const (
	DefaultMaxInbox      = 8192
	DefaultMaxInboxBytes = 32 << 20
)

// inbox holds received stanzas until Next takes them. The read loop must
// never block on a slow consumer, or IQ replies behind it would stall, so
// a push never waits: past the bounds it drops the oldest stanzas,
// counted (overflow). Once a consumer has declared what it takes
// (interest), a stanza that nobody declared is dropped on arrival,
// counted (unmatched), so that stanzas no one will ever take cannot push
// out those someone will.
type inbox struct {
	mu        sync.Mutex
	queue     []*Stanza
	bytes     int // of Raw, in queue
	max       int // stanzas, ≥ 1
	maxBytes  int // bytes of Raw, ≥ 1; one stanza larger than it is kept alone
	interests map[int]func(*Stanza) bool
	nextID    int
	signal    chan struct{} // closed and replaced when the queue changes
	closed    bool
	dropped   atomic.Uint64 // overflow
	unmatched atomic.Uint64
}

func (b *inbox) init(max, maxBytes int) {
	if max <= 0 {
		max = DefaultMaxInbox
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxInboxBytes
	}
	b.max, b.maxBytes = max, maxBytes
	b.signal = make(chan struct{})
}

// interest declares stanzas a consumer takes; stop withdraws it.
func (b *inbox) interest(match func(*Stanza) bool) (stop func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.interests == nil {
		b.interests = map[int]func(*Stanza) bool{}
	}
	id := b.nextID
	b.nextID++
	b.interests[id] = match
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.interests, id)
	}
}

func (b *inbox) push(s *Stanza) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.interests) > 0 {
		wanted := false
		for _, m := range b.interests {
			if m(s) {
				wanted = true
				break
			}
		}
		if !wanted {
			b.unmatched.Add(1)
			return
		}
	}
	b.queue = append(b.queue, s)
	b.bytes += len(s.Raw)
	for len(b.queue) > 1 && (len(b.queue) > b.max || b.bytes > b.maxBytes) {
		b.bytes -= len(b.queue[0].Raw)
		b.queue[0] = nil // let it be collected
		b.queue = b.queue[1:]
		b.dropped.Add(1)
	}
	close(b.signal)
	b.signal = make(chan struct{})
}

func (b *inbox) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	close(b.signal)
	b.signal = make(chan struct{})
}

// next takes the first queued stanza that match accepts, waiting for one
// until ctx ends; once the inbox is closed and none is queued it returns
// closedErr.
func (b *inbox) next(ctx context.Context, match func(*Stanza) bool, closedErr func() error) (*Stanza, error) {
	for {
		b.mu.Lock()
		for i, s := range b.queue {
			if match == nil || match(s) {
				b.bytes -= len(s.Raw)
				copy(b.queue[i:], b.queue[i+1:])
				b.queue[len(b.queue)-1] = nil
				b.queue = b.queue[:len(b.queue)-1]
				b.mu.Unlock()
				return s, nil
			}
		}
		closed, sig := b.closed, b.signal
		b.mu.Unlock()
		if closed {
			return nil, closedErr()
		}
		select {
		case <-sig:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
