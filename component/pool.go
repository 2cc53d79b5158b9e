package component

import (
	"context"
	"sync"
	"time"
)

// pool runs handlers on a fixed set of workers, fairly between senders.
//
// Each sender (bare JID) has its own bounded FIFO. A sender with stanzas
// waiting is in the ready ring once; a worker takes the sender at the head,
// handles its oldest stanza and, if more are waiting, puts the sender back
// at the tail. So:
//   - one sender's stanzas are handled in the order they arrived, one at a
//     time (a sender is never on two workers at once);
//   - senders take turns: a sender that floods gets one stanza handled per
//     round, like everyone else, and cannot delay another sender's stanza
//     by more than one handler call per worker per busier sender;
//   - the read loop never waits: a stanza over its sender's bound, or over
//     the bound of everything queued, is refused at once (put reports
//     false) instead of stopping the link for everyone.
type pool struct {
	ctx       context.Context
	run       func(context.Context, *Stanza)
	perSender int // stanzas waiting per sender, at most
	maxQueued int // stanzas waiting in all, at most
	maxBytes  int // their approximate size in all, at most

	mu      sync.Mutex
	cond    *sync.Cond // ready gained a sender, or the pool closed
	senders map[string]*senderQueue
	ready   []*senderQueue // FIFO ring of senders with work and no worker
	queued  int            // stanzas waiting, not yet taken
	bytes   int            // their approximate size
	busy    int            // stanzas being handled
	closed  bool
	idle    chan struct{} // closed and replaced when nothing is queued or busy

	workers sync.WaitGroup
}

type senderQueue struct {
	key     string
	items   []*Stanza
	running bool // a worker is handling one of its stanzas
}

// Why put refused a stanza.
const (
	refusedSender = "sender" // the sender's own queue is full
	refusedTotal  = "total"  // everything queued is at its bound
)

func newPool(ctx context.Context, workers, perSender, maxQueued, maxBytes int, run func(context.Context, *Stanza)) *pool {
	p := &pool{
		ctx: ctx, run: run, perSender: perSender, maxQueued: maxQueued, maxBytes: maxBytes,
		senders: make(map[string]*senderQueue),
		idle:    make(chan struct{}),
	}
	p.cond = sync.NewCond(&p.mu)
	for range workers {
		p.workers.Go(p.work)
	}
	return p
}

// put queues s for its sender, or reports why it cannot without waiting.
func (p *pool) put(key string, s *Stanza) (ok bool, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	q := p.senders[key]
	switch {
	case q != nil && len(q.items) >= p.perSender:
		return false, refusedSender
	case p.queued >= p.maxQueued, p.bytes+s.queuedBytes() > p.maxBytes:
		return false, refusedTotal
	}
	if q == nil {
		q = &senderQueue{key: key}
		p.senders[key] = q
	}
	q.items = append(q.items, s)
	p.queued++
	p.bytes += s.queuedBytes()
	if !q.running && len(q.items) == 1 {
		p.ready = append(p.ready, q)
		p.cond.Signal()
	}
	return true, ""
}

// work is one worker: it takes the sender at the head of the ready ring,
// handles that sender's oldest stanza, and gives the sender back.
func (p *pool) work() {
	for {
		p.mu.Lock()
		for len(p.ready) == 0 && !p.closed {
			p.cond.Wait()
		}
		if len(p.ready) == 0 { // closed and nothing left
			p.mu.Unlock()
			return
		}
		q := p.ready[0]
		p.ready[0] = nil
		p.ready = p.ready[1:]
		s := q.items[0]
		q.items[0] = nil
		q.items = q.items[1:]
		q.running = true
		p.queued--
		p.bytes -= s.queuedBytes()
		p.busy++
		p.mu.Unlock()

		p.run(p.ctx, s)

		p.mu.Lock()
		q.running = false
		p.busy--
		if len(q.items) > 0 {
			p.ready = append(p.ready, q) // to the tail: the others go first
			p.cond.Signal()
		} else {
			delete(p.senders, q.key)
		}
		if p.queued == 0 && p.busy == 0 {
			close(p.idle)
			p.idle = make(chan struct{})
		}
		p.mu.Unlock()
	}
}

// oldestWait returns how long the stanza that has waited longest for a
// worker has waited (zero when none waits).
func (p *pool) oldestWait(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var oldest time.Duration
	for _, q := range p.senders {
		if len(q.items) > 0 {
			oldest = max(oldest, now.Sub(q.items[0].arrived))
		}
	}
	return oldest
}

// queuedNow returns how many stanzas wait for a worker.
func (p *pool) queuedNow() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queued
}

// drain waits until every queued stanza has been handled, or for at most d.
// The caller must not put meanwhile.
func (p *pool) drain(d time.Duration) {
	p.mu.Lock()
	if p.queued == 0 && p.busy == 0 {
		p.mu.Unlock()
		return
	}
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
	case <-time.After(d):
	}
}

// stop ends the workers after they have handled what is queued.
func (p *pool) stop() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
	p.workers.Wait()
}
