package component

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	xcomponent "mellium.im/xmpp/component"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/disco/items"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/stanza"
	"mellium.im/xmpp/stream"
)

// LinkState is the state of the link to the XMPP server.
type LinkState int32

// Link states. A Component starts Down, goes Connecting on each attempt and
// Linked once the handshake succeeded.
const (
	Down LinkState = iota
	Connecting
	Linked
)

func (s LinkState) String() string {
	switch s {
	case Down:
		return "down"
	case Connecting:
		return "connecting"
	case Linked:
		return "linked"
	}
	return fmt.Sprintf("LinkState(%d)", int32(s))
}

// A Component is clinkd's link to one XMPP server. Register handlers, then
// call Run; Send methods may be called from any goroutine at any time.
type Component struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	mux     *mux
	started atomic.Bool

	mu      sync.Mutex
	sess    *xmpp.Session // nil unless Linked
	conn    net.Conn      // sess's connection
	state   LinkState
	changed chan struct{} // closed and replaced on every state change
	links   int           // links established so far

	// sendSem serializes writes so that each gets its own write deadline
	// (see sendStanza).
	sendSem chan struct{}
	// rawBufs holds the buffers SendMessageRaw and RawXML results write
	// start elements into, so that a relay's sends allocate none.
	rawBufs sync.Pool
	// stanzaMem holds *stanzaMemory: the tokens and text of a stanza, the
	// link's again once its handler has returned.
	stanzaMem sync.Pool

	pendingMu sync.Mutex
	pending   map[string]chan *Stanza // our own IQs awaiting a reply, by id

	// lastRead is when the read loop last got input (UnixNano), which
	// tells a dead link from a quiet one.
	lastRead atomic.Int64
	// home is an address at the component that the server routes to this
	// link (Config.Balanced), learnt anew on each link; nil until then.
	home atomic.Pointer[jid.JID]
	// work is the pool of the running Run (nil before it).
	work atomic.Pointer[pool]
	// secret is the handshake's shared secret, cfg.Secret until SetSecret.
	secret atomic.Pointer[[]byte]
	// released is set by Release: the link it ends is not made again.
	released atomic.Bool
	// logLimit keeps handler failures to one log line per kind per
	// interval.
	logLimit logLimiter
	// first is the Component this one is an extra link of (NewLink), nil
	// for a first link: replies to the IQs first sent may arrive here.
	first *Component
}

// New makes a Component. A nil logger discards; nil metrics are made and
// left unregistered.
func New(cfg Config, log *slog.Logger, m *Metrics) (*Component, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	c := &Component{
		cfg:     cfg,
		log:     log,
		metrics: m,
		mux:     newMux(cfg.Identity),
		changed: make(chan struct{}),
		pending: make(map[string]chan *Stanza),
		sendSem: make(chan struct{}, 1),
	}
	c.rawBufs.New = func() any { b := make([]byte, 0, 512); return &b }
	c.stanzaMem.New = newStanzaMemory
	secret := slices.Clone(cfg.Secret)
	c.secret.Store(&secret)
	c.mux.handleIQ(xml.Name{Space: disco.NSInfo, Local: "query"}, getOnly(IQHandlerFunc(c.mux.discoInfo)))
	c.mux.handleIQ(xml.Name{Space: disco.NSItems, Local: "query"}, getOnly(IQHandlerFunc(c.mux.discoItems)))
	c.mux.handleIQ(xml.Name{Space: ping.NS, Local: "ping"}, getOnly(IQHandlerFunc(pingHandler)))
	return c, nil
}

// NewLink makes another link of the same component to the same server,
// serving the handlers registered on c: on a balanced domain
// (Config.Balanced) one clinkd may hold several slots, each a link of its
// own (a running instance that takes over a stopping sibling's slot,
// docs/expiry.md). The new link has its own connection, workers and link
// state; it answers what it reads on its own connection; a reply to an
// IQ sent through c that arrives on it reaches c's caller. Its metrics
// are unregistered: those of c speak for the component. Call it after
// registering c's handlers; run the link with Run.
func (c *Component) NewLink(log *slog.Logger) *Component {
	if log == nil {
		log = c.log
	}
	first := c
	if c.first != nil {
		first = c.first
	}
	l := &Component{
		cfg:     c.cfg,
		log:     log,
		metrics: NewMetrics(nil),
		mux:     c.mux,
		changed: make(chan struct{}),
		pending: make(map[string]chan *Stanza),
		sendSem: make(chan struct{}, 1),
		first:   first,
	}
	l.rawBufs.New = c.rawBufs.New
	l.stanzaMem.New = newStanzaMemory
	l.secret.Store(c.secret.Load())
	return l
}

