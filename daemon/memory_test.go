package daemon_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestPinnedEnvelopesAreCompacted plays, through the real servers, a
// sender who tries to make clinkd keep far more memory than it holds: of
// 6,000 timed messages one in forty is valid for an hour and the rest for
// seconds, so that once those expire every 1 MiB chunk of the relay's slab
// would stay mapped for a few long-lived envelopes (13.8 MB for the 0.7 MB
// held, copies counted, with compaction disabled). clinkd compacts at each expiry sweep: what it keeps touched must
// be within 1.25 times what it holds plus 3 MiB (docs/expiry.md, "What a
// held message costs in memory"). The quotas and rates are lifted, as a
// sender with many accounts would have them: the attack is on memory,
// which the quotas count as envelope bytes only. It runs here because
// this package's servers have no c2s shapers. expiry's
// TestPinnedChunksAreCompacted is the same attack on the relay alone,
// with a clock of its own.
func TestPinnedEnvelopesAreCompacted(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Expiry.PerUserMessages = 1 << 20
				c.Expiry.PerSenderMessages, c.Expiry.PerSenderBytes, c.Expiry.PerPairMessages = 1<<20, 1<<40, 1<<20
				c.Expiry.MinPeriod = time.Second
				c.Relay.PerMinute, c.Relay.Burst = 1e9, 1<<20
				c.Link.QueueDepth = 1 << 16
			})
			comp := d.Component().Domain()
			aj, ap := labtest.NewUser(t, srv)
			bj, _ := labtest.NewUser(t, srv)
			alice, bob := clinkdtest.Identity(t, "alice", aj), clinkdtest.Identity(t, "bob", bj)
			a := clinkdtest.Login(t, srv, aj, ap)
			ctx := t.Context()
			own, _ := address.AtComponent(jid.MustParse(aj), comp)
			if err := a.Announce(ctx, comp); err != nil {
				t.Fatal(err)
			}
			// One envelope sealed, sent 6,000 times with its id and
			// expiry changed: clinkd does not check the signature (bob's
			// device would), and sealing each would take the test's time.
			now := time.Now().UTC().Truncate(time.Second)
			template, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: bj, Key: bob.PublicKey()}},
				envelope.Header{ID: "template", Time: now, Expires: now.Add(time.Hour)},
				envelope.Content{Kind: envelope.KindText, Text: "pinned or not"})
			if err != nil {
				t.Fatal(err)
			}
			const n, pinEvery = 6000, 40
			for i := range n {
				e := *template
				e.ID = fmt.Sprintf("pin-%d", i)
				// Ten seconds, of which at most one is lost to
				// truncation: a loaded machine may take seconds to admit
				// it, and less than MinPeriod left would be refused.
				validity := 10 * time.Second
				if i%pinEvery == 0 {
					validity = time.Hour
				}
				e.Expires = time.Now().UTC().Truncate(time.Second).Add(validity)
				if err := a.SendEnvelope(ctx, comp, jid.MustParse(bj), &e); err != nil {
					t.Fatal(err)
				}
				if i%64 == 63 || i == n-1 {
					// clinkd handles one sender's stanzas in order: the
					// answer to a ping to alice's own address says the
					// envelopes before it were handled (and keeps at
					// most 64 on their way).
					if err := a.Ping(ctx, own); err != nil {
						t.Fatalf("after %d envelopes: %v", i+1, err)
					}
				}
			}
			short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			if s, err := a.Next(short, func(s *client.Stanza) bool { return s.Type == "error" }); err == nil {
				t.Fatalf("an envelope was refused: %s", s.Raw)
			}
			// Each message is held with alice's copy beside it (the two
			// share their bytes in the slab); the short-lived expire.
			pinned := (n + pinEvery - 1) / pinEvery
			deadline := time.Now().Add(time.Minute)
			for {
				if held, _ := d.Relay().Held(); held == 2*pinned {
					break
				}
				if time.Now().After(deadline) {
					held, _ := d.Relay().Held()
					t.Fatalf("%d held a minute after sending, want %d (the long-lived and their copies)", held, 2*pinned)
				}
				time.Sleep(100 * time.Millisecond)
			}
			_, heldBytes := d.Relay().Held()
			used := d.Relay().SlabUsed()
			t.Logf("%d sent, %d held (%d envelope bytes, copies counted); the slab keeps %d bytes touched", n, 2*pinned, heldBytes, used)
			if limit := heldBytes + heldBytes/4 + 3<<20; used > limit {
				t.Errorf("clinkd keeps %d bytes touched for %d held: more than 1.25× + 3 MiB = %d", used, heldBytes, limit)
			}
		})
	}
}
