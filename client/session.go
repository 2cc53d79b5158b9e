package client

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// This file keeps the session connected: one link (a TCP connection and
// its XMPP stream) at a time, replaced after it dies by a resumed stream
// or a new one (sm.go says how stream management decides which).

// writeTimeout bounds one write to the server: a link that does not take
// a stanza within it is dead, and is dropped.
const writeTimeout = 30 * time.Second

// A link is one connection to the server and its XMPP stream.
type link struct {
	sess   *xmpp.Session
	conn   *watchedConn
	gen    uint64        // its number among the Client's links
	served chan struct{} // closed when its read loop ended

	mu  sync.Mutex
	err error // why it ended
}

func (l *link) fail(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
	l.close()
}

func (l *link) close() { l.conn.Close() }

func (l *link) why() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// watchedConn notes when it last read anything, for the keepalive.
type watchedConn struct {
	net.Conn
	lastRead atomic.Int64 // Unix nanoseconds
}

func (w *watchedConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if n > 0 {
		w.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

func (w *watchedConn) idle() time.Duration {
	return time.Since(time.Unix(0, w.lastRead.Load()))
}

// connect dials the server and negotiates a stream: StartTLS, SASL, then
// the stream of try resumed, or a resource bound.
func (c *Client) connect(ctx context.Context, try *resumeAttempt) (*link, *resumeAttempt, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", c.cfg.Addr, err)
	}
	wc := &watchedConn{Conn: raw}
	wc.lastRead.Store(time.Now().UnixNano())
	sess, err := xmpp.NewClientSession(ctx, c.cfg.JID.Bare(), wc,
		xmpp.StartTLS(c.cfg.TLS),
		xmpp.SASL("", c.cfg.Password, mechanisms...),
		bindOrResume(try),
	)
	if err != nil {
		raw.Close()
		return nil, nil, sessionError(err)
	}
	if sess.State()&xmpp.Secure == 0 {
		raw.Close()
		return nil, nil, ErrNotEncrypted
	}
	return &link{sess: sess, conn: wc, served: make(chan struct{})}, try, nil
}

// attach makes l the session's link: on a resumed stream it sends again
// what the server did not acknowledge; on a new one it enables stream
// management, sends initial presence (so that messages to the user's
// bare JID reach the device, RFC 6121 §8.5.2, instead of offline
// storage) and sends again the messages the old stream may have lost.
// Requests waiting for an answer on an old stream fail with
// ErrConnectionLost.
func (c *Client) attach(l *link, try *resumeAttempt) error {
	resumed := try != nil && try.resumed
	c.outMu.Lock()
	c.mu.Lock()
	l.gen = c.gen + 1
	c.mu.Unlock()
	var resend []queued
	if resumed {
		c.sm.ack(try.serverH)
		resend, c.sm.queue = c.sm.queue, nil
	} else {
		if try != nil && try.hKnown {
			c.sm.ack(try.serverH)
		}
		for _, q := range c.sm.queue {
			if q.kind == "message" {
				resend = append(resend, q)
			}
		}
		c.sm.on, c.sm.id, c.sm.acked, c.sm.queue, c.sm.asked = false, "", 0, nil, false
		c.sm.inH.Store(0)
		c.sm.counted.Store(false)
		c.sm.jid = l.sess.LocalAddr()
		if _, offered := l.sess.Feature(smNS); offered {
			if err := c.writeLocked(l, smTokens("enable", "resume", "true")); err != nil {
				c.outMu.Unlock()
				return err
			}
			c.sm.on = true
		}
		raw, err := encodeStanza(stanza.Presence{}.StartElement(), nil)
		if err == nil {
			err = c.writeRawLocked(l, raw, "presence")
		}
		if err != nil {
			c.outMu.Unlock()
			return err
		}
	}
	for _, q := range resend {
		if err := c.writeRawLocked(l, q.raw, q.kind); err != nil {
			c.outMu.Unlock()
			return err
		}
	}
	c.mu.Lock()
	if c.closed {
		// Close came while this link was being made (its connect had
		// already succeeded when Close cancelled it): Close found no link
		// to end and waits for run, which must not wait on this one.
		c.mu.Unlock()
		c.outMu.Unlock()
		return ErrClosed
	}
	c.cur, c.jid, c.gen = l, c.sm.jid, l.gen
	if l.gen > 1 {
		if resumed {
			c.stats.Resumed++
		} else {
			c.stats.Reconnects++
		}
	}
	close(c.up)
	c.mu.Unlock()
	c.outMu.Unlock()
	if !resumed {
		c.failPending(l.gen, ErrConnectionLost)
	}
	go c.serve(l)
	go c.keepAlive(l)
	return nil
}

// failPending fails the requests written on links before gen.
func (c *Client) failPending(gen uint64, err error) {
	c.pendingMu.Lock()
	defer c.pendingMu.Unlock()
	for id, p := range c.pending {
		if p.gen != 0 && p.gen < gen {
			p.ch <- iqReply{err: err}
			delete(c.pending, id)
		}
	}
}

// serve runs l's read loop until its stream ends.
func (c *Client) serve(l *link) {
	err := l.sess.Serve(c.handler(l))
	if err == nil {
		err = errors.New("the server closed the stream")
	}
	l.fail(sessionError(err))
	close(l.served)
}

// run replaces each link that dies until the session ends.
func (c *Client) run(l *link) {
	for {
		<-l.served
		c.detach(l)
		if l = c.reconnect(); l == nil {
			return
		}
	}
}

// detach forgets l, which died.
func (c *Client) detach(l *link) {
	c.outMu.Lock()
	c.mu.Lock()
	if c.cur == l {
		c.cur = nil
		c.up = make(chan struct{})
	}
	closed := c.closed
	c.mu.Unlock()
	c.sm.asked = false
	c.outMu.Unlock()
	if !closed {
		c.notify(SessionEvent{Err: l.why()})
	}
}

// reconnect connects again, with backoff, until it succeeds, the session
// is closed or the server refuses the credentials; it returns the new
// link, or nil when the session ended.
func (c *Client) reconnect() *link {
	for attempt := 0; ; attempt++ {
		select {
		case <-time.After(c.backoff(attempt)):
		case <-c.closing:
			c.finish(ErrClosed)
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
		go func() {
			select {
			case <-c.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		try := c.resumeAttempt()
		l, try, err := c.connect(ctx, try)
		if err == nil {
			if err = c.attach(l, try); err != nil {
				l.close()
			}
		}
		cancel()
		if err == nil {
			c.notify(SessionEvent{Up: true, Resumed: try != nil && try.resumed})
			return l
		}
		select {
		case <-c.closing:
			c.finish(ErrClosed)
			return nil
		default:
		}
		var ae *AuthError
		if errors.As(err, &ae) && ae.permanent() {
			c.finish(err)
			return nil
		}
		c.notify(SessionEvent{Err: err})
	}
}

// resumeAttempt returns what a new connection may resume.
func (c *Client) resumeAttempt() *resumeAttempt {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.sm.id == "" {
		return nil
	}
	return &resumeAttempt{previd: c.sm.id, h: c.sm.inH.Load(), jid: c.sm.jid}
}

// backoff is the wait before a reconnection attempt: BackoffMin doubling
// up to BackoffMax, less up to a quarter at random, so that devices a
// server restart cut off do not all come back at once.
func (c *Client) backoff(attempt int) time.Duration {
	w := c.cfg.BackoffMax
	if attempt < 30 {
		w = min(c.cfg.BackoffMin<<attempt, c.cfg.BackoffMax)
	}
	return w - time.Duration(rand.Int64N(int64(w/4)+1))
}

// finish ends the session for good with err.
func (c *Client) finish(err error) {
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return
	default:
	}
	c.err = err
	c.cur = nil
	c.mu.Unlock()
	c.inbox.close()
	c.pendingMu.Lock()
	for id, p := range c.pending {
		p.ch <- iqReply{err: closedError(err)}
		delete(c.pending, id)
	}
	c.pendingMu.Unlock()
	close(c.done)
	c.notify(SessionEvent{Err: err, Final: true})
}

// writeStanza writes a stanza's bytes on the live link, waiting for one
// while the session reconnects. With a stream that can be resumed, a
// stanza sent while the link is down is kept and goes out when it
// resumes. It returns the generation of the link it went on.
func (c *Client) writeStanza(ctx context.Context, raw []byte, kind string) (uint64, error) {
	for {
		c.mu.Lock()
		l, up, closed := c.cur, c.up, c.closed
		c.mu.Unlock()
		select {
		case <-c.done:
			return 0, closedError(c.err)
		default:
		}
		if closed {
			return 0, ErrClosed
		}
		if l == nil {
			c.outMu.Lock()
			if c.cur == nil && c.sm.id != "" && len(c.sm.queue) < maxUnacked {
				c.sm.queue = append(c.sm.queue, queued{raw: raw, kind: kind})
				c.mu.Lock()
				gen := c.gen
				c.mu.Unlock()
				c.outMu.Unlock()
				return gen, nil
			}
			c.outMu.Unlock()
			select {
			case <-up:
				continue
			case <-c.done:
				return 0, closedError(c.err)
			case <-ctx.Done():
				return 0, fmt.Errorf("waiting for the connection: %w", ctx.Err())
			}
		}
		c.outMu.Lock()
		if c.cur != l {
			c.outMu.Unlock()
			continue
		}
		err := c.writeRawLocked(l, raw, kind)
		kept := c.sm.on && c.sm.id != ""
		c.outMu.Unlock()
		if err != nil {
			l.fail(err)
			if kept {
				return l.gen, nil // sent again when the stream resumes
			}
			return 0, fmt.Errorf("%w: %v", ErrConnectionLost, err)
		}
		return l.gen, nil
	}
}

// writeRawLocked writes a stanza's bytes on l, counted and kept for
// stream management. c.outMu is held.
func (c *Client) writeRawLocked(l *link, raw []byte, kind string) error {
	if err := c.writeLocked(l, xml.NewDecoder(bytes.NewReader(raw))); err != nil {
		return err
	}
	if c.sm.on {
		c.sm.queue = append(c.sm.queue, queued{raw: raw, kind: kind})
		if !c.sm.asked && len(c.sm.queue) >= ackEvery && c.sm.counted.Load() {
			if err := c.writeLocked(l, smTokens("r")); err != nil {
				return err
			}
			c.sm.asked = true
		}
	}
	return nil
}

// writeLocked writes one element on l under a write deadline of its own.
// mellium.im/xmpp v0.22.0 turns a send's context into a deadline from a
// goroutine that can wake after the send returned, see both the send
// finished and the context cancelled, and set a deadline in the past on
// the connection: a later, unrelated write then fails with i/o timeout
// (seen here after Dial's context ended). So every write gets
// context.Background() and its deadline from here. c.outMu is held.
func (c *Client) writeLocked(l *link, r xml.TokenReader) error {
	conn := l.sess.Conn()
	conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	defer conn.SetWriteDeadline(time.Time{})
	return l.sess.Send(context.Background(), r)
}

// keepAlive checks a quiet link: after KeepAlive without a byte from the
// server it asks for an answer (an <r/>, or a ping to the server), and
// after KeepAliveTimeout more it drops the connection, which reconnects.
func (c *Client) keepAlive(l *link) {
	tick := min(max(c.cfg.KeepAlive/4, 50*time.Millisecond), 5*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	var probed time.Time
	for {
		select {
		case <-l.served:
			return
		case <-t.C:
		}
		idle := l.conn.idle()
		switch {
		case idle >= c.cfg.KeepAlive+c.cfg.KeepAliveTimeout:
			l.fail(fmt.Errorf("the link was silent for %v", idle.Round(time.Second)))
			return
		case idle >= c.cfg.KeepAlive && time.Since(probed) >= c.cfg.KeepAlive:
			probed = time.Now()
			c.probe(l)
		}
	}
}

// probe asks the server for an answer on l.
func (c *Client) probe(l *link) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.cur != l {
		return
	}
	var err error
	if c.sm.counted.Load() {
		err = c.writeLocked(l, smTokens("r"))
	} else {
		id := "keepalive-" + randomID()
		c.pendingMu.Lock()
		if c.keepalive == nil {
			c.keepalive = map[string]struct{}{}
		}
		clear(c.keepalive) // older pings were answered or are moot
		c.keepalive[id] = struct{}{}
		c.pendingMu.Unlock()
		var raw []byte
		raw, err = encodeStanza(stanza.IQ{ID: id, Type: stanza.GetIQ, To: jid.MustParse(c.cfg.JID.Domainpart())}.StartElement(), xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Space: "urn:xmpp:ping", Local: "ping"}}))
		if err == nil {
			err = c.writeRawLocked(l, raw, "iq")
		}
	}
	if err != nil {
		go l.fail(err)
	}
}