// SetSecret replaces the handshake's shared secret, for rotating it: the
// link in place keeps running (the server authenticated it once, at its
// start), and the next handshake, after the link is lost or clinkd
// restarts, uses secret. So the server's side is changed first, then
// clinkd's, with no moment at which a link that is up goes down.
func (c *Component) SetSecret(secret []byte) error {
	if len(secret) == 0 {
		return errors.New("component: empty secret")
	}
	s := slices.Clone(secret)
	c.secret.Store(&s)
	return nil
}

func getOnly(h IQHandler) IQHandler {
	return IQHandlerFunc(func(ctx context.Context, iq *Stanza) (any, error) {
		if iq.Type != string(stanza.GetIQ) {
			return nil, Error(stanza.ServiceUnavailable, "only get is served for this payload")
		}
		return h.HandleIQ(ctx, iq)
	})
}

func (c *Component) mustNotBeStarted() {
	if c.started.Load() {
		panic("component: handlers must be registered before Run")
	}
}

// HandleIQ routes IQ get and set requests whose payload is name to h, and
// advertises name's namespace in disco#info. It panics after Run started or
// when name already has a handler: both are programming errors.
func (c *Component) HandleIQ(name xml.Name, h IQHandler) {
	c.mustNotBeStarted()
	c.mux.handleIQ(name, h)
}

// HandleMessage routes messages to h when the first of their top-level
// payloads that has a handler is in namespace ns, and advertises ns.
func (c *Component) HandleMessage(ns string, h MessageHandler) {
	c.mustNotBeStarted()
	c.mux.handleMessage(ns, h)
}

// HandlePresence has h see every presence stanza, in arrival order per
// sender.
func (c *Component) HandlePresence(h PresenceHandler) {
	c.mustNotBeStarted()
	c.mux.presence = append(c.mux.presence, h)
}

// AddFeature advertises features served by handlers registered under
// another namespace (e.g. urn:xmpp:receipts carried in messages).
func (c *Component) AddFeature(ns ...string) {
	c.mustNotBeStarted()
	c.mux.addFeature(ns...)
}

// AddItem lists an item in disco#items.
func (c *Component) AddItem(it items.Item) {
	c.mustNotBeStarted()
	c.mux.items = append(c.mux.items, it)
}

// Features returns the advertised features, in registration order.
func (c *Component) Features() []string { return append([]string(nil), c.mux.features...) }

// Domain returns the component's domain.
func (c *Component) Domain() jid.JID { return c.cfg.Domain }

// Stalled reports whether the workers have stopped keeping up: a stanza
// has waited for one longer than HandlerTimeout (so it will be answered
// resource-constraint), and for how long. Readiness probes use it: a
// component whose handlers all hang (on a frozen database, say) is not
// ready although its link is up.
func (c *Component) Stalled() (time.Duration, bool) {
	w := c.work.Load()
	if w == nil {
		return 0, false
	}
	wait := w.oldestWait(time.Now())
	return wait, wait > c.cfg.HandlerTimeout
}

// State returns the link's current state.
func (c *Component) State() LinkState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// WaitState blocks until the link is in state s or ctx ends.
func (c *Component) WaitState(ctx context.Context, s LinkState) error {
	for {
		c.mu.Lock()
		st, ch := c.state, c.changed
		c.mu.Unlock()
		if st == s {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("component: waiting for link %s (now %s): %w", s, st, ctx.Err())
		}
	}
}

func (c *Component) setState(s LinkState, sess *xmpp.Session, conn net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state, c.sess, c.conn = s, sess, conn
	close(c.changed)
	c.changed = make(chan struct{})
	if s == Linked {
		c.links++
		if c.links > 1 {
			c.metrics.Reconnects.Inc()
		}
		c.metrics.LinkUp.Set(1)
	} else {
		c.metrics.LinkUp.Set(0)
	}
}

func (c *Component) session() (*xmpp.Session, net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess, c.conn
}

