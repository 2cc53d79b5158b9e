package devicetest

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// dialVia logs user in through addr (a proxy) with fast reconnection.
func dialVia(t *testing.T, srv *lab.XMPPServer, addr, user, pass string, tune func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{
		Addr: addr, JID: jid.MustParse(user), Password: pass, TLS: clinkdtest.TLSConfig(srv),
		BackoffMin: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
	}
	if tune != nil {
		tune(&cfg)
	}
	c, err := client.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatalf("login %s via %s: %v", user, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type body struct {
	XMLName xml.Name `xml:"jabber:client body"`
	Text    string   `xml:",chardata"`
}

// bodies reads n chat messages from c and returns their texts in order.
func bodies(ctx context.Context, t *testing.T, c *client.Client, n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		s, err := c.Next(ctx, func(s *client.Stanza) bool { return s.Kind == "message" && s.Type == "chat" })
		if err != nil {
			t.Fatalf("after %d messages (%q): %v", len(out), out, err)
		}
		var b body
		if err := s.Decode(xml.Name{Space: "jabber:client", Local: "body"}, &b); err != nil {
			t.Fatalf("message without a body: %s", s.Raw)
		}
		out = append(out, b.Text)
	}
	return out
}

// TestSessionResumes: a device whose connection is cut resumes its
// stream (XEP-0198) on both servers: what was sent to it meanwhile
// arrives once, what it sent meanwhile leaves once, in order, and it
// keeps its address. On the code before the managed session, the cut
// ended the session (Next returned ErrClosed) and the messages were
// stored offline.
func TestSessionResumes(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			aliceUser, alicePass := labtest.NewUser(t, srv)
			bobUser, bobPass := labtest.NewUser(t, srv)
			alice := clinkdtest.Login(t, srv, aliceUser, alicePass)
			proxy := clinkdtest.NewProxy(t, srv.C2SAddr)
			bob := dialVia(t, srv, proxy.Addr(), bobUser, bobPass, nil)
			bobFull := bob.JID()
			events := make(chan client.SessionEvent, 16)
			stop := bob.Watch(func(ev client.SessionEvent) { events <- ev })
			defer stop()
			send := func(from *client.Client, to jid.JID, text string) {
				t.Helper()
				if err := from.SendMessage(ctx, stanza.Message{To: to, Type: stanza.ChatMessage}, body{Text: text}); err != nil {
					t.Fatal(err)
				}
			}
			send(alice, bobFull.Bare(), "before")
			if got := bodies(ctx, t, bob, 1); got[0] != "before" {
				t.Fatalf("bob got %q", got)
			}

			proxy.Down()
			for ev := range events {
				if !ev.Up {
					break // bob noticed
				}
			}
			for i := range 5 {
				send(alice, bobFull.Bare(), fmt.Sprintf("to bob %d", i))
				send(bob, alice.JID().Bare(), fmt.Sprintf("to alice %d", i)) // kept for the resumption
			}
			// The servers have handled alice's messages (and stored them in
			// bob's waiting stream) once alice's ping is answered.
			if err := alice.Ping(ctx, jid.MustParse(srv.Domain)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // a few failed reconnection attempts
			proxy.Up()
			for ev := range events {
				if ev.Up {
					if !ev.Resumed {
						t.Fatalf("bob reconnected without resuming its stream")
					}
					break
				}
			}
			want := []string{"to bob 0", "to bob 1", "to bob 2", "to bob 3", "to bob 4"}
			if got := bodies(ctx, t, bob, 5); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("bob got %q after resuming, want %q", got, want)
			}
			for i, s := range want {
				want[i] = "to alice " + s[len("to bob "):]
			}
			if got := bodies(ctx, t, alice, 5); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("alice got %q from bob's resumed stream, want %q", got, want)
			}
			// Nothing more: no repeats on either side.
			if err := bob.Ping(ctx, jid.MustParse(srv.Domain)); err != nil {
				t.Fatal(err)
			}
			if err := alice.Ping(ctx, jid.MustParse(srv.Domain)); err != nil {
				t.Fatal(err)
			}
			short, cancelShort := context.WithTimeout(ctx, time.Second)
			defer cancelShort()
			for _, c := range []*client.Client{alice, bob} {
				if s, err := c.Next(short, func(s *client.Stanza) bool { return s.Kind == "message" && s.Type == "chat" }); !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("%s got another message: %v %s", c.JID(), err, s.Raw)
				}
			}
			if !bob.JID().Equal(bobFull) {
				t.Errorf("bob's address after resuming = %s, want %s", bob.JID(), bobFull)
			}
			if st := bob.Stats(); st.Resumed != 1 || st.Reconnects != 0 {
				t.Errorf("bob's stats = %+v, want one resumption", st)
			}
		})
	}
}