// handler returns the read loop's handler for l: it counts stanzas for
// stream management, answers IQ requests, hands replies to the requests
// waiting for them, and queues the rest in the inbox.
func (c *Client) handler(l *link) xmpp.HandlerFunc {
	return func(t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
		if start.Name.Space == smNS {
			return c.handleSM(l, t, start)
		}
		switch start.Name.Local {
		case "message", "presence", "iq":
		default:
			return nil
		}
		if err := c.handleStanza(l, t, start); err != nil {
			return err
		}
		if c.sm.counted.Load() {
			c.sm.inH.Add(1)
		}
		return nil
	}
}

// handleStanza takes one stanza off the stream.
func (c *Client) handleStanza(l *link, t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	if err := enc.EncodeToken(start.Copy()); err != nil {
		return nil
	}
	if _, err := xmlstream.Copy(enc, t); err != nil {
		return err
	}
	enc.EncodeToken(start.End())
	enc.Flush()
	var hdr struct {
		ID   string  `xml:"id,attr"`
		Type string  `xml:"type,attr"`
		From jid.JID `xml:"from,attr"`
		To   jid.JID `xml:"to,attr"`
	}
	if err := xml.Unmarshal(buf.Bytes(), &hdr); err != nil {
		return nil // a stanza we cannot read is dropped, not fatal
	}
	s := &Stanza{Kind: start.Name.Local, ID: hdr.ID, Type: hdr.Type, From: hdr.From, To: hdr.To, Raw: buf.Bytes()}
	switch {
	case s.Kind == "iq" && (s.Type == string(stanza.GetIQ) || s.Type == string(stanza.SetIQ)):
		return c.answerIQ(l, t, s)
	case s.Kind == "iq":
		c.pendingMu.Lock()
		p, ok := c.pending[s.ID]
		delete(c.pending, s.ID)
		_, keepalive := c.keepalive[s.ID]
		delete(c.keepalive, s.ID)
		c.pendingMu.Unlock()
		if ok {
			p.ch <- iqReply{s: s} // buffered; one reply per id
			return nil
		}
		if keepalive {
			return nil
		}
	case s.Kind == "message" && s.Type == "error":
		c.pendingMu.Lock()
		ch, ok := c.errWaits[s.ID]
		delete(c.errWaits, s.ID)
		c.pendingMu.Unlock()
		if ok {
			ch <- s // buffered
			return nil
		}
	}
	c.inbox.push(s)
	return nil
}

