package component

import (
	"context"
	"encoding/xml"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

const testNS = "urn:clinkme:test:0"

type echoPayload struct {
	XMLName xml.Name `xml:"urn:clinkme:test:0 echo"`
	Text    string   `xml:"text,attr"`
}

// newTestComponent starts a Component against a fake server and returns
// the server side of its first connection.
func newTestComponent(t *testing.T, tune func(*Config), register func(*Component)) (*Component, *fakeServer, *fakeConn) {
	t.Helper()
	f := startFake(t, "s3cret")
	cfg := Config{
		Addr:       f.ln.Addr().String(),
		Domain:     jid.MustParse("clink.example"),
		Secret:     []byte("s3cret"),
		BackoffMin: 10 * time.Millisecond,
		BackoffMax: 50 * time.Millisecond,
	}
	if tune != nil {
		tune(&cfg)
	}
	c, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if register != nil {
		register(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	conn := f.next(t)
	if err := c.WaitState(context.Background(), Linked); err != nil {
		t.Fatal(err)
	}
	return c, f, conn
}

func echoHandler(ctx context.Context, iq *Stanza) (any, error) {
	var p echoPayload
	if err := iq.Decode(xml.Name{Space: testNS, Local: "echo"}, &p); err != nil {
		return nil, err
	}
	if p.Text == "panic" {
		panic("asked to")
	}
	if p.Text == "refuse" {
		return nil, Error(stanza.NotAcceptable, "refused as asked")
	}
	return p, nil
}

func registerEcho(c *Component) {
	c.HandleIQ(xml.Name{Space: testNS, Local: "echo"}, IQHandlerFunc(echoHandler))
}

func TestRouting(t *testing.T) {
	t.Parallel()
	_, _, conn := newTestComponent(t, func(c *Config) { c.MaxStanzaBytes = 4096 }, registerEcho)

	tests := []struct {
		name      string
		in        string
		wantType  string
		wantInner string // substring of the reply's inner XML
	}{
		{"disco info", `<iq type='get' id='1' from='u@example/r' to='clink.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
			"result", `<identity xmlns="http://jabber.org/protocol/disco#info" category="component" type="generic" name="clinkd">`},
		{"disco lists handler", `<iq type='get' id='2' from='u@example/r' to='clink.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
			"result", `var="` + testNS + `"`},
		{"disco node", `<iq type='get' id='3' from='u@example/r' to='clink.example'><query xmlns='http://jabber.org/protocol/disco#info' node='x'/></iq>`,
			"error", `<item-not-found`},
		{"disco items", `<iq type='get' id='4' from='u@example/r' to='clink.example'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>`,
			"result", `<query xmlns="http://jabber.org/protocol/disco#items">`},
		{"ping", `<iq type='get' id='5' from='u@example/r' to='clink.example'><ping xmlns='urn:xmpp:ping'/></iq>`,
			"result", ``},
		{"ping set", `<iq type='set' id='6' from='u@example/r' to='clink.example'><ping xmlns='urn:xmpp:ping'/></iq>`,
			"error", `<service-unavailable`},
		{"unknown payload", `<iq type='get' id='7' from='u@example/r' to='clink.example'><x xmlns='urn:nobody'/></iq>`,
			"error", `<service-unavailable`},
		{"no payload", `<iq type='get' id='8' from='u@example/r' to='clink.example'/>`,
			"error", `<bad-request`},
		{"two payloads", `<iq type='get' id='9' from='u@example/r' to='clink.example'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>`,
			"error", `<bad-request`},
		{"handler error", `<iq type='set' id='11' from='u@example/r' to='clink.example'><echo xmlns='` + testNS + `' text='refuse'/></iq>`,
			"error", `refused as asked`},
		{"handler panic", `<iq type='set' id='12' from='u@example/r' to='clink.example'><echo xmlns='` + testNS + `' text='panic'/></iq>`,
			"error", `<internal-server-error`},
		{"echo", `<iq type='set' id='13' from='u@example/r' to='clink.example'><echo xmlns='` + testNS + `' text='hi'/></iq>`,
			"result", `text="hi"`},
		{"oversized", `<iq type='set' id='14' from='u@example/r' to='clink.example'><echo xmlns='` + testNS + `' text='` + strings.Repeat("a", 5000) + `'/></iq>`,
			"error", `<policy-violation`},
		{"message without handler", `<message id='15' from='u@example/r' to='clink.example'><body>hi</body></message>`,
			"error", `<service-unavailable`},
	}
	for _, tt := range tests {
		conn.send(t, tt.in)
		g := conn.read(t)
		id := tt.in[strings.Index(tt.in, "id='")+4:]
		id = id[:strings.Index(id, "'")]
		if g.ID != id || g.Type != tt.wantType || !strings.Contains(g.Inner, tt.wantInner) {
			t.Errorf("%s: reply id=%q type=%q inner=%s; want id=%q type=%q containing %q", tt.name, g.ID, g.Type, g.Inner, id, tt.wantType, tt.wantInner)
		}
		if g.To != "u@example/r" || g.From != "clink.example" {
			t.Errorf("%s: reply from=%q to=%q, want from clink.example to u@example/r", tt.name, g.From, g.To)
		}
	}
}

func TestNeverAnswersErrorsOrResults(t *testing.T) {
	t.Parallel()
	_, _, conn := newTestComponent(t, nil, registerEcho)
	for i, in := range []string{
		`<iq type='error' id='e1' from='u@example/r' to='clink.example'><ping xmlns='urn:xmpp:ping'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`,
		`<iq type='result' id='e2' from='u@example/r' to='clink.example'/>`,
		`<message type='error' id='e3' from='u@example/r' to='clink.example'><body>x</body><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>`,
		`<presence type='error' id='e4' from='u@example/r' to='clink.example'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`,
		`<iq type='error' id='e5' from='u@example/r' to='clink.example'><echo xmlns='` + testNS + `' text='` + strings.Repeat("a", 300000) + `'/></iq>`,
		`<iq type='get' id='e6' to='clink.example'><ping xmlns='urn:xmpp:ping'/></iq>`, // no from: nobody to answer
		`<unknown xmlns='urn:nobody'><child/></unknown>`,
	} {
		conn.send(t, in)
		conn.pingRoundTrip(t, fmt.Sprintf("after-%d", i))
	}
}

func TestSendIQ(t *testing.T) {
	t.Parallel()
	c, _, conn := newTestComponent(t, nil, nil)
	got := make(chan error, 1)
	go func() {
		reply, err := c.SendIQ(context.Background(), stanza.IQ{ID: "q1", Type: stanza.GetIQ, To: jid.MustParse("example"), From: c.Domain()}, pingPayload{})
		if err == nil && reply.ID != "q1" {
			err = fmt.Errorf("reply id %q", reply.ID)
		}
		got <- err
	}()
	req := conn.read(t)
	if req.ID != "q1" || !strings.Contains(req.Inner, "urn:xmpp:ping") {
		t.Fatalf("request = %+v", req)
	}
	conn.send(t, `<iq type='result' id='q1' from='example' to='clink.example'/>`)
	if err := <-got; err != nil {
		t.Fatalf("SendIQ = %v", err)
	}

	go func() {
		_, err := c.SendIQ(context.Background(), stanza.IQ{ID: "q2", Type: stanza.GetIQ, To: jid.MustParse("example"), From: c.Domain()}, pingPayload{})
		got <- err
	}()
	conn.read(t)
	conn.send(t, `<iq type='error' id='q2' from='example' to='clink.example'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`)
	if err := <-got; err == nil || !strings.Contains(err.Error(), "item-not-found") {
		t.Fatalf("SendIQ error reply = %v, want item-not-found", err)
	}
}

func TestRelinks(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		cut  func(*fakeConn)
	}{
		{"stream close", func(c *fakeConn) { c.Write([]byte(`</stream:stream>`)) }},
		{"stream error", func(c *fakeConn) {
			c.Write([]byte(`<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>`))
		}},
		{"tcp drop", func(c *fakeConn) { c.Close() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, f, conn := newTestComponent(t, nil, nil)
			tt.cut(conn)
			conn2 := f.next(t)
			if err := c.WaitState(context.Background(), Linked); err != nil {
				t.Fatal(err)
			}
			conn2.pingRoundTrip(t, "after-relink")
			if n := testutil.ToFloat64(c.metrics.Reconnects); n != 1 {
				t.Errorf("reconnects = %v, want 1", n)
			}
		})
	}
}

func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	t.Parallel()
	c, f, conn := newTestComponent(t, func(c *Config) {
		c.ServerDomain = jid.MustParse("example")
		c.PingInterval = 200 * time.Millisecond
		c.PingTimeout = 300 * time.Millisecond
	}, nil)
	// The fake reads (so the component's writes succeed) but never
	// answers: a peer that vanished behind a middlebox.
	ping := conn.read(t)
	if !strings.Contains(ping.Inner, "urn:xmpp:ping") || ping.To != "example" {
		t.Fatalf("first stanza after silence = %+v, want a ping to example", ping)
	}
	go func() { discardInput(conn) }()
	f.next(t)
	if err := c.WaitState(context.Background(), Linked); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(c.metrics.LinkFailures.WithLabelValues("keepalive")); n < 1 {
		t.Errorf("keepalive failures = %v, want ≥ 1", n)
	}
}

func discardInput(c *fakeConn) {
	buf := make([]byte, 4096)
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// TestFloodIsRefusedNotQueued: a sender that sends more than its queue
// holds while its handlers are slow gets resource-constraint at once for
// the rest, no goroutine is started per stanza, and every stanza gets
// exactly one answer: a result once the handlers run, or the refusal.
func TestFloodIsRefusedNotQueued(t *testing.T) {
	// Not parallel: it counts the process's goroutines, which parallel
	// tests would change under it.
	var release = make(chan struct{})
	var handled atomic.Int32
	_, _, conn := newTestComponent(t, func(c *Config) { c.Workers = 2; c.QueueDepth = 4 }, func(c *Component) {
		c.HandleIQ(xml.Name{Space: testNS, Local: "slow"}, IQHandlerFunc(func(ctx context.Context, iq *Stanza) (any, error) {
			<-release
			handled.Add(1)
			return nil, nil
		}))
	})
	before := runtime.NumGoroutine()
	const n = 200
	go func() {
		for i := range n {
			conn.send(t, fmt.Sprintf(`<iq type='set' id='s%d' from='flood@example/r' to='clink.example'><slow xmlns='%s'/></iq>`, i, testNS))
		}
	}()
	// One stanza of the sender runs (blocked), at most four wait; every
	// other is refused without waiting for the handlers.
	answers := map[string]string{}
	for len(answers) < n-5 {
		g := conn.read(t)
		if g.Type != "error" || !strings.Contains(g.Inner, "resource-constraint") || !strings.Contains(g.Inner, "requests waiting") {
			t.Fatalf("reply %+v before release, want a resource-constraint refusal", g)
		}
		answers[g.ID] = "refused"
	}
	time.Sleep(100 * time.Millisecond) // let the writes' own goroutines end
	if g := runtime.NumGoroutine(); g > before+5 {
		t.Errorf("goroutines grew from %d to %d under the flood", before, g)
	}
	if h := handled.Load(); h != 0 {
		t.Fatalf("handled %d before release", h)
	}
	close(release)
	results := 0
	for len(answers) < n {
		g := conn.read(t)
		if _, dup := answers[g.ID]; dup {
			t.Fatalf("second answer to %s: %+v", g.ID, g)
		}
		answers[g.ID] = g.Type
		if g.Type == "result" {
			results++
		}
	}
	if results < 4 || results > 5 {
		t.Errorf("%d results, want the 4 or 5 stanzas that fit the sender's queue (and the one running)", results)
	}
}

// TestFairness: while one sender keeps every worker's share of its queue
// busy with slow requests, another sender's ping is answered before the
// flooding sender's next request, because senders take turns.
func TestFairness(t *testing.T) {
	t.Parallel()
	var release = make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // never leave a handler blocked
	_, _, conn := newTestComponent(t, func(c *Config) { c.Workers = 1; c.QueueDepth = 8 }, func(c *Component) {
		c.HandleIQ(xml.Name{Space: testNS, Local: "slow"}, IQHandlerFunc(func(ctx context.Context, iq *Stanza) (any, error) {
			<-release
			return nil, nil
		}))
	})
	for i := range 8 {
		conn.send(t, fmt.Sprintf(`<iq type='set' id='f%d' from='flood@example/r' to='clink.example'><slow xmlns='%s'/></iq>`, i, testNS))
	}
	conn.send(t, `<iq type='get' id='other' from='quiet@example/r' to='clink.example'><ping xmlns='urn:xmpp:ping'/></iq>`)
	// Give the read loop time to queue everything, then let one slow
	// request finish at a time: the quiet sender's ping is next.
	time.Sleep(100 * time.Millisecond)
	release <- struct{}{}
	if g := conn.read(t); g.ID != "f0" {
		t.Fatalf("first answer %s, want f0", g.ID)
	}
	if g := conn.read(t); g.ID != "other" || g.Type != "result" {
		t.Fatalf("second answer %+v, want the quiet sender's ping before the flood's f1", g)
	}
	once.Do(func() { close(release) })
	for i := 1; i < 8; i++ {
		if g := conn.read(t); g.ID != fmt.Sprintf("f%d", i) {
			t.Fatalf("answer %s, want f%d: one sender's requests in order", g.ID, i)
		}
	}
}

// TestDeadlineFromArrival: a request that waited in the queue longer than
// HandlerTimeout is answered resource-constraint without running the
// handler, because its requester's time is up.
func TestDeadlineFromArrival(t *testing.T) {
	t.Parallel()
	var release = make(chan struct{})
	var ran atomic.Int32
	_, _, conn := newTestComponent(t, func(c *Config) { c.Workers = 1; c.HandlerTimeout = 200 * time.Millisecond }, func(c *Component) {
		c.HandleIQ(xml.Name{Space: testNS, Local: "slow"}, IQHandlerFunc(func(ctx context.Context, iq *Stanza) (any, error) {
			ran.Add(1)
			<-release
			return nil, nil
		}))
	})
	conn.send(t, fmt.Sprintf(`<iq type='set' id='first' from='a@example/r' to='clink.example'><slow xmlns='%s'/></iq>`, testNS))
	conn.send(t, fmt.Sprintf(`<iq type='set' id='second' from='b@example/r' to='clink.example'><slow xmlns='%s'/></iq>`, testNS))
	time.Sleep(400 * time.Millisecond) // past the second one's deadline, while it waits
	close(release)
	got := map[string]gotStanza{}
	for range 2 {
		g := conn.read(t)
		got[g.ID] = g
	}
	if got["first"].Type != "result" {
		t.Errorf("first = %+v, want result (its handler ran)", got["first"])
	}
	if g := got["second"]; g.Type != "error" || !strings.Contains(g.Inner, "resource-constraint") {
		t.Errorf("second = %+v, want resource-constraint", g)
	}
	if n := ran.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1: a request past its deadline is not started", n)
	}
}

func TestRegisterAfterRunPanics(t *testing.T) {
	t.Parallel()
	c, _, _ := newTestComponent(t, nil, nil)
	defer func() {
		if recover() == nil {
			t.Error("HandleIQ after Run did not panic")
		}
	}()
	registerEcho(c)
}

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: 2 * time.Second}
	want := []time.Duration{100, 200, 400, 800, 1600, 2000, 2000}
	for i, w := range want {
		w *= time.Millisecond
		got := b.next()
		if got < w/2 || got > w {
			t.Errorf("wait %d = %v, want in [%v, %v]", i, got, w/2, w)
		}
	}
	b.reset()
	if got := b.next(); got > 100*time.Millisecond {
		t.Errorf("after reset: %v, want ≤ 100ms", got)
	}
}

