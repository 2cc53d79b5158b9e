package client

import (
	"container/heap"
	"sync"
	"time"

	"mellium.im/xmpp/jid"
)

// Timed messages expire on the device by its own clock (docs/expiry.md,
// step 5): clinkd's notice can be lost (the device was offline when the
// message expired), the device's timer cannot. Each timed message the
// device shows or sends is scheduled at its Expires; NextEvent reports an
// *Expiry (Local) when the time comes, or when clinkd's notice comes
// first, whichever is first, and only that one. At most maxTimers
// messages are scheduled (the soonest to expire kept); the ids that
// expired are remembered (maxExpired) to tell a late notice.
const (
	maxTimers  = 1 << 16
	maxExpired = 1 << 14
)

type expiryTimers struct {
	mu      sync.Mutex
	h       timerHeap
	ids     map[string]bool // scheduled
	expired map[string]bool
	order   []string // expired ids, oldest first
}

type timer struct {
	at   time.Time
	id   string
	peer jid.JID
}

type timerHeap []timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// schedule arranges for id to expire at at.
func (e *expiryTimers) schedule(id string, peer jid.JID, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ids == nil {
		e.ids, e.expired = map[string]bool{}, map[string]bool{}
	}
	if e.ids[id] || e.expired[id] {
		return
	}
	if len(e.h) >= maxTimers {
		// Keep the soonest: drop the latest (a linear scan: rare).
		last := 0
		for i := range e.h {
			if e.h[i].at.After(e.h[last].at) {
				last = i
			}
		}
		if !at.Before(e.h[last].at) {
			return
		}
		delete(e.ids, e.h[last].id)
		heap.Remove(&e.h, last)
	}
	e.ids[id] = true
	heap.Push(&e.h, timer{at: at, id: id, peer: peer})
}

// due returns the next message whose time came by now.
func (e *expiryTimers) due(now time.Time) (*Expiry, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for len(e.h) > 0 && !e.h[0].at.After(now) {
		t := heap.Pop(&e.h).(timer)
		if !e.ids[t.id] {
			continue // clinkd's notice came first
		}
		delete(e.ids, t.id)
		e.markLocked(t.id)
		return &Expiry{ID: t.id, Peer: t.peer, Local: true}, true
	}
	return nil, false
}

// next returns when the next timer is due.
func (e *expiryTimers) next() (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for len(e.h) > 0 && !e.ids[e.h[0].id] {
		heap.Pop(&e.h)
	}
	if len(e.h) == 0 {
		return time.Time{}, false
	}
	return e.h[0].at, true
}

// notice records clinkd's notice for id and reports whether it is the
// first word of that message's expiry.
func (e *expiryTimers) notice(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.expired[id] {
		return false
	}
	delete(e.ids, id) // its timer is moot
	e.markLocked(id)
	return true
}

func (e *expiryTimers) markLocked(id string) {
	if e.expired == nil {
		e.ids, e.expired = map[string]bool{}, map[string]bool{}
	}
	e.expired[id] = true
	e.order = append(e.order, id)
	for len(e.order) > maxExpired {
		delete(e.expired, e.order[0])
		e.order = e.order[1:]
	}
}