// awaitError makes a message error with id go to the returned channel
// rather than to the inbox, until stop.
func (c *Client) awaitError(id string) (ch <-chan *Stanza, stop func()) {
	w := make(chan *Stanza, 1)
	c.pendingMu.Lock()
	if c.errWaits == nil {
		c.errWaits = map[string]chan *Stanza{}
	}
	c.errWaits[id] = w
	c.pendingMu.Unlock()
	return w, func() {
		c.pendingMu.Lock()
		if c.errWaits[id] == w {
			delete(c.errWaits, id)
		}
		c.pendingMu.Unlock()
	}
}

// answerIQ runs the handler for s's payload and writes its answer:
// always, so that every stanza the device sends is counted for stream
// management (mellium's default answer would not be).
func (c *Client) answerIQ(l *link, w xmlstream.TokenWriter, s *Stanza) error {
	names := s.payloads()
	var h IQHandler
	if len(names) == 1 {
		c.iqMu.RLock()
		h = c.iqs[names[0]]
		c.iqMu.RUnlock()
	}
	reply := stanza.IQ{ID: s.ID, To: s.From, Type: stanza.ResultIQ}
	var payload xml.TokenReader
	var err error
	if h == nil {
		err = stanza.Error{Type: stanza.Cancel, Condition: stanza.ServiceUnavailable}
	} else {
		err = h(s)
	}
	if err != nil {
		reply.Type = stanza.ErrorIQ
		var ie *IQError
		var se stanza.Error
		switch {
		case errors.As(err, &ie):
			payload = ie.Err.Wrap(xmlstream.Wrap(nil, xml.StartElement{Name: ie.App}))
		case errors.As(err, &se):
			payload = se.TokenReader()
		default:
			payload = stanza.Error{Type: stanza.Wait, Condition: stanza.InternalServerError}.TokenReader()
		}
	}
	raw, err := encodeStanza(reply.StartElement(), payload)
	if err != nil {
		return err
	}
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.cur == l && c.sm.on {
		c.sm.queue = append(c.sm.queue, queued{raw: raw, kind: "iq"})
	}
	l.sess.Conn().SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = xmlstream.Copy(w, xml.NewDecoder(bytes.NewReader(raw)))
	return err
}

