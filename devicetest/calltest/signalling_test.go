package calltest

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/call"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab/labtest"
)

func phoneOptions(t *testing.T, services jid.JID) call.Options {
	return call.Options{Services: services, Loopback: true, Timeout: time.Minute, Logger: clinkdtest.Logger(t)}
}

// rawIQ sends a jingle IQ as written and returns the raw reply.
func rawIQ(t *testing.T, ctx context.Context, from *client.Client, to jid.JID, id, payload string) *client.Stanza {
	t.Helper()
	iq := fmt.Sprintf(`<iq type='set' id='%s' to='%s'>%s</iq>`, id, to, payload)
	if err := from.SendRaw(ctx, xml.NewDecoder(strings.NewReader(iq))); err != nil {
		t.Fatal(err)
	}
	s, err := from.Next(ctx, func(s *client.Stanza) bool { return s.Kind == "iq" && s.ID == id })
	if err != nil {
		t.Fatalf("no reply to %s: %v", id, err)
	}
	return s
}

// TestSignalling checks the Jingle rules a device enforces, through each
// real server: a session belongs to the full JID that opened it, so
// another device (even of the same user) cannot end, redirect or inject
// candidates into it (unknown-session); malformed requests get
// bad-request; a declined call fails with ErrDeclined; a call to a device
// that is not online fails at once; a call nobody answers ends with
// timeout.
func TestSignalling(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d := startClinkd(t, srv)
			alice := clinkdtest.NewDevice(t, srv)
			bob := clinkdtest.NewDevice(t, srv)
			mallory := clinkdtest.NewDevice(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			pa := call.NewPhone(alice, phoneOptions(t, d.Component().Domain()))
			pb := call.NewPhone(bob, phoneOptions(t, d.Component().Domain()))
			t.Cleanup(func() { pa.Close(); pb.Close() })

			ca, cb := connect(t, ctx, pa, pb, bob)

			// Mallory knows the sid (say it leaked): bob's device answers
			// as if the session did not exist, and the call goes on.
			sid := ca.SID()
			for i, payload := range []string{
				`<jingle xmlns='urn:xmpp:jingle:1' action='session-terminate' sid='` + sid + `'><reason><success/></reason></jingle>`,
				`<jingle xmlns='urn:xmpp:jingle:1' action='transport-info' sid='` + sid + `'><content creator='initiator' name='0'><transport xmlns='urn:xmpp:jingle:transports:ice-udp:1'><candidate component='1' foundation='1' generation='0' id='x' ip='192.0.2.1' network='0' port='9' priority='1' protocol='udp' type='host'/></transport></content></jingle>`,
			} {
				r := rawIQ(t, ctx, mallory, bob.JID(), fmt.Sprintf("m%d", i), payload)
				if r.Type != "error" || !strings.Contains(string(r.Raw), "item-not-found") ||
					!r.Has(xml.Name{Space: "jabber:client", Local: "error"}) || !strings.Contains(string(r.Raw), `unknown-session xmlns="urn:xmpp:jingle:errors:1"`) {
					t.Errorf("mallory's %d on alice's session: %s, want item-not-found with unknown-session", i, r.Raw)
				}
			}
			if ca.Err() != nil || cb.Err() != nil {
				t.Fatalf("the call ended: %v, %v", ca.Err(), cb.Err())
			}
			bobProbe := make(chan error, 1)
			go func() { _, err := cb.Probe(ctx, 5, 20*time.Millisecond); bobProbe <- err }()
			if _, err := ca.Probe(ctx, 5, 20*time.Millisecond); err != nil {
				t.Errorf("media to alice after mallory's attempts: %v", err)
			}
			if err := <-bobProbe; err != nil {
				t.Errorf("media to bob after mallory's attempts: %v", err)
			}

			// Malformed requests.
			for i, payload := range []string{
				// A line break in the ICE password would add an SDP line.
				`<jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='s1'><content creator='initiator' name='0'><description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'><payload-type id='111' name='opus' clockrate='48000' channels='2'/></description><transport xmlns='urn:xmpp:jingle:transports:ice-udp:1' ufrag='abcd' pwd='aaaaaaaaaaaaaaaaaaaaaa&#10;a=x'><fingerprint xmlns='urn:xmpp:jingle:apps:dtls:0' hash='sha-256' setup='actpass'>00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00</fingerprint></transport></content></jingle>`,
				`<jingle xmlns='urn:xmpp:jingle:1' action='session-steal' sid='s2'/>`,
				`<jingle xmlns='urn:xmpp:jingle:1' action='session-initiate' sid='s3'/>`,
			} {
				r := rawIQ(t, ctx, mallory, bob.JID(), fmt.Sprintf("b%d", i), payload)
				if r.Type != "error" || !strings.Contains(string(r.Raw), "bad-request") {
					t.Errorf("malformed %d: %s, want bad-request", i, r.Raw)
				}
			}
			select {
			case in := <-incomingNow(pb):
				t.Errorf("a malformed request rang: %+v", in)
			default:
			}

			if err := ca.Hangup(ctx); err != nil {
				t.Error(err)
			}
			<-cb.Done()

			// Bob declines the next call.
			go func() {
				in, err := pb.Incoming(ctx)
				if err == nil {
					err = in.Decline(ctx)
				}
				if err != nil {
					t.Errorf("bob declines: %v", err)
				}
			}()
			if _, err := pa.Call(ctx, bob.JID()); !errors.Is(err, call.ErrDeclined) {
				t.Errorf("declined call = %v, want ErrDeclined", err)
			}

			// A device that is not online.
			gone := jid.MustParse(bob.JID().Bare().String() + "/no-such-device")
			if _, err := pa.Call(ctx, gone); !errors.Is(err, stanza.Error{Condition: stanza.ServiceUnavailable}) &&
				!errors.Is(err, stanza.Error{Condition: stanza.RecipientUnavailable}) &&
				!errors.Is(err, stanza.Error{Condition: stanza.ItemNotFound}) {
				t.Errorf("call to an offline device = %v, want an error reply", err)
			}
			if _, err := pa.Call(ctx, bob.JID().Bare()); err == nil {
				t.Error("call to a bare JID succeeded, want an error")
			}

			// Nobody answers carol's device: it gives up after its timeout
			// and tells the caller.
			carol := clinkdtest.NewDevice(t, srv)
			opts := phoneOptions(t, d.Component().Domain())
			opts.Timeout = 2 * time.Second
			pc := call.NewPhone(carol, opts)
			t.Cleanup(func() { pc.Close() })
			if _, err := pa.Call(ctx, carol.JID()); !errors.Is(err, call.ErrEnded) || !strings.Contains(err.Error(), "timeout") {
				t.Errorf("unanswered call = %v, want ErrEnded with timeout", err)
			}
		})
	}
}

// incomingNow returns a channel with the phone's next ring if one is
// already waiting.
func incomingNow(p *call.Phone) <-chan *call.Incoming {
	ch := make(chan *call.Incoming, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if in, err := p.Incoming(ctx); err == nil {
		ch <- in
	}
	return ch
}