// Run links to the server and serves until ctx ends, re-linking whenever
// the link is lost. On return every handler call has finished and the
// stream is closed. It returns nil after ctx ends; it never gives up on the
// server by itself.
func (c *Component) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("component: Run called twice")
	}
	// Handlers may outlive ctx by up to HandlerTimeout while in-flight work
	// drains at shutdown; they must not be cancelled halfway.
	work := newPool(context.WithoutCancel(ctx), c.cfg.Workers, c.cfg.QueueDepth, c.cfg.MaxQueued, c.cfg.MaxQueuedBytes, func(ctx context.Context, s *Stanza) {
		c.handle(ctx, s)
		// Handled and answered: nothing reads it any more.
		if m := s.release(); m != nil {
			c.stanzaMem.Put(m)
		}
	})
	c.work.Store(work)
	defer work.stop()
	// Refusals of stanzas the pool had no room for are answered here, off
	// the read loop, so that answering never makes it wait; when even this
	// queue is full they are dropped (and counted).
	refusals := make(chan refusal, 256)
	var refuser sync.WaitGroup
	refuser.Go(func() {
		for r := range refusals {
			c.replyError(context.WithoutCancel(ctx), r.s, r.err)
		}
	})
	defer func() {
		close(refusals)
		refuser.Wait()
	}()

	bo := backoff{min: c.cfg.BackoffMin, max: c.cfg.BackoffMax}
	for {
		up, err := c.link(ctx, work, refusals)
		if ctx.Err() != nil {
			return nil
		}
		if c.released.Load() {
			c.log.Info("xmpp link released", "up", up.Round(time.Millisecond))
			<-ctx.Done()
			return nil
		}
		if up >= c.cfg.BackoffMax {
			bo.reset() // the link worked; a new loss starts a new backoff
		}
		wait := bo.next()
		c.log.Warn("xmpp link lost; re-linking", "addr", c.cfg.Addr, "up", up.Round(time.Millisecond), "retry_in", wait.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// link makes one connection, serves it until it ends and reports how long
// it was up and why it ended.
func (c *Component) link(ctx context.Context, work *pool, refusals chan<- refusal) (up time.Duration, err error) {
	c.setState(Connecting, nil, nil)
	conn, stage, err := c.dial(ctx)
	if err != nil {
		c.setState(Down, nil, nil)
		c.metrics.LinkFailures.WithLabelValues(stage).Inc()
		return 0, err
	}
	// The handshake reads through the link's own buffer, which the read
	// loop goes on with (xmlread.go).
	in := newLinkBuffer(conn, linkBufferSize)
	hctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	sess, err := xcomponent.NewSession(hctx, c.cfg.Domain, *c.secret.Load(), bufferedConn{Conn: conn, in: in})
	cancel()
	if err != nil {
		conn.Close()
		c.setState(Down, nil, nil)
		c.metrics.LinkFailures.WithLabelValues("handshake").Inc()
		return 0, fmt.Errorf("component: handshake as %s: %w", c.cfg.Domain, err)
	}
	since := time.Now()
	c.lastRead.Store(since.UnixNano())
	c.home.Store(nil) // a new link may hold another slot
	c.setState(Linked, sess, conn)
	c.log.Info("xmpp link up", "addr", c.cfg.Addr, "domain", c.cfg.Domain.String(), "tls", tlsVersion(conn))

	linkCtx, stopLink := context.WithCancel(ctx)
	var aux sync.WaitGroup
	aux.Go(func() { c.keepalive(linkCtx, sess, conn) })
	aux.Go(func() {
		<-linkCtx.Done()
		if ctx.Err() != nil {
			// Shutting down: stop reading; in-flight replies still go out.
			conn.SetReadDeadline(time.Now())
		}
	})

	defaultNS := sess.In().XMLNS
	if defaultNS == "" {
		defaultNS = nsAccept
	}
	err = c.readLoop(newStreamReader(in, defaultNS, max(4<<20, 2*c.cfg.MaxStanzaBytes)), work, refusals)
	switch {
	case ctx.Err() != nil:
		// Graceful stop: let queued stanzas be answered on this link first.
		work.drain(c.cfg.HandlerTimeout)
	case c.released.Load():
		// Released: what was read is handled (replies cannot go out on
		// a stream closed on our side; what a handler holds, it holds).
		work.drain(c.cfg.HandlerTimeout)
	default:
		c.metrics.LinkFailures.WithLabelValues("stream").Inc()
	}
	c.setState(Down, nil, nil)
	stopLink()
	aux.Wait()
	c.failPending()
	// Close sends </stream:stream>; then give the server a moment to
	// answer before the socket goes.
	sess.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	conn.Close()
	return time.Since(since), err
}

// Release ends the link for a successor that holds a link of its own (a
// handoff, docs/expiry.md): it closes clinkd's side of the stream with
// </stream:stream>, so that the server stops routing to this link, and
// keeps reading until the server closes its side too, or until ctx ends.
// Every stanza read meanwhile goes to its handler as usual, and Release
// returns once they have been handled; replies cannot go out on a stream
// closed on clinkd's side (RFC 6120, 4.4), so Release is for handlers that
// hold what they are given rather than answer it (a quiesced relay). The
// link is not made again: Run returns when its context ends.
//
// Stopping by cancelling Run's context instead stops reading at once, and
// what the server sent in that instant is lost: a server that keeps
// several links per component (ejabberd) may still be sending to this one.
func (c *Component) Release(ctx context.Context) error {
	c.released.Store(true)
	c.mu.Lock()
	sess, conn, state := c.sess, c.conn, c.state
	c.mu.Unlock()
	if state != Linked {
		return nil
	}
	select {
	case c.sendSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("component: release: %w", ctx.Err())
	}
	err := sess.Close()
	<-c.sendSem
	if err != nil {
		conn.Close()
		return fmt.Errorf("component: release: %w", err)
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(d)
	}
	if err := c.WaitState(ctx, Down); err != nil || ctx.Err() != nil {
		conn.Close()
		c.WaitState(context.WithoutCancel(ctx), Down)
		return fmt.Errorf("component: release: the server did not close its side in time: %w", ctx.Err())
	}
	return nil
}

// refusal is a stanza the pool had no room for, and the error to answer
// it with.
type refusal struct {
	s   *Stanza
	err error
}

// readLoop reads stanzas whole and hands them to the workers. It never
// waits for a worker: a stanza its sender's queue (or the pool) has no room
// for is refused with resource-constraint, so one sender cannot stop the
// link for everyone. It returns when the stream ends: io.EOF for a
// graceful close, a stream.Error, or the network error.
func (c *Component) readLoop(r *streamReader, work *pool, refusals chan<- refusal) error {
	var jids jidCache
	for {
		tok, err := r.Token()
		if err != nil {
			return err
		}
		c.lastRead.Store(time.Now().UnixNano())
		switch t := tok.(type) {
		case xml.EndElement:
			// Only </stream:stream> can end at depth 0.
			return io.EOF
		case xml.StartElement:
			if t.Name.Space == stream.NS {
				if t.Name.Local == "error" {
					var se stream.Error
					// Decoded from a reader of its own, start included:
					// a new Decoder's DecodeElement with a start it did
					// not read cannot call an UnmarshalXML.
					// Copied: a Decoder writes its translations into
					// the tokens it reads, and the link's reader hands
					// out some elements shared (streamReader.starts).
					if err := xml.NewTokenDecoder(copying{xmlstream.Wrap(xmlstream.Inner(r), t)}).Decode(&se); err != nil {
						return fmt.Errorf("component: reading stream error: %w", err)
					}
					return se
				}
				if err := xmlstream.Skip(r); err != nil {
					return err
				}
				continue
			}
			if !isStanza(t.Name) {
				if err := xmlstream.Skip(r); err != nil {
					return err
				}
				continue
			}
			s, oversized, err := readStanza(r, t, c.cfg.MaxStanzaBytes, &jids, c.stanzaMem.Get().(*stanzaMemory))
			if err != nil {
				return err
			}
			c.metrics.StanzasIn.WithLabelValues(string(s.Kind)).Inc()
			if s.Kind == KindIQ && (s.Type == string(stanza.ResultIQ) || s.Type == string(stanza.ErrorIQ)) {
				if c.learnHome(s) || c.deliverPending(s) {
					continue
				}
			}
			// An oversized stanza lost its payload; the worker answers it
			// with policy-violation.
			s.oversized = oversized
			s.arrived = time.Now()
			if ok, why := work.put(s.From.Bare().String(), s); !ok {
				c.metrics.Refused.WithLabelValues(why).Inc()
				text := "clinkd is busy; try again shortly"
				if why == refusedSender {
					text = fmt.Sprintf("you have %d requests waiting at clinkd; wait for their answers", c.cfg.QueueDepth)
				}
				select {
				case refusals <- refusal{s, Error(stanza.ResourceConstraint, text)}:
				default:
					c.metrics.Refused.WithLabelValues("dropped").Inc()
				}
			}
		}
		// Whitespace between stanzas is a keepalive; nothing to do.
	}
}

// copying hands out copies of r's tokens.
type copying struct{ r xml.TokenReader }

func (c copying) Token() (xml.Token, error) {
	t, err := c.r.Token()
	if t != nil {
		t = xml.CopyToken(t)
	}
	return t, err
}

// keepalive pings the server when the link has been silent for
// PingInterval and closes the connection when, PingTimeout later, nothing
// has arrived. On a balanced link it first probes for an address of its
// own (learnHome), every tick until one is known, so that its pings are
// answered on this link.
func (c *Component) keepalive(ctx context.Context, sess *xmpp.Session, conn net.Conn) {
	if c.cfg.ServerDomain.Domainpart() == "" {
		return
	}
	tick := min(max(c.cfg.PingTimeout/4, 50*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastPing time.Time
	probes := 0
	if c.cfg.Balanced {
		probes = c.probeHome(ctx, sess, conn, probes)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if c.cfg.Balanced && c.home.Load() == nil {
				probes = c.probeHome(ctx, sess, conn, probes)
			}
			idle := now.Sub(time.Unix(0, c.lastRead.Load()))
			switch {
			case idle >= c.cfg.PingInterval+c.cfg.PingTimeout:
				c.log.Warn("xmpp link silent; closing it", "idle", idle.Round(time.Millisecond))
				c.metrics.LinkFailures.WithLabelValues("keepalive").Inc()
				conn.Close()
				return
			case idle >= c.cfg.PingInterval && now.Sub(lastPing) >= c.cfg.PingInterval:
				lastPing = now
				// The reply is any input at all; it is read and dropped
				// like any unsolicited result.
				sctx, cancel := context.WithTimeout(ctx, c.cfg.SendTimeout)
				err := c.sendStanza(sctx, sess, conn, KindIQ, stanza.IQ{
					Type: stanza.GetIQ, To: c.cfg.ServerDomain, From: c.pingFrom(),
					ID: "keepalive-" + randomID(),
				}.StartElement(), pingPayload{})
				cancel()
				if err != nil {
					c.log.Debug("keepalive ping not sent", "err", err)
				}
			}
		}
	}
}

// Probing for a home address (Config.Balanced). The server routes a
// stanza for an address at the component to the link that holds the slot
// of that address's bare JID, so the reply to a ping sent from
// probe-N@domain arrives on the link whose slot probe-N hashes to: the
// link that reads it knows that address routes to it. Each round pings
// from homeProbes new addresses; with s slots, a round finds none for
// this link with probability ((s-1)/s)^homeProbes (1.5e-5 for 2 slots,
// 1 % for 4), and the next round tries new ones.
const (
	homeProbes      = 16
	homeProbeLocal  = "probe-"
	homeProbeIDHead = "home-probe-"
)

// probeHome sends one round of probes, numbered from n, and returns the
// next number.
func (c *Component) probeHome(ctx context.Context, sess *xmpp.Session, conn net.Conn, n int) int {
	for range homeProbes {
		from, err := jid.New(homeProbeLocal+strconv.Itoa(n), c.cfg.Domain.Domainpart(), "")
		n++
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, c.cfg.SendTimeout)
		err = c.sendStanza(sctx, sess, conn, KindIQ, stanza.IQ{
			Type: stanza.GetIQ, To: c.cfg.ServerDomain, From: from, ID: homeProbeIDHead + randomID(),
		}.StartElement(), pingPayload{})
		cancel()
		if err != nil {
			c.log.Debug("home probe not sent", "err", err)
			return n
		}
	}
	return n
}

// learnHome takes a reply to a probe, from any clinkd's link, and learns
// its address as this link's home (the server routed it here), and
// reports whether s was such a reply. Any address a stanza reached this
// link at would do; only the server's answers to probes are taken, so
// that a user's stanza cannot choose the address.
func (c *Component) learnHome(s *Stanza) bool {
	if !strings.HasPrefix(s.ID, homeProbeIDHead) || !strings.HasPrefix(s.To.Localpart(), homeProbeLocal) || !s.From.Equal(c.cfg.ServerDomain) {
		return false
	}
	if c.cfg.Balanced && c.home.Load() == nil {
		home := s.To.Bare()
		if c.home.CompareAndSwap(nil, &home) {
			c.log.Debug("xmpp link: home address learnt", "home", home.String())
		}
	}
	return true
}

// pingFrom is the address the link's own pings go from: its home on a
// balanced link once learnt, else the component's domain.
func (c *Component) pingFrom() jid.JID {
	if h := c.home.Load(); h != nil {
		return *h
	}
	return c.cfg.Domain
}
