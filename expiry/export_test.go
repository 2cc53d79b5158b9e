package expiry

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

// SlabUsed is the memory outside Go's heap that r has touched for held
// envelopes (internal/slab).
func SlabUsed(r *Relay) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slab.Stats().Used
}

// ReleaseSlab unmaps r's slab now rather than when r is collected, for a
// benchmark that measures the next relay's memory. r must not be used
// after.
func ReleaseSlab(r *Relay) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.slab.Release()
}
