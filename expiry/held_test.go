package expiry

import (
	"testing"
	"unsafe"
)

// TestHeldSize keeps a held entry within Go's 96-byte size class: a relay
// may hold a million of them, and docs/expiry.md's figures for what a
// held message costs count on it.
func TestHeldSize(t *testing.T) {
	if got := unsafe.Sizeof(held{}); got > 96 {
		t.Errorf("unsafe.Sizeof(held{}) = %d, want ≤ 96", got)
	}
}
