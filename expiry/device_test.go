package expiry_test

import (
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// onlineAs logs a device of u in with a new resource and announces it to
// clinkd with the stable id deviceID; it returns once clinkd has handled
// the announcement.
func onlineAs(t *testing.T, srv *lab.XMPPServer, comp jid.JID, u user, deviceID string) *client.Client {
	t.Helper()
	dev := clinkdtest.Login(t, srv, u.jid.String(), u.pass)
	ctx := ctxFor(t, time.Minute)
	if err := dev.AnnounceDevice(ctx, comp, deviceID); err != nil {
		t.Fatal(err)
	}
	if err := dev.Ping(ctx, ownAddr(t, comp, u)); err != nil {
		t.Fatal(err)
	}
	return dev
}

// TestOncePerDevice: a held timed message reaches each of the recipient's
// devices once, by the stable id the device announces, not once per XMPP
// resource: a device that comes back with a new resource (every login
// makes one) does not get it again, so a burst of held junk cannot be
// replayed at a victim's every login for the message's whole validity,
// while another device of the same user still gets it. A receipt that
// device sends reaches the sender naming the device. (Before, delivery
// was tracked per full JID, and the second login got everything again.)
func TestOncePerDevice(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			cfg := clinkdtest.Config(t, srv)
			cfg.Database = daemon.DatabaseConfig{URL: labtest.NewDatabase(t), Migrate: true}
			cfg.Expiry.MinPeriod = time.Second
			d := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
			comp := d.Component().Domain()
			alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
			a := online(t, srv, comp, alice)
			ctx := ctxFor(t, 2*time.Minute)

			m := seal(t, alice, bob, "held for bob's devices", 5*time.Minute)
			if err := a.SendEnvelope(ctx, comp, bob.jid, m); err != nil {
				t.Fatal(err)
			}
			if err := a.Ping(ctx, ownAddr(t, comp, alice)); err != nil { // handled
				t.Fatal(err)
			}

			phone := onlineAs(t, srv, comp, bob, "bobs-phone")
			next(t, phone, "the message on bob's phone", envelopeWithID(m.ID))

			// The phone reconnects: a new session, a new resource, the
			// same id. Nothing is delivered again, even after it announces
			// itself twice.
			phone.Close()
			again := onlineAs(t, srv, comp, bob, "bobs-phone")
			if err := again.AnnounceDevice(ctx, comp, "bobs-phone"); err != nil {
				t.Fatal(err)
			}
			if err := again.Ping(ctx, ownAddr(t, comp, bob)); err != nil {
				t.Fatal(err)
			}
			if s, err := again.Next(ctxFor(t, 3*time.Second), envelopeWithID(m.ID)); err == nil {
				t.Errorf("bob's phone got the held message again on its new resource %s (from %s)", again.JID(), s.From)
			}

			// Another device of bob's gets it, and its receipt names it.
			laptop := onlineAs(t, srv, comp, bob, "bobs-laptop")
			next(t, laptop, "the message on bob's laptop", envelopeWithID(m.ID))
			if err := laptop.SendReceipt(ctx, comp, alice.jid, m.ID, client.Delivered, true); err != nil {
				t.Fatal(err)
			}
			got := next(t, a, "the laptop's receipt", receipt(m.ID, client.Delivered))
			if dev := got.ReceiptDevice(); dev != "bobs-laptop" {
				t.Errorf("the receipt names device %q, want bobs-laptop", dev)
			}
			bobAddr, _ := address.AtComponent(bob.jid, comp)
			if !got.From.Equal(bobAddr) {
				t.Errorf("the receipt comes from %s, want %s", got.From, bobAddr)
			}

			// A malformed id is refused, and the device is not recorded.
			bad := clinkdtest.Login(t, srv, bob.jid.String(), bob.pass)
			own := ownAddr(t, comp, bob)
			if err := bad.SendPresence(ctx, stanza.Presence{To: own}, expiryxml.Device{ID: "not a valid id"}); err != nil {
				t.Fatal(err)
			}
			next(t, bad, "the refusal of a malformed device id", func(s *client.Stanza) bool {
				return s.Kind == "presence" && s.Type == "error"
			})
			if s, err := bad.Next(ctxFor(t, 2*time.Second), envelopeWithID(m.ID)); err == nil {
				t.Errorf("a device with a malformed id got the held message (from %s)", s.From)
			}
		})
	}
}
