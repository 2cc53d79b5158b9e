package abuse_test

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

// keys are the test identities envelopes accept (3,072 bits and more).
var keys = []string{"alice", "bob", "carol", "dave"}

func newUserAt(t *testing.T, srv *lab.XMPPServer, domain, key string) user {
	t.Helper()
	j, pass := labtest.NewUserAt(t, srv, domain)
	return user{jid: jid.MustParse(j), pass: pass, id: clinkdtest.Identity(t, key, j)}
}

func newUser(t *testing.T, srv *lab.XMPPServer, key string) user {
	return newUserAt(t, srv, srv.Domain, key)
}

// online logs a device of u in and announces it to clinkd; the ping
// after the announcement returns once clinkd has handled it.
func online(t *testing.T, srv *lab.XMPPServer, comp jid.JID, u user) *client.Client {
	t.Helper()
	dev := login(t, srv, u)
	ctx := ctxFor(t, time.Minute)
	own, _ := address.AtComponent(u.jid, comp)
	if err := dev.Announce(ctx, comp); err != nil {
		t.Fatal(err)
	}
	if err := dev.Ping(ctx, own); err != nil {
		t.Fatalf("ping own address: %v", err)
	}
	return dev
}

// login logs a device of u in, for the test's duration.
func login(t *testing.T, srv *lab.XMPPServer, u user) *client.Client {
	t.Helper()
	tlsCfg := clinkdtest.TLSConfig(srv)
	tlsCfg.ServerName = u.jid.Domainpart()
	c, err := client.Dial(t.Context(), client.Config{Addr: srv.C2SAddr, JID: u.jid, Password: u.pass, TLS: tlsCfg})
	if err != nil {
		t.Fatalf("login %s: %v", u.jid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "m-" + hex.EncodeToString(b)
}

// seal makes a standard envelope from a to the JID to (whose key is
// toKey), timed when validity > 0.
func seal(t *testing.T, from user, to jid.JID, toKey envelope.Identity, validity time.Duration) *envelopexml.Envelope {
	t.Helper()
	h := envelope.Header{ID: randomID(), Time: time.Now().UTC().Truncate(time.Second)}
	if validity > 0 {
		h.Expires = h.Time.Add(validity)
	}
	env, err := envelope.SealStandard(from.id, []envelope.Recipient{{JID: to.String(), Key: toKey.PublicKey()}}, h,
		envelope.Content{Kind: envelope.KindText, Text: "x"})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// outcome sends env from dev and returns clinkd's answer: "" when it was
// accepted (a ping to the sender's own address, handled after it, comes
// back first), else the error condition and its text.
func outcome(t *testing.T, dev *client.Client, comp, to jid.JID, env *envelopexml.Envelope) (cond, text string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	if err := dev.SendEnvelope(ctx, comp, to, env); err != nil {
		t.Fatal(err)
	}
	own, _ := address.AtComponent(dev.JID().Bare(), comp)
	if err := dev.Ping(ctx, own); err != nil {
		t.Fatal(err)
	}
	s, err := dev.Next(ctxFor(t, 200*time.Millisecond), func(s *client.Stanza) bool { return s.ID == env.ID && s.Type == "error" })
	if err != nil {
		return "", "" // nothing came back before the ping: accepted
	}
	var e stanza.Error
	if err := s.Decode(xml.Name{Space: "jabber:client", Local: "error"}, &e); err != nil {
		t.Fatalf("error reply %s: %v", s.Raw, err)
	}
	return string(e.Condition), e.Error()
}
