package abuse_test

import (
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestQuotaIsTheSenders: one sender filling clinkd with timed messages for
// bob is refused once it holds its share of bob's inbox, and another
// sender's timed message to bob still goes through (on main before the
// fix: 1,000 messages from alice made clinkd refuse everyone else's to bob
// for days). A sender's own budget counts its copies too.
func TestQuotaIsTheSenders(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Expiry.PerUserMessages = 8 // bob's inbox; a sender's share is a quarter
			})
			comp := d.Component().Domain()
			alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
			a := online(t, srv, comp, alice)
			c := online(t, srv, comp, carol)
			online(t, srv, comp, bob)

			sent := 0
			for ; sent < 20; sent++ {
				cond, text := outcome(t, a, comp, bob.jid, seal(t, alice, bob.jid, bob.id, time.Hour))
				if cond == "" {
					continue
				}
				if cond != string(stanza.ResourceConstraint) || !strings.Contains(text, "for "+bob.jid.String()) {
					t.Fatalf("alice's message %d: %s %q, want resource-constraint naming her share for bob", sent, cond, text)
				}
				break
			}
			if sent != 2 {
				t.Errorf("alice had %d timed messages held for bob before a refusal, want 2 (a quarter of 8)", sent)
			}
			if cond, text := outcome(t, c, comp, bob.jid, seal(t, carol, bob.jid, bob.id, time.Hour)); cond != "" {
				t.Errorf("carol's timed message to bob after alice's flood: %s %q, want accepted", cond, text)
			}
		})
	}
}

// TestSenderBudgetCountsCopies: a sender whose budget is spent, copies
// for its own devices included, cannot make clinkd hold more for anyone.
func TestSenderBudgetCountsCopies(t *testing.T) {
	t.Parallel()
	srv := labtest.Server(t, "prosody")
	d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Expiry.PerSenderMessages = 4 // two messages and their two copies
	})
	comp := d.Component().Domain()
	alice := newUser(t, srv, "alice")
	a := online(t, srv, comp, alice)
	for i, key := range keys {
		r := newUser(t, srv, key)
		cond, text := outcome(t, a, comp, r.jid, seal(t, alice, r.jid, r.id, time.Hour))
		switch {
		case i < 2 && cond != "":
			t.Fatalf("message %d: %s %q, want accepted", i, cond, text)
		case i >= 2 && (cond != string(stanza.ResourceConstraint) || !strings.Contains(text, "your timed messages")):
			t.Errorf("message %d, over the sender's budget: %s %q, want resource-constraint", i, cond, text)
		}
	}
	// Held for the recipients, plus alice's copies: the copy comes back
	// through the server, so wait for the count to settle.
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, _ := d.Relay().Held()
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d held, want 4 (two messages, two copies)", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUnseenRecipient: a timed message to an address that has never been
// online at clinkd is held for at most expiry.unseen_max_period (on main
// before the fix, a 7-day message to nobody@nowhere.invalid was accepted
// and held).
func TestUnseenRecipient(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d := clinkdtest.Start(t, srv, nil) // defaults: 7 days, 24h for the unseen
			comp := d.Component().Domain()
			alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
			a := online(t, srv, comp, alice)
			if cond, text := outcome(t, a, comp, bob.jid, seal(t, alice, bob.jid, bob.id, 6*24*time.Hour)); cond != string(stanza.NotAcceptable) || !strings.Contains(text, "at most 24h") {
				t.Errorf("6 days to a never-seen user: %s %q, want not-acceptable naming 24h", cond, text)
			}
			if cond, text := outcome(t, a, comp, bob.jid, seal(t, alice, bob.jid, bob.id, 23*time.Hour)); cond != "" {
				t.Errorf("23h to a never-seen user: %s %q, want accepted", cond, text)
			}
			online(t, srv, comp, bob)
			if cond, text := outcome(t, a, comp, bob.jid, seal(t, alice, bob.jid, bob.id, 6*24*time.Hour)); cond != "" {
				t.Errorf("6 days once bob has been online: %s %q, want accepted", cond, text)
			}
		})
	}
}

// TestTrackedStateBounded: one sender cannot grow the receipt-state table
// without bound (on main before the fix, every ordinary envelope wrote a
// row kept for the whole retention).
func TestTrackedStateBounded(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			dbURL := labtest.NewDatabase(t)
			const bound = 8
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
				c.Receipts.PerSenderTracked = bound
			})
			comp := d.Component().Domain()
			alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
			a := online(t, srv, comp, alice)
			const sent = 24
			for i := range sent {
				if cond, text := outcome(t, a, comp, bob.jid, seal(t, alice, bob.jid, bob.id, 0)); cond != "" {
					t.Fatalf("ordinary message %d: %s %q", i, cond, text)
				}
			}
			// The bound may be exceeded by the inserts between two trims,
			// a quarter of it at most.
			if n := trackedRows(t, dbURL, alice.jid.String()); n > bound+bound/4 || n < bound {
				t.Errorf("%d tracked rows for alice after %d messages, want %d to %d", n, sent, bound, bound+bound/4)
			}
		})
	}
}
