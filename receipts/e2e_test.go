package receipts_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"os"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true, Prosody: true, Ejabberd: true}))
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestOrdinaryReceipts: an ordinary message sent through clinkd reaches
// the recipient as chat from the sender's address; the recipient's
// receipts reach the sender's online devices; and a device that connects
// later asks clinkd for the state and finds both times. Only the owner may
// ask.
func TestOrdinaryReceipts(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			dbURL := labtest.NewDatabase(t)
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
			})
			comp := d.Component().Domain()
			aliceJID, alicePass := labtest.NewUser(t, srv)
			bobJID, bobPass := labtest.NewUser(t, srv)
			alice := clinkdtest.Identity(t, "alice", aliceJID)
			bob := clinkdtest.Identity(t, "bob", bobJID)
			ctx := ctxFor(t, time.Minute)
			login := func(j, p string) *client.Client {
				dev := clinkdtest.Login(t, srv, j, p)
				// Each device with its stable id, which receipts name.
				if err := dev.AnnounceDevice(ctx, comp, "dev-"+randomID()); err != nil {
					t.Fatal(err)
				}
				own, _ := address.AtComponent(jid.MustParse(j), comp)
				if err := dev.Ping(ctx, own); err != nil {
					t.Fatal(err)
				}
				return dev
			}
			a := login(aliceJID, alicePass)
			b := clinkdtest.Login(t, srv, bobJID, bobPass)
			if err := b.AnnounceDevice(ctx, comp, "bobs-phone"); err != nil {
				t.Fatal(err)
			}

			id := randomID()
			env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: bobJID, Key: bob.PublicKey()}},
				envelope.Header{ID: id, Time: time.Now().UTC().Truncate(time.Second)}, envelope.Content{Kind: envelope.KindText, Text: "ordinary"})
			if err != nil {
				t.Fatal(err)
			}
			if err := a.SendEnvelope(ctx, comp, jid.MustParse(bobJID), env); err != nil {
				t.Fatal(err)
			}
			aliceAddr, _ := address.AtComponent(jid.MustParse(aliceJID), comp)
			got, err := b.Next(ctx, func(s *client.Stanza) bool { return s.Has(client.EnvelopeName) })
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != "chat" || !got.From.Equal(aliceAddr) || got.ID != id {
				t.Errorf("at bob: type %q from %s id %q; want chat from %s id %s", got.Type, got.From, got.ID, aliceAddr, id)
			}
			genv, _ := got.Envelope()
			if c, err := envelope.Open(genv, bob, alice.PublicKey(), nil); err != nil || c.Text != "ordinary" {
				t.Errorf("bob opens %q, %v", c.Text, err)
			}
			for _, k := range []client.ReceiptKind{client.Delivered, client.Displayed} {
				if err := b.SendReceipt(ctx, comp, jid.MustParse(aliceJID), id, k, false); err != nil {
					t.Fatal(err)
				}
				r, err := a.Next(ctx, func(s *client.Stanza) bool {
					rid, rk, ok := s.ReceiptFor()
					return ok && rid == id && rk == k
				})
				if err != nil {
					t.Fatalf("receipt %v at alice: %v", k, err)
				}
				if dev := r.ReceiptDevice(); dev != "bobs-phone" {
					t.Errorf("receipt %v names device %q, want bobs-phone", k, dev)
				}
			}

			// A receipt from someone who was not sent the message changes
			// nothing.
			carolJID, carolPass := labtest.NewUser(t, srv)
			c := login(carolJID, carolPass)
			if err := c.SendReceipt(ctx, comp, jid.MustParse(aliceJID), "never-sent", client.Delivered, false); err != nil {
				t.Fatal(err)
			}

			later := login(aliceJID, alicePass)
			state, err := later.ReceiptStatus(ctx, comp, id, "never-sent")
			if err != nil {
				t.Fatal(err)
			}
			if len(state) != 2 || state[0].ID != id || state[0].Delivered == nil || state[0].Displayed == nil || state[0].To != bobJID {
				t.Fatalf("state = %+v, want %s delivered and displayed to %s", state, id, bobJID)
			}
			if !state[1].Unknown {
				t.Errorf("unknown message: %+v", state[1])
			}
			// Only the owner may ask.
			err = c.IQ(ctx, stanza.GetIQ, aliceAddr, statusQuery{IDs: []msgRef{{ID: id}}}, nil)
			var se stanza.Error
			if !asStanzaError(err, &se) || se.Condition != stanza.Forbidden {
				t.Errorf("carol asking for alice's state: %v, want forbidden", err)
			}
		})
	}
}

type statusQuery struct {
	XMLName xml.Name `xml:"urn:clinkme:receipts:0 status"`
	IDs     []msgRef `xml:"message"`
}

type msgRef struct {
	ID string `xml:"id,attr"`
}

func asStanzaError(err error, se *stanza.Error) bool {
	e, ok := err.(stanza.Error)
	if ok {
		*se = e
	}
	return ok
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "m-" + hex.EncodeToString(b)
}
