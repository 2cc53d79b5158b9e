package expiry_test

import (
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestScaleOut runs the timed-message lifecycle with two clinkd instances
// attached to one ejabberd that balances by bare destination, with alice
// and bob owned by different instances: each instance keeps only its own
// users' state, and the copy and receipts cross between them through the
// server, with no shared store.
func TestScaleOut(t *testing.T) {
	t.Parallel()
	srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: lab.Ejabberd, Balancing: 2})
	cfg := clinkdtest.Config(t, srv)
	cfg.Link.Balanced = true
	cfg.Expiry.MinPeriod = time.Second
	d1 := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
	d2 := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
	comp := d1.Component().Domain()

	// Sign users up until one is owned by each instance.
	owned := map[*daemon.Daemon]user{}
	devs := map[*daemon.Daemon]*client.Client{}
	// Only keys that envelopes accept (mallory's 2,048-bit key is refused
	// when sealing): whichever user ends up owned by an instance must be
	// able to send.
	keys := []string{"alice", "bob", "carol", "dave"}
	for i := 0; len(owned) < 2; i++ {
		if i == 40 {
			t.Fatal("40 users, all owned by one instance: is ejabberd balancing?")
		}
		u := newUser(t, srv, keys[i%len(keys)])
		dev := online(t, srv, comp, u)
		for _, d := range []*daemon.Daemon{d1, d2} {
			if len(d.Devices().Online(u.jid)) > 0 {
				if _, taken := owned[d]; !taken {
					owned[d], devs[d] = u, dev
				}
			}
		}
	}
	alice, bob := owned[d1], owned[d2]
	a1, b := devs[d1], devs[d2]
	if len(d2.Devices().Online(alice.jid)) != 0 || len(d1.Devices().Online(bob.jid)) != 0 {
		t.Fatal("a user's devices are known to both instances")
	}
	a2 := online(t, srv, comp, alice)

	ctx := ctxFor(t, 2*time.Minute)
	m := seal(t, alice, bob, "across instances", 12*time.Second)
	if err := a1.SendEnvelope(ctx, comp, bob.jid, m); err != nil {
		t.Fatal(err)
	}
	if got := open(t, next(t, b, "m at bob", envelopeWithID(m.ID)), bob, alice); got != "across instances" {
		t.Errorf("bob reads %q", got)
	}
	next(t, a2, "the copy at alice's other device", envelopeWithID(m.ID))
	if err := b.SendReceipt(ctx, comp, alice.jid, m.ID, client.Displayed, true); err != nil {
		t.Fatal(err)
	}
	next(t, a1, "read receipt", receipt(m.ID, client.Displayed))
	next(t, a2, "read receipt", receipt(m.ID, client.Displayed))
	for _, dev := range []*client.Client{b, a1, a2} {
		next(t, dev, "expiry", expired(m.ID))
	}
}
