package expiry_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/expiry"
)

const handoffDomain = "clink.example.org"

// link records what a relay sends, by recipient and first payload, and
// is the registry of online devices (a real dispatch.Devices).
type link struct {
	mu   sync.Mutex
	sent []string
}

func (l *link) SendMessage(_ context.Context, m stanza.Message, payload ...any) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	what := "?"
	if len(payload) > 0 {
		what = fmt.Sprintf("%T", payload[0])
	}
	l.sent = append(l.sent, m.To.String()+" "+what)
	return nil
}

func (l *link) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sent
	l.sent = nil
	slices.Sort(s)
	return s
}

// handoffSide is one clinkd's relay, router and registry, as the daemon
// wires them, with a recorded link.
type handoffSide struct {
	relay  *expiry.Relay
	router *dispatch.Router
	devs   *dispatch.Devices
	link   *link
}

func newHandoffSide(t testing.TB, now time.Time, lim expiry.Limits) *handoffSide {
	t.Helper()
	s := &handoffSide{link: &link{}, devs: dispatch.NewDevices(dispatch.DevicesConfig{})}
	comp := jid.MustParse(handoffDomain)
	var err error
	s.relay, err = expiry.New(expiry.Config{Component: comp, Send: s.link, Devices: s.devs, Entitlements: expiry.NoEntitlementCheck{},
		Limits: lim, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	s.router, err = dispatch.New(dispatch.Config{
		Component: comp, Devices: s.devs, Timed: s.relay, Ordinary: dispatch.Unavailable{Text: "off"},
		Watchers: []dispatch.Watcher{s.relay}, Access: dispatch.Access{Local: "example.org", PerMinute: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *handoffSide) stanza(t testing.TB, text string) error {
	t.Helper()
	st, err := component.ParseStanza(text, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	if st.Kind == component.KindPresence {
		return s.router.HandlePresence(context.Background(), st)
	}
	return s.router.HandleMessage(context.Background(), st)
}

func (s *handoffSide) announce(t testing.TB, device string) {
	t.Helper()
	user := strings.Split(device, "/")[0]
	if err := s.stanza(t, `<presence from='`+device+`' to='`+strings.Replace(user, "@", `\40`, 1)+`@`+handoffDomain+`'/>`); err != nil {
		t.Fatal(err)
	}
}

// timedEnvelope is a timed envelope from alice to bob, as canonical XML.
func timedEnvelope(t testing.TB, id string, now time.Time) string {
	t.Helper()
	alice := clinkdtest.Identity(t, "alice", "alice@example.org")
	bob := clinkdtest.Identity(t, "bob", "bob@example.org")
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}},
		envelope.Header{ID: id, Time: now, Expires: now.Add(time.Minute)}, envelope.Content{Kind: envelope.KindText, Text: "held across a handoff"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := xml.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

const (
	toBob     = `bob\40example.org@` + handoffDomain
	toAlice   = `alice\40example.org@` + handoffDomain
	storeless = `<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/>`
)

// fill gives a relay what a handoff carries: a message bob's phone got,
// one bob has not got yet, alice's sent copies of both (held at once,
// since her phone is online here) with bob's read receipt of the first, the users seen, and the devices online.
func fill(t testing.TB, s *handoffSide, now time.Time) {
	t.Helper()
	s.announce(t, "bob@example.org/phone")
	s.announce(t, "alice@example.org/phone")
	env1 := timedEnvelope(t, "m1", now)
	if err := s.stanza(t, `<message type='headline' from='alice@example.org/laptop' to='`+toBob+`'>`+env1+storeless+`</message>`); err != nil {
		t.Fatal(err)
	}
	if err := s.stanza(t, `<message type='headline' from='`+toBob+`' to='`+toAlice+`'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/laptop'/>`+env1+storeless+`</message>`); err != nil {
		t.Fatal(err)
	}
	if err := s.stanza(t, `<message type='headline' from='bob@example.org/phone' to='`+toAlice+`'><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>`+storeless+`</message>`); err != nil {
		t.Fatal(err)
	}
	// m2 arrives while bob's phone is away.
	if err := s.stanza(t, `<presence type='unavailable' from='bob@example.org/phone' to='`+toBob+`'/>`); err != nil {
		t.Fatal(err)
	}
	if err := s.stanza(t, `<message type='headline' from='alice@example.org/laptop' to='`+toBob+`'>`+timedEnvelope(t, "m2", now)+storeless+`</message>`); err != nil {
		t.Fatal(err)
	}
	s.link.take()
}

// handoff runs the protocol between two sides over a socket pair, as the
// daemon does, and returns what the taker took.
func handoff(t testing.TB, giver, taker *handoffSide) (sent, took expiry.HandoffCounts) {
	t.Helper()
	return handoffVersion(t, giver, taker, false)
}

// handoffVersion is handoff in version 1, or with balanced in version 2:
// both sides with link.balanced, the giver releasing its one link before
// the taker links.
func handoffVersion(t testing.TB, giver, taker *handoffSide, balanced bool) (sent, took expiry.HandoffCounts) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	g, c := expiry.NewHandoffConn(a), expiry.NewHandoffConn(b)
	if balanced {
		g.SetBalanced()
		c.SetBalanced()
	}
	released := func() error { return nil }
	awaitRelease := func() error { return nil }
	if balanced {
		released = func() error { return g.SendReleased(1) }
		awaitRelease = func() error {
			n, err := c.ReceiveReleased()
			if err == nil && n != 1 {
				err = fmt.Errorf("released %d links, want 1", n)
			}
			return err
		}
	}
	errc := make(chan error, 1)
	go func() {
		var err error
		for _, step := range []func() error{
			func() error { return g.ReceiveHello(handoffDomain) },
			func() error { return g.SendHello(handoffDomain) },
			released,
			g.ReceiveLinked,
			func() (err error) { sent, err = g.SendState(giver.relay, giver.devs); return err },
			func() error {
				done, err := g.ReceiveDone()
				if err == nil && done != sent {
					err = fmt.Errorf("done %+v, sent %+v", done, sent)
				}
				return err
			},
		} {
			if err = step(); err != nil {
				break
			}
		}
		errc <- err
	}()
	taker.relay.AwaitHandoff()
	taker.devs.ExpectImport()
	for _, step := range []func() error{
		func() error { return c.SendHello(handoffDomain) },
		func() error { return c.ReceiveHello(handoffDomain) },
		awaitRelease,
		c.SendLinked,
		func() (err error) { took, err = c.ReceiveState(taker.relay, taker.devs); return err },
		func() error { return c.SendDone(took) },
	} {
		if err := step(); err != nil {
			t.Fatalf("taker: %v", err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("giver: %v", err)
	}
	taker.relay.EndHandoff(context.Background())
	return sent, took
}

// TestHandoff moves a relay's state to another relay through the handoff
// protocol: everything arrives, the devices that stayed connected are
// known without announcing themselves again, each device still gets each
// message once (bob's phone, which got m1, gets only m2 when it comes
// back; a device that re-announces gets nothing twice), the receipt held
// for alice reaches her new device, and the taker sends what the giver
// could not.
func TestHandoff(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	giver, taker := newHandoffSide(t, now, expiry.Limits{}), newHandoffSide(t, now, expiry.Limits{})
	fill(t, giver, now)
	msgs, bytes := giver.relay.Held()

	sent, took := handoff(t, giver, taker)
	// m1 and m2 for bob, alice's copies of both (held here, where her
	// phone announced itself; the copy of m1 that came back through the
	// server was a repeat); bob's receipt; alice and bob seen; alice's
	// phone online.
	want := expiry.HandoffCounts{Messages: 4, Receipts: 1, Seen: 2, Devices: 1}
	if sent != want || took != want {
		t.Errorf("handoff sent %+v, took %+v; want %+v", sent, took, want)
	}
	if n, b := taker.relay.Held(); n != msgs || b != bytes {
		t.Errorf("taker holds %d messages, %d bytes; the giver held %d, %d", n, b, msgs, bytes)
	}
	if got := taker.link.take(); len(got) != 0 {
		t.Errorf("after the handoff the taker sent %q; every device online had its messages", got)
	}
	if online := taker.devs.Online(jid.MustParse("alice@example.org")); len(online) != 1 || online[0].String() != "alice@example.org/phone" {
		t.Errorf("alice's devices at the taker: %v", online)
	}

	// Bob's phone comes back: m2 only. It announces again: nothing.
	taker.announce(t, "bob@example.org/phone")
	if got, want := taker.link.take(), []string{"bob@example.org/phone *xml.Decoder"}; !slices.Equal(got, want) {
		t.Errorf("bob's phone back: sent %q, want m2 alone: %q", got, want)
	}
	taker.announce(t, "bob@example.org/phone")
	if got := taker.link.take(); len(got) != 0 {
		t.Errorf("bob's phone announced again: sent %q, want nothing", got)
	}
	// Alice's phone, online throughout, announces again: no message
	// again, only the held receipt (receipts go to every announcement);
	// a new device of hers gets the copies and the receipt.
	taker.announce(t, "alice@example.org/phone")
	if got, want := taker.link.take(), []string{"alice@example.org/phone markers.Displayed"}; !slices.Equal(got, want) {
		t.Errorf("alice's phone announced again: sent %q, want %q", got, want)
	}
	taker.announce(t, "alice@example.org/tablet")
	if got, want := taker.link.take(), []string{"alice@example.org/tablet expiryxml.Sent", "alice@example.org/tablet expiryxml.Sent", "alice@example.org/tablet markers.Displayed"}; !slices.Equal(got, want) {
		t.Errorf("alice's new tablet: sent %q, want %q", got, want)
	}
}

// announceAs announces a device with the stable id it chose
// (expiryxml.Device), as the SDK does.
func (s *handoffSide) announceAs(t testing.TB, device, id string) {
	t.Helper()
	user := strings.Split(device, "/")[0]
	if err := s.stanza(t, `<presence from='`+device+`' to='`+strings.Replace(user, "@", `\40`, 1)+`@`+handoffDomain+`'><device xmlns='urn:clinkme:expiry:0' id='`+id+`'/></presence>`); err != nil {
		t.Fatal(err)
	}
}

// TestHandoffKeepsDeviceIDs: what a device got is carried across a
// handoff by the id it announced, so the same device back on a new
// resource after the takeover gets nothing twice, while another device
// of the user still gets the message.
func TestHandoffKeepsDeviceIDs(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	giver, taker := newHandoffSide(t, now, expiry.Limits{}), newHandoffSide(t, now, expiry.Limits{})
	giver.announceAs(t, "bob@example.org/r1", "bobs-phone")
	env := timedEnvelope(t, "m1", now)
	if err := giver.stanza(t, `<message type='headline' from='alice@example.org/laptop' to='`+toBob+`'>`+env+storeless+`</message>`); err != nil {
		t.Fatal(err)
	}
	// Bob's phone gets m1; alice's copy leaves for her other devices.
	if got, want := giver.link.take(), []string{toAlice + " expiryxml.Copy", "bob@example.org/r1 *xml.Decoder"}; !slices.Equal(got, want) {
		t.Fatalf("bob's phone online: sent %q, want %q", got, want)
	}
	if err := giver.stanza(t, `<presence type='unavailable' from='bob@example.org/r1' to='`+toBob+`'/>`); err != nil {
		t.Fatal(err)
	}

	handoff(t, giver, taker)
	taker.announceAs(t, "bob@example.org/r2", "bobs-phone")
	if got := taker.link.take(); len(got) != 0 {
		t.Errorf("bob's phone back on a new resource after the handoff: sent %q, want nothing", got)
	}
	taker.announceAs(t, "bob@example.org/r3", "bobs-tablet")
	if got, want := taker.link.take(), []string{"bob@example.org/r3 *xml.Decoder"}; !slices.Equal(got, want) {
		t.Errorf("bob's tablet: sent %q, want %q", got, want)
	}
}

// TestHandoffOwedCopy: a copy for the sender's other devices that could
// not go out (the link moved under it) travels with the message, and the
// taker sends it.
func TestHandoffOwedCopy(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	giver, taker := newHandoffSide(t, now, expiry.Limits{}), newHandoffSide(t, now, expiry.Limits{})
	giver.relay = mustRelay(t, now, failingLink{}, giver.devs)
	router, err := dispatch.New(dispatch.Config{
		Component: jid.MustParse(handoffDomain), Devices: giver.devs, Timed: giver.relay, Ordinary: dispatch.Unavailable{Text: "off"},
		Access: dispatch.Access{Local: "example.org", PerMinute: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	giver.router = router
	if err := giver.stanza(t, `<message type='headline' from='alice@example.org/laptop' to='`+toBob+`'>`+timedEnvelope(t, "m3", now)+storeless+`</message>`); err != nil {
		t.Fatal(err)
	}
	handoff(t, giver, taker)
	if got, want := taker.link.take(), []string{toAlice + " expiryxml.Copy"}; !slices.Equal(got, want) {
		t.Errorf("the taker sent %q, want the copy the giver owed: %q", got, want)
	}
}

type failingLink struct{}

func (failingLink) SendMessage(context.Context, stanza.Message, ...any) error {
	return component.ErrNotLinked
}

func mustRelay(t testing.TB, now time.Time, send expiry.Sender, devs *dispatch.Devices) *expiry.Relay {
	t.Helper()
	r, err := expiry.New(expiry.Config{Component: jid.MustParse(handoffDomain), Send: send, Devices: devs,
		Entitlements: expiry.NoEntitlementCheck{}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// stream builds what a peer sends: frames of a type and body.
func frame(typ byte, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)+1))
	return append(append(b, typ), body...)
}

func str16(s string) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...) }

func hello(version uint16, domain string) []byte {
	b := append([]byte("clinkd-handoff"), binary.BigEndian.AppendUint16(nil, version)...)
	return frame(0x01, append(b, str16(domain)...))
}

// recordedState is what a giver with fill's state sends after its hello.
func recordedState(t testing.TB) []byte {
	t.Helper()
	now := time.Unix(1_800_000_000, 0).UTC()
	s := newHandoffSide(t, now, expiry.Limits{})
	fill(t, s, now)
	var buf bytes.Buffer
	c := expiry.NewHandoffConn(&struct {
		io.Reader
		io.Writer
	}{strings.NewReader(""), &buf})
	if _, err := c.SendState(s.relay, s.devs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestHandoffRefusesStrangers: a peer that is not a clinkd of this
// protocol version and component, or whose frames are truncated,
// malformed or out of order, is refused with ErrHandoffProtocol (a
// refusal frame with ErrHandoffRefused), and the taker takes nothing of
// a state that does not arrive whole.
func TestHandoffRefusesStrangers(t *testing.T) {
	t.Parallel()
	state := recordedState(t)
	const endFrame = 4 + 1 + 16 // the end frame closes the state: length, type, four counts
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"nothing", nil, io.EOF},
		{"an HTTP client", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), expiry.ErrHandoffProtocol},
		{"zero-length frame", []byte{0, 0, 0, 0}, expiry.ErrHandoffProtocol},
		{"oversized frame", []byte{0xff, 0xff, 0xff, 0xff, 1}, expiry.ErrHandoffProtocol},
		{"truncated header", []byte{0, 0}, expiry.ErrHandoffProtocol},
		{"truncated hello", hello(1, handoffDomain)[:10], expiry.ErrHandoffProtocol},
		{"no magic", frame(0x01, []byte("clinkd-handof\x00\x01")), expiry.ErrHandoffProtocol},
		{"version 2", hello(2, handoffDomain), expiry.ErrHandoffProtocol},
		{"version 0", hello(0, handoffDomain), expiry.ErrHandoffProtocol},
		{"another component", hello(1, "other.example.org"), expiry.ErrHandoffProtocol},
		{"trailing bytes", frame(0x01, append(hello(1, handoffDomain)[5:], 0)), expiry.ErrHandoffProtocol},
		{"a state before the hello", state, expiry.ErrHandoffProtocol},
		{"a refusal", frame(0x7f, str16("busy")), expiry.ErrHandoffRefused},
	}
	for _, tt := range tests {
		c := expiry.NewHandoffConn(&struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(tt.in), io.Discard})
		if err := c.ReceiveHello(handoffDomain); !errors.Is(err, tt.want) {
			t.Errorf("ReceiveHello(%s) = %v, want %v", tt.name, err, tt.want)
		}
	}

	now := time.Unix(1_800_000_000, 0).UTC()
	states := []struct {
		name string
		in   []byte
	}{
		{"truncated state", state[:len(state)/2]},
		{"state without its end", state[:len(state)-endFrame]},
		{"an unknown frame", append(frame(0x33, []byte{1}), state...)},
		{"a hello in the state", append(hello(1, handoffDomain), state...)},
		{"counts that do not match", append(state[:len(state)-endFrame], frame(0x1f, make([]byte, 16))...)},
		{"a device of another user", append(frame(0x13, slices.Concat(str16("alice@example.org"), str16("mallory@example.org/x"), make([]byte, 8))), state...)},
		{"a user with a resource", append(frame(0x12, str16("alice@example.org/x")), state...)},
		{"a message id with a space", append(frame(0x11, slices.Concat(str16("alice@example.org"), str16("bob@example.org"), []byte{1, 0}, str16("a b"), make([]byte, 8))), state...)},
	}
	for _, tt := range states {
		s := newHandoffSide(t, now, expiry.Limits{})
		c := expiry.NewHandoffConn(&struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(tt.in), io.Discard})
		_, err := c.ReceiveState(s.relay, s.devs)
		if !errors.Is(err, expiry.ErrHandoffProtocol) {
			t.Errorf("ReceiveState(%s) = %v, want %v", tt.name, err, expiry.ErrHandoffProtocol)
		}
		if n, _ := s.relay.Held(); n != 0 || len(s.devs.Export()) != 0 {
			t.Errorf("ReceiveState(%s) took %d messages and %d devices of a state that did not arrive whole", tt.name, n, len(s.devs.Export()))
		}
	}
}

// TestHandoffQuotas: a taker configured with smaller quotas takes what
// fits, drops the rest, and says so in its counts.
func TestHandoffQuotas(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	giver := newHandoffSide(t, now, expiry.Limits{})
	fill(t, giver, now)
	taker := newHandoffSide(t, now, expiry.Limits{PerUserMessages: 1, PerSenderMessages: 10, PerSenderBytes: 1 << 30})
	sent, took := func() (expiry.HandoffCounts, expiry.HandoffCounts) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		var sent expiry.HandoffCounts
		done := make(chan struct{})
		go func() {
			defer close(done)
			sent, _ = expiry.NewHandoffConn(a).SendState(giver.relay, giver.devs)
		}()
		took, err := expiry.NewHandoffConn(b).ReceiveState(taker.relay, taker.devs)
		if err != nil {
			t.Fatal(err)
		}
		<-done
		return sent, took
	}()
	if sent.Messages != 4 || took.Messages != 2 {
		t.Errorf("sent %d messages, took %d; want 4 and 2 (one per user)", sent.Messages, took.Messages)
	}
	if n, _ := taker.relay.Held(); n != 2 {
		t.Errorf("taker holds %d", n)
	}
	if sent.Devices != took.Devices {
		t.Errorf("devices sent %d, took %d", sent.Devices, took.Devices)
	}
}

// FuzzHandoff feeds arbitrary bytes to a taker as its giver's hello and
// state: no input may panic, and either the taker refuses it and takes
// nothing, or it takes what the counts say within its quotas.
func FuzzHandoff(f *testing.F) {
	state := recordedState(f)
	f.Add(append(hello(1, handoffDomain), state...))
	f.Add(append(hello(1, handoffDomain), state[:len(state)/3]...))
	f.Add(hello(2, handoffDomain))
	hello2 := frame(0x01, append(append(append([]byte("clinkd-handoff"), 0, 2), str16(handoffDomain)...), 0))
	f.Add(append(append(hello2, frame(0x03, []byte{0, 1})...), state...))
	f.Add(frame(0x7f, str16("busy")))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	now := time.Unix(1_800_000_000, 0).UTC()
	f.Fuzz(func(t *testing.T, in []byte) {
		s := newHandoffSide(t, now, expiry.Limits{PerUserMessages: 2, TotalBytes: 1 << 20})
		c := expiry.NewHandoffConn(&struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), io.Discard})
		// A hello of version 2 (its version at bytes 19-20): the taker of
		// a balanced link, which reads released before the state.
		balanced := len(in) > 20 && in[19] == 0 && in[20] == expiry.HandoffVersionBalanced
		if balanced {
			c.SetBalanced()
		}
		if err := c.ReceiveHello(handoffDomain); err != nil {
			return
		}
		if balanced {
			if _, err := c.ReceiveReleased(); err != nil {
				return
			}
		}
		took, err := c.ReceiveState(s.relay, s.devs)
		n, size := s.relay.Held()
		if err != nil {
			if n != 0 || len(s.devs.Export()) != 0 {
				t.Fatalf("refused (%v) but took %d messages, %d devices", err, n, len(s.devs.Export()))
			}
			return
		}
		if n != took.Messages || size > 1<<20 || took.Devices != len(s.devs.Export()) {
			t.Fatalf("took %+v, holds %d messages, %d bytes, %d devices", took, n, size, len(s.devs.Export()))
		}
	})
}

// TestHandoffQuiet: a giver readying a handoff (Quiesce) holds what it is
// handed but sends nothing, since its link may already be closed under
// it; the taker sends it all. A giver whose handoff does not happen
// (Resume) sends it itself.
func TestHandoffQuiet(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	quietFill := func(s *handoffSide) {
		t.Helper()
		s.announce(t, "bob@example.org/phone")
		s.announce(t, "alice@example.org/phone")
		env := timedEnvelope(t, "q1", now)
		// A copy from alice's laptop held before; then quiet.
		if err := s.stanza(t, `<message type='headline' from='`+toBob+`' to='`+toAlice+`'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/laptop'/>`+env+storeless+`</message>`); err != nil {
			t.Fatal(err)
		}
		s.link.take()
		s.relay.Quiesce()
		for _, st := range []string{
			`<message type='headline' from='alice@example.org/laptop' to='` + toBob + `'>` + env + storeless + `</message>`,
			`<message type='headline' from='bob@example.org/phone' to='` + toAlice + `'><received xmlns='urn:xmpp:receipts' id='q1'/>` + storeless + `</message>`,
		} {
			if err := s.stanza(t, st); err != nil {
				t.Fatal(err)
			}
		}
		s.announce(t, "alice@example.org/tablet")
		if got := s.link.take(); len(got) != 0 {
			t.Fatalf("a quiet relay sent %q", got)
		}
	}
	want := []string{
		"alice@example.org/phone receiptsxml.Received",
		"alice@example.org/tablet expiryxml.Sent",
		"alice@example.org/tablet receiptsxml.Received",
		"bob@example.org/phone *xml.Decoder",
		// No copy through the server: alice's devices are here, where
		// her copy of q1 is held already.
	}
	slices.Sort(want)

	giver, taker := newHandoffSide(t, now, expiry.Limits{}), newHandoffSide(t, now, expiry.Limits{})
	quietFill(giver)
	handoff(t, giver, taker)
	if got := taker.link.take(); !slices.Equal(got, want) {
		t.Errorf("after the handoff the taker sent\n%q\nwant\n%q", got, want)
	}

	alone := newHandoffSide(t, now, expiry.Limits{})
	quietFill(alone)
	alone.relay.Resume(context.Background())
	if got := alone.link.take(); !slices.Equal(got, want) {
		t.Errorf("after Resume the relay sent\n%q\nwant\n%q", got, want)
	}
}

// TestCopyWhereTheSenderIs: the copy of a timed message for its sender's
// other devices goes through the server to the sender's address only
// when the sender's devices are not known here (with ejabberd's
// bare_destination balancing, another instance owns the sender); when
// they are, it is held here at once and delivered to them, and nothing
// goes through the server.
func TestCopyWhereTheSenderIs(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	s := newHandoffSide(t, now, expiry.Limits{})
	s.announce(t, "bob@example.org/phone")
	s.link.take()
	send := func(id string) {
		t.Helper()
		if err := s.stanza(t, `<message type='headline' from='alice@example.org/laptop' to='`+toBob+`'>`+timedEnvelope(t, id, now)+storeless+`</message>`); err != nil {
			t.Fatal(err)
		}
	}
	send("elsewhere")
	if got, want := s.link.take(), []string{toAlice + " expiryxml.Copy", "bob@example.org/phone *xml.Decoder"}; !slices.Equal(got, want) {
		t.Errorf("alice unknown here: sent %q, want %q", got, want)
	}
	if n, _ := s.relay.Held(); n != 1 {
		t.Errorf("alice unknown here: holds %d, want the message alone (her instance holds the copy)", n)
	}

	s.announce(t, "alice@example.org/phone")
	s.link.take()
	send("here")
	if got, want := s.link.take(), []string{"alice@example.org/phone expiryxml.Sent", "bob@example.org/phone *xml.Decoder"}; !slices.Equal(got, want) {
		t.Errorf("alice's phone here: sent %q, want %q", got, want)
	}
	if n, _ := s.relay.Held(); n != 3 {
		t.Errorf("alice's phone here: holds %d, want 3 (the two messages, the second's copy)", n)
	}
	// The copy, held, reaches a device of hers that comes later, and the
	// sending device never gets its own message back.
	s.announce(t, "alice@example.org/tablet")
	if got, want := s.link.take(), []string{"alice@example.org/tablet expiryxml.Sent"}; !slices.Equal(got, want) {
		t.Errorf("alice's tablet: sent %q, want %q", got, want)
	}
	s.announce(t, "alice@example.org/laptop")
	if got := s.link.take(); len(got) != 0 {
		t.Errorf("alice's laptop, which sent it: sent %q, want nothing", got)
	}
}

// TestHandoffBalanced runs version 2 of the protocol (link.balanced): the
// giver gives up its link and says so (released) before the taker links;
// a clinkd of either version refuses the other, naming link.balanced.
func TestHandoffBalanced(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	giver, taker := newHandoffSide(t, now, expiry.Limits{}), newHandoffSide(t, now, expiry.Limits{})
	fill(t, giver, now)
	sent, took := handoffVersion(t, giver, taker, true)
	if want := (expiry.HandoffCounts{Messages: 4, Receipts: 1, Seen: 2, Devices: 1}); sent != want || took != want {
		t.Errorf("sent %+v, took %+v; want %+v", sent, took, want)
	}

	for _, tc := range []struct {
		name                    string
		takerBalanced, balanced bool
		want                    string
	}{
		{"a balanced giver, an unbalanced taker", false, true, "this clinkd has link.balanced and the peer does not"},
		{"an unbalanced giver, a balanced taker", true, false, "the peer has link.balanced and this clinkd does not"},
	} {
		a, b := net.Pipe()
		g, tk := expiry.NewHandoffConn(a), expiry.NewHandoffConn(b)
		if tc.balanced {
			g.SetBalanced()
		}
		if tc.takerBalanced {
			tk.SetBalanced()
		}
		go tk.SendHello(handoffDomain)
		err := g.ReceiveHello(handoffDomain)
		if !errors.Is(err, expiry.ErrHandoffProtocol) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: the giver read the hello with %v, want a protocol violation saying %q", tc.name, err, tc.want)
		}
		a.Close()
		b.Close()
	}
}

// TestHandoffOffer: a stopping clinkd's hello offers (scale-in); the
// sibling sees the offer and answers in the same mode; a taker's hello is
// not an offer; a mode this version does not know is refused.
func TestHandoffOffer(t *testing.T) {
	t.Parallel()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	stopping, sibling := expiry.NewHandoffConn(a), expiry.NewHandoffConn(b)
	stopping.SetOffer()
	sibling.SetBalanced()
	go stopping.SendHello(handoffDomain)
	if err := sibling.ReceiveHello(handoffDomain); err != nil || !sibling.Offer() {
		t.Fatalf("the sibling read the offer: %v, offer %v", err, sibling.Offer())
	}
	sibling.SetOffer()
	go sibling.SendHello(handoffDomain)
	if err := stopping.ReceiveHello(handoffDomain); err != nil || !stopping.Offer() {
		t.Fatalf("the stopping clinkd read the answer: %v, offer %v", err, stopping.Offer())
	}

	c, d := net.Pipe()
	defer c.Close()
	defer d.Close()
	taker, giver := expiry.NewHandoffConn(c), expiry.NewHandoffConn(d)
	taker.SetBalanced()
	giver.SetBalanced()
	go taker.SendHello(handoffDomain)
	if err := giver.ReceiveHello(handoffDomain); err != nil || giver.Offer() {
		t.Fatalf("a takeover's hello: %v, offer %v", err, giver.Offer())
	}

	e, f := net.Pipe()
	defer e.Close()
	defer f.Close()
	go e.Write(frame(0x01, append(append(append([]byte("clinkd-handoff"), 0, 2), str16(handoffDomain)...), 7)))
	other := expiry.NewHandoffConn(f)
	other.SetBalanced()
	if err := other.ReceiveHello(handoffDomain); !errors.Is(err, expiry.ErrHandoffProtocol) {
		t.Errorf("a hello of mode 7: %v, want a protocol violation", err)
	}
}
