package expiry_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true, Prosody: true, Ejabberd: true}))
}

// user is a test account with its device identity.
type user struct {
	jid  jid.JID
	pass string
	id   envelope.Identity
}

func newUser(t *testing.T, srv *lab.XMPPServer, key string) user {
	j, pass := labtest.NewUser(t, srv)
	return user{jid: jid.MustParse(j), pass: pass, id: clinkdtest.Identity(t, key, j)}
}

// online logs a device of u in and announces it to clinkd. A ping after
// the announcement returns only once clinkd has handled it (one sender's
// stanzas are handled in order).
func online(t *testing.T, srv *lab.XMPPServer, comp jid.JID, u user) *client.Client {
	t.Helper()
	dev := clinkdtest.Login(t, srv, u.jid.String(), u.pass)
	ctx := ctxFor(t, time.Minute)
	own, _ := address.AtComponent(u.jid, comp)
	// While clinkd re-links (after a server restart) both the announcement
	// and the ping are answered by the server as undeliverable: try again.
	for {
		if err := dev.Announce(ctx, comp); err != nil {
			t.Fatal(err)
		}
		err := dev.Ping(ctx, own)
		if err == nil {
			return dev
		}
		if ctx.Err() != nil {
			t.Fatalf("ping own address: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func randomID(t *testing.T) string {
	b := make([]byte, 12)
	rand.Read(b)
	return "m-" + hex.EncodeToString(b)
}

// seal makes a standard envelope from a to b (and a's own key), timed
// when validity > 0.
func seal(t *testing.T, from, to user, text string, validity time.Duration) *envelopexml.Envelope {
	t.Helper()
	h := envelope.Header{ID: randomID(t), Time: time.Now().UTC().Truncate(time.Second)}
	if validity > 0 {
		h.Expires = h.Time.Add(validity)
	}
	env, err := envelope.SealStandard(from.id, []envelope.Recipient{{JID: to.jid.String(), Key: to.id.PublicKey()}}, h,
		envelope.Content{Kind: envelope.KindText, Text: text})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// next waits for a stanza that satisfies match.
func next(t *testing.T, dev *client.Client, what string, match func(*client.Stanza) bool) *client.Stanza {
	t.Helper()
	s, err := dev.Next(ctxFor(t, 40*time.Second), match)
	if err != nil {
		t.Fatalf("%s waiting for %s: %v", dev.JID(), what, err)
	}
	return s
}

func envelopeWithID(id string) func(*client.Stanza) bool {
	return func(s *client.Stanza) bool {
		if s.Kind != "message" || !s.Has(client.EnvelopeName) {
			return false
		}
		env, err := s.Envelope()
		return err == nil && env.ID == id
	}
}

func receipt(id string, kind client.ReceiptKind) func(*client.Stanza) bool {
	return func(s *client.Stanza) bool {
		got, k, ok := s.ReceiptFor()
		return ok && got == id && k == kind
	}
}

func expired(id string) func(*client.Stanza) bool {
	return func(s *client.Stanza) bool {
		got, ok := s.ExpiredID()
		return ok && got == id
	}
}

// open decrypts a relayed message as me, checking the sender's signature.
func open(t *testing.T, s *client.Stanza, me, sender user) string {
	t.Helper()
	env, err := s.Envelope()
	if err != nil {
		t.Fatal(err)
	}
	c, err := envelope.Open(env, me.id, sender.id.PublicKey(), nil)
	if err != nil {
		t.Fatalf("open as %s: %v", me.jid, err)
	}
	return c.Text
}

// TestTimedMessage runs the whole life of timed messages on each real
// server, with MAM and offline storage on: one sent while the recipient is
// offline, one while online; both delivered, read, receipted to both of
// the sender's devices, and deleted on every device at expiry. Then
// neither the ciphertext, the plaintext nor the message ids are in the
// server's storage, the database or clinkd's log. An ordinary message,
// sent the same way, is found stored, so the check can fail.
func TestTimedMessage(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			dbURL := labtest.NewDatabase(t)
			cfg := clinkdtest.Config(t, srv)
			cfg.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
			cfg.Expiry.MinPeriod = time.Second
			log, logs := clinkdtest.CaptureLog()
			d := clinkdtest.StartConfig(t, cfg, log)
			comp := d.Component().Domain()
			alice, bob := newUser(t, srv, "alice"), newUser(t, srv, "bob")
			aliceAddr, _ := address.AtComponent(alice.jid, comp)
			bobAddr, _ := address.AtComponent(bob.jid, comp)

			a1 := online(t, srv, comp, alice)
			a2 := online(t, srv, comp, alice)
			ctx := ctxFor(t, 2*time.Minute)

			// 1. Bob is offline.
			secret1 := "timed secret one " + randomID(t)
			m1 := seal(t, alice, bob, secret1, 25*time.Second)
			if err := a1.SendEnvelope(ctx, comp, bob.jid, m1); err != nil {
				t.Fatal(err)
			}
			copy1 := next(t, a2, "the copy of m1", envelopeWithID(m1.ID))
			if !copy1.Has(client.SentName) || copy1.Type != "headline" || !copy1.From.Equal(bobAddr) {
				t.Errorf("copy on alice's other device: type %q from %s, sent marker %v", copy1.Type, copy1.From, copy1.Has(client.SentName))
			}
			if got := open(t, copy1, alice, alice); got != secret1 {
				t.Errorf("alice's other device reads %q", got)
			}

			b := online(t, srv, comp, bob)
			got1 := next(t, b, "m1", envelopeWithID(m1.ID))
			if got1.Type != "headline" || !got1.From.Equal(aliceAddr) {
				t.Errorf("m1 at bob: type %q from %s; want a headline from %s", got1.Type, got1.From, aliceAddr)
			}
			if got := open(t, got1, bob, alice); got != secret1 {
				t.Errorf("bob reads %q, want %q", got, secret1)
			}
			for _, k := range []client.ReceiptKind{client.Delivered, client.Displayed} {
				if err := b.SendReceipt(ctx, comp, alice.jid, m1.ID, k, true); err != nil {
					t.Fatal(err)
				}
			}
			for _, a := range []*client.Client{a1, a2} {
				next(t, a, "m1 delivered", receipt(m1.ID, client.Delivered))
				next(t, a, "m1 read", receipt(m1.ID, client.Displayed))
			}

			// 2. Bob is online.
			secret2 := "timed secret two " + randomID(t)
			m2 := seal(t, alice, bob, secret2, 15*time.Second)
			if err := a1.SendEnvelope(ctx, comp, bob.jid, m2); err != nil {
				t.Fatal(err)
			}
			if got := open(t, next(t, b, "m2", envelopeWithID(m2.ID)), bob, alice); got != secret2 {
				t.Errorf("bob reads %q, want %q", got, secret2)
			}
			next(t, a2, "the copy of m2", envelopeWithID(m2.ID))
			if err := b.SendReceipt(ctx, comp, alice.jid, m2.ID, client.Delivered, true); err != nil {
				t.Fatal(err)
			}
			next(t, a1, "m2 delivered", receipt(m2.ID, client.Delivered))

			// 3. At expiry every device is told to delete.
			for _, m := range []*envelopexml.Envelope{m1, m2} {
				for _, dev := range []*client.Client{b, a1, a2} {
					next(t, dev, "expiry of "+m.ID, expired(m.ID))
				}
			}
			if n, _ := d.Relay().Held(); n != 0 {
				t.Errorf("%d messages still held after expiry", n)
			}

			// 4. Nothing of them was kept anywhere but in clinkd's memory.
			stored, err := srv.DumpStorage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			places := map[string]string{"server storage": string(stored), "database": clinkdtest.DumpDatabase(t, dbURL), "clinkd log": logs.String()}
			for _, m := range []*envelopexml.Envelope{m1, m2} {
				for what, needle := range map[string]string{
					"message id": m.ID, "ciphertext": base64.StdEncoding.EncodeToString(m.Payload)[:60],
					"signature": base64.StdEncoding.EncodeToString(m.Signature)[:60],
				} {
					for place, text := range places {
						if strings.Contains(text, needle) {
							t.Errorf("the %s of a timed message is in the %s", what, place)
						}
					}
				}
			}
			for _, secret := range []string{secret1, secret2} {
				for place, text := range places {
					if strings.Contains(text, secret) {
						t.Errorf("plaintext in the %s", place)
					}
				}
			}

			// 5. The control: an ordinary message through clinkd, with bob
			// offline, is stored by the server (ciphertext only).
			b.Close()
			secret3 := "ordinary secret " + randomID(t)
			m3 := seal(t, alice, bob, secret3, 0)
			if err := a1.SendEnvelope(ctx, comp, bob.jid, m3); err != nil {
				t.Fatal(err)
			}
			needle := base64.StdEncoding.EncodeToString(m3.Payload)[:60]
			deadline := time.Now().Add(30 * time.Second)
			for {
				stored, err := srv.DumpStorage(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(string(stored), needle) {
					if strings.Contains(string(stored), secret3) {
						t.Error("the ordinary message's plaintext is in the server's storage")
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the ordinary message never reached the server's storage: the storage check above cannot fail, so it proves nothing")
				}
				time.Sleep(300 * time.Millisecond)
			}
			if !strings.Contains(clinkdtest.DumpDatabase(t, dbURL), m3.ID) {
				t.Error("the ordinary message's receipt state is not in the database")
			}
		})
	}
}

func ownAddr(t *testing.T, comp jid.JID, u user) jid.JID {
	a, err := address.AtComponent(u.jid, comp)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
