package devicetest

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// The attack tests' checks of the device's own account of what it did.

func receiveStats(d *client.Device) string {
	s := d.Stats()
	return fmt.Sprintf("device counters: shown %d, key lookups %d, cache hits %d, lookups retried %d, waiting %d, inbox dropped %d, dropped %v",
		s.Shown, s.KeyLookups, s.KeyCacheHits, s.Retries, s.Waiting, s.InboxDropped, s.Dropped)
}

// checkFloodAccounted: every junk envelope of the flood was counted as
// dropped, for its signature or unread as its sender was throttled, and
// the inbox lost nothing.
func checkFloodAccounted(t *testing.T, d *client.Device, flood int) {
	t.Helper()
	s := d.Stats()
	if n := s.Dropped["bad signature"] + s.Dropped["throttled"]; n != uint64(flood) || len(s.Dropped) != 2 {
		t.Errorf("the device counted %v dropped; want the %d junk envelopes as bad signature or throttled, nothing else", s.Dropped, flood)
	}
	if s.Dropped["throttled"] == 0 {
		t.Errorf("the flood's sender was never throttled (dropped %v)", s.Dropped)
	}
	if s.InboxDropped != 0 || s.Waiting != 0 {
		t.Errorf("inbox dropped %d, %d waiting; want none", s.InboxDropped, s.Waiting)
	}
}

// checkReplaysCounted: the device counted at least min replays, and
// dropped nothing else.
func checkReplaysCounted(t *testing.T, d *client.Device, min int) {
	t.Helper()
	if s := d.Stats(); s.Dropped["replay"] < uint64(min) || len(s.Dropped) != 1 {
		t.Errorf("the device counted %v dropped; want at least %d replays, nothing else", s.Dropped, min)
	}
}

// checkExpiredReported: the expired envelope was reported as such, with
// its id.
func checkExpiredReported(t *testing.T, errs []error, id string) {
	t.Helper()
	for _, err := range errs {
		var de *client.DropError
		if errors.As(err, &de) && de.ID == id && errors.Is(err, client.ErrExpired) {
			return
		}
	}
	t.Errorf("no ErrExpired reported for %s; errors: %v", id, errs)
}

func storePath(t *testing.T, s *keystore.Store) string { return s.Path() }

// ClockSkewForTest is the device's clock skew allowance.
const ClockSkewForTest = client.ClockSkew

// checkDropReason: the envelope id was reported dropped for reason.
func checkDropReason(t *testing.T, errs []error, id, reason string) {
	t.Helper()
	for _, err := range errs {
		var de *client.DropError
		if errors.As(err, &de) && de.ID == id {
			if de.Reason != reason {
				t.Errorf("%s dropped as %q, want %q: %v", id, de.Reason, reason, err)
			}
			return
		}
	}
	t.Errorf("%s not reported dropped (want %q); errors: %v", id, reason, errs)
}

// checkRetried: an envelope waited for the directory and was tried again.
func checkRetried(t *testing.T, d *client.Device) {
	t.Helper()
	if s := d.Stats(); s.Retries == 0 || len(s.Dropped) != 0 {
		t.Errorf("the device retried %d lookups and dropped %v; want a retry and no drop", s.Retries, s.Dropped)
	}
}

// deviceWithClock is deviceFor with the device's clock.
func deviceWithClock(t *testing.T, srv *lab.XMPPServer, d *daemon.Daemon, keys clinkdtest.KeyDirKeys, key string, now func() time.Time) (*client.Device, *keystore.Store) {
	t.Helper()
	j, pass := labtest.NewUser(t, srv)
	store, err := keystore.Create(filepath.Join(t.TempDir(), "keys"), []byte("device passphrase"), clinkdtest.Identity(t, key, j))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := client.NewDevice(client.DeviceConfig{Client: clinkdtest.Login(t, srv, j, pass), Store: store, Component: d.Component().Domain(), LogKey: keys.Verifier, VRFKey: keys.VRFKey, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return dev, store
}