// TestWriteTimeoutRelinks: when the server stops reading, a write times out
// within SendTimeout and the link is re-made instead of lingering as a
// session that can read but never write.
func TestWriteTimeoutRelinks(t *testing.T) {
	t.Parallel()
	c, f, _ := newTestComponent(t, func(c *Config) { c.SendTimeout = 300 * time.Millisecond }, nil)
	big := strings.Repeat("x", 64<<10)
	var err error
	start := time.Now()
	for range 1000 {
		err = c.SendMessage(context.Background(), stanza.Message{To: jid.MustParse("u@example"), From: c.Domain()}, echoPayload{Text: big})
		if err != nil {
			break
		}
	}
	if err == nil {
		t.Fatal("64 MB sent to a server that reads nothing")
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the blocked write took %v to fail, want about SendTimeout", d)
	}
	conn2 := f.next(t)
	if err := c.WaitState(context.Background(), Linked); err != nil {
		t.Fatal(err)
	}
	conn2.pingRoundTrip(t, "after-write-timeout")
}

// TestLearnHome: only the server's answer to a home probe teaches a
// balanced link its home address, and only the first; a stanza a user
// addressed to look like one is not taken, and an unbalanced link learns
// nothing (its pings go from the domain).
func TestLearnHome(t *testing.T) {
	t.Parallel()
	const server, comp = "example.org", "clink.example.org"
	for _, tc := range []struct {
		name     string
		balanced bool
		stanzas  []string
		taken    []bool
		home     string
	}{
		{"the server's answer", true, []string{
			`<iq type='result' id='home-probe-1' from='example.org' to='probe-3@clink.example.org'/>`,
			`<iq type='result' id='home-probe-2' from='example.org' to='probe-7@clink.example.org'/>`,
		}, []bool{true, true}, "probe-3@clink.example.org"},
		{"a user's imitation", true, []string{
			`<iq type='result' id='home-probe-1' from='mallory@example.org/x' to='probe-3@clink.example.org'/>`,
			`<iq type='result' id='home-probe-1' from='example.org' to='alice\40example.org@clink.example.org'/>`,
			`<iq type='result' id='keepalive-1' from='example.org' to='probe-3@clink.example.org'/>`,
		}, []bool{false, false, false}, comp},
		{"unbalanced", false, []string{
			`<iq type='result' id='home-probe-1' from='example.org' to='probe-3@clink.example.org'/>`,
		}, []bool{true}, comp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{Addr: "127.0.0.1:1", Domain: jid.MustParse(comp), Secret: []byte("s"),
				ServerDomain: jid.MustParse(server), Balanced: tc.balanced}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, text := range tc.stanzas {
				s, err := ParseStanza(text, 1<<16)
				if err != nil {
					t.Fatal(err)
				}
				if got := c.learnHome(s); got != tc.taken[i] {
					t.Errorf("learnHome(%s) = %v, want %v", text, got, tc.taken[i])
				}
			}
			if got := c.pingFrom().String(); got != tc.home {
				t.Errorf("pings go from %s, want %s", got, tc.home)
			}
		})
	}
}

