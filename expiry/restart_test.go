package expiry_test

import (
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestHeldAcrossServerRestart: a timed message held for an offline user
// survives a restart of the XMPP server (clinkd holds it and re-links),
// and is delivered when the user comes online afterwards.
func TestHeldAcrossServerRestart(t *testing.T) {
	t.Parallel()
	for _, kind := range lab.Kinds() {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: kind})
			d := clinkdtest.Start(t, srv, nil)
			comp := d.Component().Domain()
			alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
			a := online(t, srv, comp, alice)
			secret := "held across a restart " + randomID(t)
			m := seal(t, alice, bob, secret, 3*time.Minute)
			if err := a.SendEnvelope(ctxFor(t, time.Minute), comp, bob.jid, m); err != nil {
				t.Fatal(err)
			}
			own := ownAddr(t, comp, alice)
			if err := a.Ping(ctxFor(t, time.Minute), own); err != nil { // m handled
				t.Fatal(err)
			}
			if n, _ := d.Relay().Held(); n == 0 {
				t.Fatal("nothing held before the restart")
			}

			if err := srv.Restart(ctxFor(t, 3*time.Minute)); err != nil {
				t.Fatal(err)
			}
			if err := d.Component().WaitState(ctxFor(t, time.Minute), component.Linked); err != nil {
				t.Fatal(err)
			}
			b := online(t, srv, comp, bob)
			if got := open(t, next(t, b, "m after the restart", envelopeWithID(m.ID)), bob, alice); got != secret {
				t.Errorf("bob reads %q", got)
			}
		})
	}
}

// TestClinkdRestart: a clinkd restart loses the timed messages it held, by
// design and as documented; the new clinkd starts clean, sends nothing
// stale (neither the message nor an expiry notice for it), and relays
// again.
func TestClinkdRestart(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			cfg := clinkdtest.Config(t, srv)
			cfg.Expiry.MinPeriod = time.Second
			d1, stop := clinkdtest.Run(t, cfg, clinkdtest.Logger(t))
			comp := d1.Component().Domain()
			alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
			a := online(t, srv, comp, alice)
			lost := seal(t, alice, bob, "lost by design", 8*time.Second)
			if err := a.SendEnvelope(ctxFor(t, time.Minute), comp, bob.jid, lost); err != nil {
				t.Fatal(err)
			}
			if err := a.Ping(ctxFor(t, time.Minute), ownAddr(t, comp, alice)); err != nil {
				t.Fatal(err)
			}
			stop()

			d2 := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
			if n, _ := d2.Relay().Held(); n != 0 {
				t.Fatalf("a new clinkd holds %d messages", n)
			}
			a2 := online(t, srv, comp, alice)
			b := online(t, srv, comp, bob)
			fresh := seal(t, alice, bob, "after the restart", 5*time.Second)
			if err := a2.SendEnvelope(ctxFor(t, time.Minute), comp, bob.jid, fresh); err != nil {
				t.Fatal(err)
			}
			next(t, b, "a message sent after the restart", envelopeWithID(fresh.ID))
			next(t, b, "its expiry", expired(fresh.ID))
			// By now the lost message's expiry has passed too: nothing of it
			// may have reached bob.
			if s, err := b.Next(ctxFor(t, time.Second), func(s *client.Stanza) bool {
				id, ok := s.ExpiredID()
				return envelopeWithID(lost.ID)(s) || ok && id == lost.ID
			}); err == nil {
				t.Errorf("stale delivery after the restart: %s", s.Raw)
			}
		})
	}
}
