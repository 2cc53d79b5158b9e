package expiry

import "time"

// For the external tests: what the relay writes as bytes.
var (
	AppendTimed = appendTimed
	AppendBy    = appendBy
)

const (
	WireTail      = wireTail
	WireHints     = wireHints
	WireCopyHints = wireCopyHints
)

// ReleaseSlab unmaps r's slab now rather than when r is collected, for a
// benchmark that measures the next relay's memory. r must not be used
// after.
func ReleaseSlab(r *Relay) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.slab.Release()
}

// HeldEnvelopes returns a copy of the envelope of every message r holds
// (not the senders' copies), by id.
func HeldEnvelopes(r *Relay) map[string][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string][]byte)
	for _, h := range r.queue {
		if !h.sent {
			m[h.id] = append([]byte(nil), h.raw...)
		}
	}
	return m
}

// Wake makes Run look at the queue now, for a test that moved its clock
// (Run sleeps until the earliest expiry by the real clock).
func Wake(r *Relay) {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Compactions is how often r compacted its slab.
func Compactions(r *Relay) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.compactions
}

// LastSweep is how long r's last sweep that dropped messages held its
// lock, and how long its last scrub of freed memory took.
func LastSweep(r *Relay) (locked, scrub time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastSweep.locked, r.lastSweep.scrub
}
