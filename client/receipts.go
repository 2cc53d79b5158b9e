package client

import (
	"context"
	"sync"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/extensions/receiptstate"
)

// Receipt catch-up (docs/receipts.md, "Asking for the state").
//
// clinkd passes a receipt for an ordinary message to the sender's devices
// online at that moment; a device that was offline or reconnecting
// misses it. So the device remembers the ordinary messages it sent that
// are not read yet (up to maxTracked, the oldest forgotten first), and
// after every reconnection asks clinkd their state, reporting each
// receipt it had not reported (Receipt.CatchUp). Messages sent before the
// device started are tracked when the app names them (TrackReceipts).
const (
	maxTracked = 4096
)

// sentTracker is the ordinary messages waiting for receipts.
type sentTracker struct {
	mu    sync.Mutex
	m     map[string]*trackedMessage
	order []string // ids, oldest first (may hold ids no longer in m)
}

type trackedMessage struct {
	to                   jid.JID // zero when not known (TrackReceipts)
	delivered, displayed bool    // reported
}

func (t *sentTracker) track(id string, to jid.JID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*trackedMessage{}
	}
	if _, ok := t.m[id]; ok {
		return
	}
	t.m[id] = &trackedMessage{to: to}
	t.order = append(t.order, id)
	for len(t.m) > maxTracked {
		delete(t.m, t.order[0])
		t.order = t.order[1:]
	}
	if len(t.order) > 2*maxTracked {
		t.order = compactIDs(t.order, t.m)
	}
}

func compactIDs(order []string, m map[string]*trackedMessage) []string {
	out := order[:0:0]
	for _, id := range order {
		if _, ok := m[id]; ok {
			out = append(out, id)
		}
	}
	return out
}

// seen records a receipt and reports whether it is new.
func (t *sentTracker) seen(id string, kind ReceiptKind) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	m, ok := t.m[id]
	if !ok {
		return true // not tracked: report it
	}
	var first bool
	switch kind {
	case Delivered:
		first, m.delivered = !m.delivered, true
	case Displayed:
		first, m.displayed = !m.displayed, true
		delete(t.m, id) // nothing more to wait for
	}
	return first
}

// pending returns the ids still waiting for a receipt.
func (t *sentTracker) pending() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]string, 0, len(t.m))
	for _, id := range t.order {
		if _, ok := t.m[id]; ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func (t *sentTracker) forget(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, id)
}

// TrackReceipts makes the device ask clinkd, now and after every
// reconnection, for the receipts of ordinary messages it sent before it
// started (their ids, which the app kept), and report each one it has not
// reported as a Receipt event (CatchUp). Messages the device sent itself
// are tracked already.
func (d *Device) TrackReceipts(ids ...string) {
	for _, id := range ids {
		d.sent.track(id, jid.JID{})
	}
	go d.catchUpReceipts()
}

// catchUpReceipts asks clinkd for the state of the tracked messages and
// reports the receipts not reported yet. Errors are left for the next
// reconnection: the link is down again, or clinkd keeps no receipts.
func (d *Device) catchUpReceipts() {
	ids := d.sent.pending()
	for len(ids) > 0 {
		n := min(len(ids), receiptstate.MaxIDs)
		batch := ids[:n]
		ids = ids[n:]
		ctx, cancel := context.WithTimeout(context.Background(), d.c.cfg.RequestTimeout)
		refs, err := d.c.ReceiptStatus(ctx, d.component, batch...)
		cancel()
		if err != nil {
			return
		}
		for _, r := range refs {
			if r.Unknown {
				d.sent.forget(r.ID)
				continue
			}
			to, _ := jid.Parse(r.To)
			if r.Delivered != nil && d.sent.seen(r.ID, Delivered) {
				d.rx.push(outcome{ev: &Receipt{ID: r.ID, From: to, Kind: Delivered, Time: *r.Delivered, CatchUp: true}})
			}
			if r.Displayed != nil && d.sent.seen(r.ID, Displayed) {
				d.rx.push(outcome{ev: &Receipt{ID: r.ID, From: to, Kind: Displayed, Time: *r.Displayed, CatchUp: true}})
			}
		}
	}
}