// handleSM takes an element of stream management off the stream.
func (c *Client) handleSM(l *link, t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	var e smElement
	if err := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(*start), t)).Decode(&e); err != nil {
		return err
	}
	switch start.Name.Local {
	case "r":
		_, err := xmlstream.Copy(t, smTokens("a", "h", strconv.FormatUint(uint64(c.sm.inH.Load()), 10)))
		return err
	case "a":
		h, ok := e.h()
		if !ok {
			return fmt.Errorf("client: stream management: <a/> without h")
		}
		c.outMu.Lock()
		if c.cur == l {
			c.sm.ack(h)
		}
		c.outMu.Unlock()
	case "enabled":
		c.outMu.Lock()
		if e.Resume == "true" || e.Resume == "1" {
			c.sm.id = e.ID
		}
		c.sm.counted.Store(true)
		c.outMu.Unlock()
	case "failed":
		// Enabling failed: no stream management on this stream.
		c.outMu.Lock()
		c.sm.on, c.sm.id, c.sm.queue = false, "", nil
		c.outMu.Unlock()
	}
	return nil
}

// A SessionEvent is a change of the session's link: it went down (Up
// false, Err why), or a reconnection attempt failed (Err), or it is up
// again (Up, Resumed when the stream was resumed with nothing lost). The
// last event has Final set: the session ended, Err says why.
type SessionEvent struct {
	Up, Resumed, Final bool
	Err                error
}

