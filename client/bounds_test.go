package client

import (
	"testing"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/keylog"
)

// TestKeyBoundsAreEnvelopes: the directory publishes exactly the keys
// envelopes accept, so every key bound can be used. (It lives here, where
// both are linked: keylog is a module of its own that links no SDK.)
func TestKeyBoundsAreEnvelopes(t *testing.T) {
	t.Parallel()
	if keylog.MinRSABits != envelope.MinKeyBits || keylog.MaxRSABits != envelope.MaxKeyBits {
		t.Errorf("keylog RSA bounds = %d to %d bits, want envelope's %d to %d", keylog.MinRSABits, keylog.MaxRSABits, envelope.MinKeyBits, envelope.MaxKeyBits)
	}
}
