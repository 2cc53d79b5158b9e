package component

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// pool runs handlers on a fixed set of workers. Each worker has its own
// bounded queue and a stanza goes to the worker its key (the sender's bare
// JID) hashes to, so one sender's stanzas are handled in order while
// different senders proceed in parallel.
type pool struct {
	ctx    context.Context
	queues []chan *Stanza
	seed   maphash.Seed
	run    func(context.Context, *Stanza)

	workers sync.WaitGroup // the worker goroutines
	jobs    sync.WaitGroup // stanzas queued or being handled
}

func newPool(ctx context.Context, workers, depth int, run func(context.Context, *Stanza)) *pool {
	p := &pool{ctx: ctx, queues: make([]chan *Stanza, workers), seed: maphash.MakeSeed(), run: run}
	for i := range p.queues {
		q := make(chan *Stanza, depth)
		p.queues[i] = q
		p.workers.Go(func() {
			for s := range q {
				p.run(p.ctx, s)
				p.jobs.Done()
			}
		})
	}
	return p
}

// dispatch queues s for the worker that owns key, waiting while that
// worker's queue is full, until ctx ends.
func (p *pool) dispatch(ctx context.Context, key string, s *Stanza) error {
	q := p.queues[maphash.String(p.seed, key)%uint64(len(p.queues))]
	p.jobs.Add(1)
	select {
	case q <- s:
		return nil
	case <-ctx.Done():
		p.jobs.Done()
		return ctx.Err()
	}
}

// drain waits until every queued stanza has been handled, or for at most d.
// The caller must not dispatch meanwhile.
func (p *pool) drain(d time.Duration) {
	done := make(chan struct{})
	go func() {
		p.jobs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// stop ends the workers after they have handled what is queued.
func (p *pool) stop() {
	for _, q := range p.queues {
		close(q)
	}
	p.workers.Wait()
}
