package client

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client/envelope"
)

// TestTransient: which directory errors keep an envelope for later, and
// which drop it.
func TestTransient(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"rate limit", stanza.Error{Type: stanza.Wait, Condition: stanza.ResourceConstraint}, true},
		{"rate limit, wrapped", fmt.Errorf("client: iq: %w", stanza.Error{Type: stanza.Wait, Condition: stanza.ResourceConstraint}), true},
		{"clinkd not linked", stanza.Error{Type: stanza.Cancel, Condition: stanza.ServiceUnavailable}, true},
		{"any wait", stanza.Error{Type: stanza.Wait, Condition: stanza.UndefinedCondition}, true},
		{"lookup timed out", fmt.Errorf("client: iq to c: %w", context.DeadlineExceeded), true},
		{"checkpoint older than the pin", fmt.Errorf("%w: 3 entries, after 4", ErrStaleCheckpoint), true},
		{"bad request", stanza.Error{Type: stanza.Modify, Condition: stanza.BadRequest}, false},
		{"forked log", ErrLogInconsistent, false},
		{"bad proof", ErrBadProof, false},
		{"session ended", ErrClosed, false},
		{"key changed", &KeyChangeError{}, false},
		{"bad signature", envelope.ErrBadSignature, false},
	} {
		if got := transient(tt.err); got != tt.want {
			t.Errorf("transient(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestBackoff: retries wait from parkFirst doubling to parkMaxWait, less
// at most a quarter.
func TestBackoff(t *testing.T) {
	t.Parallel()
	for attempt, full := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute} {
		for range 100 {
			if w := backoff(attempt); w > full || w <= full*3/4 {
				t.Fatalf("backoff(%d) = %v, want in (%v, %v]", attempt, w, full*3/4, full)
			}
		}
	}
	if w := backoff(1000); w > parkMaxWait {
		t.Errorf("backoff(1000) = %v, want at most %v", w, parkMaxWait)
	}
}

// TestOpenReason: every outcome of envelope.Open has its name.
func TestOpenReason(t *testing.T) {
	t.Parallel()
	for err, want := range map[error]string{
		envelope.ErrBadSignature:                  "bad signature",
		fmt.Errorf("%w: x", envelope.ErrNotForMe): "not for me",
		envelope.ErrNoContactKey:                  "no contact key",
		envelope.ErrTampered:                      "tampered",
		envelope.ErrBadContent:                    "bad content",
		envelope.ErrUnsupportedContent:            "unsupported content",
		envelope.ErrUnsupportedVersion:            "unsupported version",
		envelope.ErrKeySize:                       "key size",
		envelope.ErrInvalid:                       "invalid",
		errors.New("something else"):              "other",
	} {
		if got := openReason(err); got != want {
			t.Errorf("openReason(%v) = %q, want %q", err, got, want)
		}
	}
}
