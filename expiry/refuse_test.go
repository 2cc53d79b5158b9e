package expiry_test

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/carbons"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

type body struct {
	XMLName xml.Name `xml:"jabber:client body"`
	Text    string   `xml:",chardata"`
}

// errorOf waits for the error reply to the stanza with id and returns its
// condition and text.
func errorOf(t *testing.T, dev *client.Client, id string) (cond, text string) {
	t.Helper()
	s := next(t, dev, "the error for "+id, func(s *client.Stanza) bool { return s.ID == id && s.Type == "error" })
	var e stanza.Error
	if err := s.Decode(xml.Name{Space: "jabber:client", Local: "error"}, &e); err != nil {
		t.Fatalf("error reply %s: %v", s.Raw, err)
	}
	return string(e.Condition), e.Error()
}

// TestRefusals: what the relay must not accept, it refuses with the stanza
// error a device can act on, through each real server, and nothing of it
// is held.
func TestRefusals(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Expiry.PerUserMessages = 2
				// This test is about the recipient's quota: the sender's
				// and the pair's may not bind first.
				c.Expiry.PerPairMessages = 2
				c.Expiry.MaxPeriod = time.Hour
			})
			comp := d.Component().Domain()
			alice, bob, carol := newUser(t, srv, "alice"), newUser(t, srv, "bob"), newUser(t, srv, "carol")
			a := online(t, srv, comp, alice)
			bobAddr, _ := address.AtComponent(bob.jid, comp)
			aliceAddr, _ := address.AtComponent(alice.jid, comp)
			ctx := ctxFor(t, time.Minute)
			safe := []any{hints.NoStore{}, hints.NoPermanentStore{}, carbons.Private{}}
			headline := func(to jid.JID, id string) stanza.Message {
				return stanza.Message{ID: id, To: to, Type: stanza.HeadlineMessage}
			}
			timed := func(from, to user) *envelopexml.Envelope { return seal(t, from, to, "x", time.Minute) }

			tests := []struct {
				name     string
				msg      stanza.Message
				payload  []any
				cond     string
				textPart string
			}{
				{"plaintext body", headline(bobAddr, "r1"), append([]any{timed(alice, bob), body{Text: "hello in the clear"}}, safe...), "not-acceptable", "plaintext"},
				{"sent as chat", stanza.Message{ID: "r2", To: bobAddr, Type: stanza.ChatMessage}, []any{timed(alice, bob)}, "not-acceptable", "headline"},
				{"no hints", headline(bobAddr, "r3"), []any{timed(alice, bob)}, "not-acceptable", "no-store"},
				{"too long", headline(bobAddr, "r4"), append([]any{seal(t, alice, bob, "x", 2*time.Hour)}, safe...), "not-acceptable", "validity period"},
				{"someone else's envelope", headline(bobAddr, "r5"), append([]any{timed(carol, bob)}, safe...), "not-acceptable", "not written by the sender"},
				{"not for this recipient", headline(bobAddr, "r6"), append([]any{timed(alice, carol)}, safe...), "not-acceptable", "not addressed to"},
				{"to the component itself", headline(comp, "r7"), append([]any{timed(alice, bob)}, safe...), "bad-request", "recipient's address"},
				{"forged copy", headline(aliceAddr, "r8"), append([]any{expiryxml.Copy{By: a.JID().String()}, timed(alice, bob)}, safe...), "forbidden", "only clinkd"},
				{"broken envelope", headline(bobAddr, "r9"), append([]any{rawXML(`<envelope xmlns='urn:clinkme:envelope:0' kind='standard'/>`)}, safe...), "bad-request", ""},
			}
			for _, tt := range tests {
				if err := a.SendMessage(ctx, tt.msg, tt.payload...); err != nil {
					t.Fatal(err)
				}
				cond, text := errorOf(t, a, tt.msg.ID)
				if cond != tt.cond || !strings.Contains(text, tt.textPart) {
					t.Errorf("%s: %s %q, want %s containing %q", tt.name, cond, text, tt.cond, tt.textPart)
				}
			}
			if n, _ := d.Relay().Held(); n != 0 {
				t.Errorf("%d messages held after refusals", n)
			}

			// Quotas: two held for bob, the third is refused.
			for i := range 3 {
				m := timed(alice, bob)
				if err := a.SendEnvelope(ctx, comp, bob.jid, m); err != nil {
					t.Fatal(err)
				}
				if i < 2 {
					// Handled in order: once the ping is answered, so is m.
					if err := a.Ping(ctx, bobAddr); err != nil {
						t.Fatal(err)
					}
					continue
				}
				if cond, _ := errorOf(t, a, m.ID); cond != "resource-constraint" {
					t.Errorf("third message for bob: %s, want resource-constraint", cond)
				}
			}

			// A device may announce itself only at its own address.
			if err := a.SendPresence(ctx, stanza.Presence{ID: "p1", To: bobAddr}); err != nil {
				t.Fatal(err)
			}
			if s := next(t, a, "the presence error", func(s *client.Stanza) bool { return s.ID == "p1" }); s.Type != "error" {
				t.Errorf("presence at another user's address: type %q, want error", s.Type)
			}
		})
	}
}

// rawXML is a payload sent exactly as written.
type rawXML string

func (r rawXML) TokenReader() xml.TokenReader { return xml.NewDecoder(strings.NewReader(string(r))) }

// TestEntitlement: with ClinkID accounts, a timed message from an account
// without ClinkMe Secure is refused with a text that says why, and
// accepted once an operator has granted it.
func TestEntitlement(t *testing.T) {
	t.Parallel()
	srv := labtest.Server(t, lab.Prosody)
	dbURL := labtest.NewDatabase(t)
	d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
		c.ClinkID.Enabled = true
		c.ClinkID.Argon2MemoryKiB = 8 << 10 // small: this test is not about hashing
		c.ClinkID.Argon2Iterations = 1
	})
	comp := d.Component().Domain()
	alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
	ctx := ctxFor(t, time.Minute)
	// The same account name at ClinkID: entitlements belong to accounts.
	if _, err := d.ClinkID().CreateAccount(ctx, alice.jid.Localpart(), "a long passphrase", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	a := online(t, srv, comp, alice)
	b := online(t, srv, comp, bob)

	m := seal(t, alice, bob, "needs Secure", time.Minute)
	if err := a.SendEnvelope(ctx, comp, bob.jid, m); err != nil {
		t.Fatal(err)
	}
	if cond, text := errorOf(t, a, m.ID); cond != "forbidden" || !strings.Contains(text, "ClinkMe Secure") {
		t.Errorf("without the entitlement: %s %q, want forbidden naming ClinkMe Secure", cond, text)
	}
	if err := d.ClinkID().Grant(ctx, alice.jid.Localpart(), clinkid.EntitlementSecure, "test"); err != nil {
		t.Fatal(err)
	}
	m2 := seal(t, alice, bob, "has Secure", time.Minute)
	if err := a.SendEnvelope(ctx, comp, bob.jid, m2); err != nil {
		t.Fatal(err)
	}
	if got := open(t, next(t, b, "the message once granted", envelopeWithID(m2.ID)), bob, alice); got != "has Secure" {
		t.Errorf("bob reads %q", got)
	}
}
