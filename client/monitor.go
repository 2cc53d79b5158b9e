package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
)

// Self-monitoring (docs/trust.md, "Self-monitoring"): at every login and
// every MonitorEvery while it runs, a device proves its own JID's current
// binding and complete history in the key directory (map and inclusion
// proofs; the history complete by proof), and raises an AlarmOwnKey for
// every entry it did not make: a reset, a delete, another key. The key
// store remembers how many versions were reviewed, so each entry is
// raised once.

// DefaultMonitorEvery is how often a running device checks its own key's
// history, besides at every login (Start).
const DefaultMonitorEvery = 10 * time.Minute

// MonitorOwnKey proves the device's own binding and history and raises
// an *Alarm (kept, and reported by NextEvent) for each new entry this
// device did not make. It returns the alarms raised.
func (d *Device) MonitorOwnKey(ctx context.Context) ([]*Alarm, error) {
	d.monitorMu.Lock()
	defer d.monitorMu.Unlock()
	res, err := d.lookup(ctx, d.me)
	var kc *KeyChangeError
	if err != nil && !errors.As(err, &kc) {
		return nil, d.monitorFailed(fmt.Errorf("client: monitor own key: %w", err))
	}
	hist, err := d.keys.History(ctx)
	if err != nil {
		return nil, d.monitorFailed(fmt.Errorf("client: monitor own history: %w", err))
	}
	mine, err := envelope.Fingerprint(d.store.Identity().PublicKey())
	if err != nil {
		return nil, err
	}
	seen := d.store.OwnSeen()
	if seen == 0 {
		// Nothing reviewed yet (a first run, or a key store of before):
		// the history up to this key's last publish is the past the user
		// set this device up with. Before the key is published there is
		// nothing of this device's to watch.
		last := int64(-1)
		for _, h := range hist {
			if h.Kind == "publish" && h.Fingerprint == mine {
				last = h.Version
			}
		}
		if last < 0 {
			return nil, nil
		}
		seen = last
	}
	var foreign []HistoryEntry
	for _, h := range hist {
		if h.Version > seen && (h.Kind != "publish" || h.Fingerprint != mine) {
			foreign = append(foreign, h)
		}
	}
	var out []*Alarm
	if len(foreign) > 0 {
		var parts []string
		for _, h := range foreign {
			what := h.Kind
			if h.Kind == "publish" {
				what = fmt.Sprintf("publish of another key SHA256:%x", h.Fingerprint)
			}
			parts = append(parts, fmt.Sprintf("version %d at log index %d (%s): %s", h.Version, h.Index, h.Time.UTC().Format(time.RFC3339), what))
		}
		a := &Alarm{Kind: AlarmOwnKey, JID: d.me, Time: d.now(), Entries: foreign,
			Text: "the key directory holds entries for this account that this device did not make: " + strings.Join(parts, "; ") +
				"; if you did not reset this account or move to another device, the operator or someone with the server's keys replaced your key"}
		if len(res) == 1 && res[0].Key != nil && res[0].Key.Fingerprint != mine {
			a.Text += fmt.Sprintf("; contacts now get the key SHA256:%x", res[0].Key.Fingerprint)
		}
		d.raise(a)
		out = append(out, a)
	}
	if n := int64(len(hist)); n > seen {
		seen = n
	}
	if err := d.store.SetOwnSeen(seen); err != nil {
		return out, err
	}
	return out, nil
}

// monitorFailed turns what the directory answered wrongly about the own
// JID into an alarm (a history with a version left out, another log than
// the one seen); errors that may pass are returned as they are.
func (d *Device) monitorFailed(err error) error {
	switch {
	case errors.Is(err, ErrHistoryIncomplete), errors.Is(err, ErrNotCurrent), errors.Is(err, ErrBadProof):
		d.raise(&Alarm{Kind: AlarmOwnKey, JID: d.me, Time: d.now(), Text: "the key directory answered about this account with what does not verify: " + err.Error()})
	case errors.Is(err, ErrLogInconsistent) && !errors.Is(err, ErrStaleCheckpoint):
		d.raise(&Alarm{Kind: AlarmFork, JID: d.me, Time: d.now(), Text: "the key directory served a log inconsistent with the one this device accepted: " + err.Error()})
	}
	return err
}

// monitorLoop runs MonitorOwnKey every monitorEvery until the session
// ends.
func (d *Device) monitorLoop() {
	t := time.NewTicker(d.monitorEvery)
	defer t.Stop()
	for {
		select {
		case <-d.c.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 2*d.c.cfg.RequestTimeout)
			d.MonitorOwnKey(ctx) // a failure that may pass is tried again next period
			cancel()
		}
	}
}