// TestNewLinkSharesHandlersAndReplies: an extra link serves the first
// link's handlers (its disco lists the same features) and hands a reply
// to an IQ the first link sent back to the first link's caller.
func TestNewLinkSharesHandlersAndReplies(t *testing.T) {
	t.Parallel()
	c, err := New(Config{Addr: "127.0.0.1:1", Domain: jid.MustParse("clink.example.org"), Secret: []byte("s"), Balanced: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.AddFeature("urn:example:feature")
	l := c.NewLink(nil)
	if l.mux != c.mux || !slices.Equal(l.Features(), c.Features()) {
		t.Errorf("the extra link serves features %v, the first %v", l.Features(), c.Features())
	}
	wait := make(chan *Stanza, 1)
	c.pendingMu.Lock()
	c.pending["q1"] = wait
	c.pendingMu.Unlock()
	reply, err := ParseStanza(`<iq type='result' id='q1' from='example.org' to='clink.example.org'/>`, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if !l.deliverPending(reply) {
		t.Fatal("the extra link did not hand the reply to the first link's caller")
	}
	if got := <-wait; got != reply {
		t.Errorf("the caller got %v", got)
	}
	if l.NewLink(nil).first != c {
		t.Error("a link made from an extra link does not lead to the first")
	}
}

// TestHandlersSeeTheirOwnText: many senders' stanzas, handled by several
// workers at once while the read loop reads more, each into the link's
// reused memory. Every handler, reading its stanza's text as held after
// the others have run a while, finds its own: the memory goes back to the
// link only after the handler and its reply (it fails when the memory is
// taken back before the handler runs).
func TestHandlersSeeTheirOwnText(t *testing.T) {
	t.Parallel()
	textOf := func(id string) string { return strings.Repeat(id+".", 2000/(len(id)+1)) }
	_, _, conn := newTestComponent(t, func(c *Config) { c.Workers = 4; c.QueueDepth = 64 }, func(c *Component) {
		c.HandleIQ(xml.Name{Space: testNS, Local: "text"}, IQHandlerFunc(func(ctx context.Context, iq *Stanza) (any, error) {
			runtime.Gosched()
			time.Sleep(time.Millisecond)
			toks, err := readAll(iq.Payload(xml.Name{Space: testNS, Local: "text"}), 10)
			if err != nil || len(toks) != 3 {
				return nil, fmt.Errorf("payload %v: %v", toks, err)
			}
			if got, _ := toks[1].(xml.CharData); string(got) != textOf(iq.ID) {
				return nil, Errorf(stanza.Conflict, "%s read another stanza's text: %.40q", iq.ID, got)
			}
			return nil, nil
		}))
	})
	const senders, each = 8, 40
	// All sent at once (the replies fit the socket's buffer meanwhile),
	// so that the read loop reads while the workers handle.
	for i := range each {
		for s := range senders {
			id := fmt.Sprintf("s%d-%d", s, i)
			conn.send(t, fmt.Sprintf(`<iq type='set' id='%s' from='u%d@example/r' to='clink.example'><text xmlns='%s'>%s</text></iq>`, id, s, testNS, textOf(id)))
		}
	}
	for range senders * each {
		if g := conn.read(t); g.Type != "result" {
			t.Fatalf("reply to %s: %s %s", g.ID, g.Type, g.Inner)
		}
	}
}