// watcher delivers events to one function, in order, on its own
// goroutine.
type watcher struct {
	mu      sync.Mutex
	queue   []SessionEvent
	signal  chan struct{}
	stopped bool
}

// Watch calls f with every change of the session's link, in order, on a
// goroutine of its own, until stop is called or the final event was
// delivered. f must not call stop.
func (c *Client) Watch(f func(SessionEvent)) (stop func()) {
	w := &watcher{signal: make(chan struct{}, 1)}
	c.mu.Lock()
	c.watchers = append(c.watchers, w)
	c.mu.Unlock()
	go func() {
		for range w.signal {
			for {
				w.mu.Lock()
				if w.stopped || len(w.queue) == 0 {
					stopped := w.stopped
					w.mu.Unlock()
					if stopped {
						return
					}
					break
				}
				ev := w.queue[0]
				w.queue = w.queue[1:]
				w.mu.Unlock()
				f(ev)
				if ev.Final {
					return
				}
			}
		}
	}()
	return func() {
		w.mu.Lock()
		w.stopped = true
		w.mu.Unlock()
		select {
		case w.signal <- struct{}{}:
		default:
		}
		c.mu.Lock()
		for i, x := range c.watchers {
			if x == w {
				c.watchers = append(c.watchers[:i], c.watchers[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
	}
}

func (c *Client) notify(ev SessionEvent) {
	c.mu.Lock()
	ws := append([]*watcher(nil), c.watchers...)
	c.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		if !w.stopped {
			w.queue = append(w.queue, ev)
		}
		w.mu.Unlock()
		select {
		case w.signal <- struct{}{}:
		default:
		}
	}
}
