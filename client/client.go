// Package client is the reference ClinkMe device SDK: it logs in to the XMPP
// server over TLS, talks to clinkd, and does what the ClinkMe app does with
// keys and envelopes. The project's end-to-end tests and benchmarks use it
// as a real device would, and clinkctl is a thin CLI over it.
//
// This file holds the XMPP connection; the envelope crypto, the device key
// store and device-to-device sync live in sub-packages.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/extensions/extdisco"
	"github.com/clinkme/clinkd/internal/certpool"
	"github.com/clinkme/clinkd/internal/xmlpayload"
)

// Config is what a device needs to log in.
type Config struct {
	// Addr is the server's c2s host:port.
	Addr string
	// JID is the account (user@domain); a resource is chosen by the server.
	JID jid.JID
	// Password is the account's password or, with ClinkID, an app token.
	Password string
	// TLS verifies the server; its ServerName defaults to JID's domain.
	// TLS is always required: the SDK refuses a server without StartTLS.
	TLS *tls.Config
	// Timeout bounds dialing and login (default 15s).
	Timeout time.Duration
	// MaxInbox and MaxInboxBytes bound the stanzas received that no Next
	// took yet (defaults DefaultMaxInbox and DefaultMaxInboxBytes): past
	// either, the oldest are dropped and counted (InboxDropped), so that a
	// flood, or stanzas nobody asks for, cannot grow the device's memory
	// without end.
	MaxInbox      int
	MaxInboxBytes int
}

// The inbox's default bounds. 32 MiB is what bounds memory: 128 stanzas
// of Prosody's default maximum size (256 KiB), or over ten thousand
// ordinary envelopes. 8,192 stanzas bound the work of each Next, which
// looks through what is queued; they hold many times what a device that
// reads its events has waiting even under a flood (it drops a throttled
// sender's envelopes at microseconds each), and a burst of thousands of
// messages that a test or a benchmark reads only once all are sent.
const (
	DefaultMaxInbox      = 8192
	DefaultMaxInboxBytes = 32 << 20
)

// A Client is one logged-in device. Its methods are safe for concurrent
// use.
type Client struct {
	sess *xmpp.Session
	conn net.Conn
	jid  jid.JID

	inbox   inbox
	iqMu    sync.RWMutex
	iqs     map[xml.Name]IQHandler // by payload name
	serveMu sync.Mutex
	served  chan struct{} // closed when the read loop ends
	err     error         // why it ended; read after served is closed

	writeSem  chan struct{} // one write at a time, each with its deadline
	pendingMu sync.Mutex
	pending   map[string]chan *Stanza // our IQs awaiting a reply, by id
}

// mechanisms in order of preference: mellium takes the first one that the
// server offers. PLAIN comes last and only ever runs inside TLS; it is what
// the ClinkID auth bridges offer, since they must see the password to check
// it.
var mechanisms = []sasl.Mechanism{sasl.ScramSha256, sasl.ScramSha1, sasl.Plain}

// Dial connects, secures the stream with StartTLS, authenticates and binds
// a resource.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.TLS == nil {
		return nil, errors.New("client: a TLS config is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	tlsCfg := cfg.TLS.Clone()
	if tlsCfg.ServerName == "" {
		tlsCfg.ServerName = cfg.JID.Domainpart()
	}
	if tlsCfg.MinVersion < tls.VersionTLS12 {
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", cfg.Addr, err)
	}
	sess, err := xmpp.NewClientSession(ctx, cfg.JID.Bare(), conn,
		xmpp.StartTLS(tlsCfg),
		xmpp.SASL("", cfg.Password, mechanisms...),
		xmpp.BindResource(),
	)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("client: login as %s: %w", cfg.JID.Bare(), err)
	}
	if sess.State()&xmpp.Secure == 0 {
		sess.Close()
		conn.Close()
		return nil, errors.New("client: the stream is not encrypted")
	}
	c := &Client{sess: sess, conn: conn, jid: sess.LocalAddr(), served: make(chan struct{}), writeSem: make(chan struct{}, 1)}
	c.inbox.init(cfg.MaxInbox, cfg.MaxInboxBytes)
	go c.serve()
	// Initial presence makes the device available, so that messages to
	// the user's bare JID reach it (RFC 6121 §8.5.2) instead of offline
	// storage.
	if err := c.SendPresence(ctx, stanza.Presence{}); err != nil {
		c.Close()
		return nil, fmt.Errorf("client: initial presence: %w", err)
	}
	return c, nil
}

// JID returns the full address the server bound for this device.
func (c *Client) JID() jid.JID { return c.jid }

// TLSState returns the TLS state of the link to the server.
func (c *Client) TLSState() tls.ConnectionState { return c.sess.ConnectionState() }

// Close ends the session gracefully.
func (c *Client) Close() error {
	err := c.sess.Close()
	select {
	case <-c.served:
	case <-time.After(3 * time.Second):
	}
	c.conn.Close()
	return err
}

// Done is closed when the session has ended.
func (c *Client) Done() <-chan struct{} { return c.served }

func (c *Client) serve() {
	err := c.sess.Serve(xmpp.HandlerFunc(c.handle))
	c.err = err
	c.inbox.close()
	close(c.served)
}

// handle runs on the session's read loop: it records messages, presences
// and IQ results nobody waits for (replies to SendRaw) for Next, passes IQ
// requests to the handler registered for their payload, and leaves other
// IQ requests to the session's default service-unavailable answer.
func (c *Client) handle(t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	request := false
	switch start.Name.Local {
	case "message", "presence":
	case "iq":
		switch attrValue(start.Attr, "type") {
		case "result", "error":
		case "get", "set":
			c.iqMu.RLock()
			request = len(c.iqs) > 0
			c.iqMu.RUnlock()
			if !request {
				return nil
			}
		default:
			return nil
		}
	default:
		return nil
	}
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
	if request {
		return c.answerIQ(t, s)
	}
	if s.Kind == "iq" {
		c.pendingMu.Lock()
		ch, ok := c.pending[s.ID]
		delete(c.pending, s.ID)
		c.pendingMu.Unlock()
		if ok {
			ch <- s // buffered; one reply per id
			return nil
		}
	}
	c.inbox.push(s)
	return nil
}

// An IQHandler answers IQ get or set requests sent to this device. It runs
// on the session's read loop, so it must neither block nor send: it checks
// the request, hands it on (to a channel, say) and returns. A nil error
// answers with an empty result, a stanza.Error or an *IQError with that
// error, any other error with internal-server-error.
type IQHandler func(iq *Stanza) error

// IQError is an IQ error reply with an application-specific condition
// (RFC 6120 §8.3.2), e.g. Jingle's <unknown-session/>.
type IQError struct {
	Err stanza.Error
	App xml.Name // the condition element, in its own namespace
}

func (e *IQError) Error() string { return e.Err.Error() + " (" + e.App.Local + ")" }

// Unwrap returns the stanza error.
func (e *IQError) Unwrap() error { return e.Err }

// HandleIQ routes IQ get and set requests whose payload is name to h. A
// request for a payload without a handler is answered service-unavailable.
func (c *Client) HandleIQ(name xml.Name, h IQHandler) {
	c.iqMu.Lock()
	defer c.iqMu.Unlock()
	if c.iqs == nil {
		c.iqs = make(map[xml.Name]IQHandler)
	}
	c.iqs[name] = h
}

// answerIQ runs the handler for s's payload and writes its answer.
func (c *Client) answerIQ(w xmlstream.TokenWriter, s *Stanza) error {
	names := s.payloads()
	var h IQHandler
	if len(names) == 1 {
		c.iqMu.RLock()
		h = c.iqs[names[0]]
		c.iqMu.RUnlock()
	}
	if h == nil {
		return nil // Serve answers service-unavailable
	}
	reply := stanza.IQ{ID: s.ID, To: s.From, Type: stanza.ResultIQ}
	var payload xml.TokenReader
	if err := h(s); err != nil {
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
	_, err := xmlstream.Copy(w, reply.Wrap(payload))
	return err
}

// payloads returns the names of the stanza's top-level child elements.
func (s *Stanza) payloads() []xml.Name {
	var names []xml.Name
	d := xml.NewDecoder(bytes.NewReader(s.Raw))
	depth := 0
	for {
		tok, err := d.Token()
		if err != nil {
			return names
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 2 {
				names = append(names, t.Name)
			}
		case xml.EndElement:
			depth--
		}
	}
}

func attrValue(attrs []xml.Attr, name string) string {
	for _, a := range attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// A Stanza is a message, a presence or an unawaited IQ result the device
// received.
type Stanza struct {
	Kind     string // message, presence or iq
	ID, Type string
	From, To jid.JID
	Raw      []byte // the whole stanza as received
}

// Decode unmarshals the first child element named name into v.
func (s *Stanza) Decode(name xml.Name, v any) error {
	d := xml.NewDecoder(bytes.NewReader(s.Raw))
	depth := 0
	for {
		tok, err := d.Token()
		if err != nil {
			if err == io.EOF {
				return fmt.Errorf("client: %s has no %s payload", s.Kind, name.Local)
			}
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 2 && t.Name == name {
				return d.DecodeElement(v, &t)
			}
		case xml.EndElement:
			depth--
		}
	}
}

// Has reports whether the stanza has a child element named name.
func (s *Stanza) Has(name xml.Name) bool {
	var discard struct{}
	return s.Decode(name, &discard) == nil
}

// Next returns the next received stanza for which match returns true (any
// stanza if match is nil), waiting until ctx ends. Stanzas that do not match
// stay queued for later calls, within the inbox's bounds (Config.MaxInbox):
// past them the oldest go, whether a later call would have matched them or
// not.
func (c *Client) Next(ctx context.Context, match func(*Stanza) bool) (*Stanza, error) {
	return c.inbox.next(ctx, match)
}

// InboxDropped returns how many received stanzas were dropped unread
// because the inbox was over its bounds.
func (c *Client) InboxDropped() uint64 { return c.inbox.dropped.Load() }

// IQ sends an IQ of type typ with the payload to to and decodes the
// result's payload into result (which may be nil). An error reply is
// returned as a stanza.Error.
//
// Replies are matched here rather than by mellium.im/xmpp's SendIQ, whose
// context also drives its write deadline (see write).
func (c *Client) IQ(ctx context.Context, typ stanza.IQType, to jid.JID, payload, result any) error {
	id := randomID()
	ch := make(chan *Stanza, 1)
	c.pendingMu.Lock()
	if c.pending == nil {
		c.pending = make(map[string]chan *Stanza)
	}
	c.pending[id] = ch
	c.pendingMu.Unlock()
	defer func() {
		c.pendingMu.Lock()
		delete(c.pending, id)
		c.pendingMu.Unlock()
	}()
	if err := c.send(ctx, stanza.IQ{ID: id, Type: typ, To: to}.StartElement(), []any{payload}); err != nil {
		return fmt.Errorf("client: iq to %s: %w", to, err)
	}
	var reply *Stanza
	select {
	case reply = <-ch:
	case <-c.served:
		return fmt.Errorf("client: iq to %s: %w", to, ErrClosed)
	case <-ctx.Done():
		return fmt.Errorf("client: iq to %s: %w", to, ctx.Err())
	}
	isError := reply.Type == string(stanza.ErrorIQ)
	if !isError && result == nil {
		return nil
	}
	d := xml.NewDecoder(bytes.NewReader(reply.Raw))
	depth := 0
	for {
		tok, err := d.Token()
		if err != nil {
			if isError {
				return stanza.Error{Type: stanza.Cancel, Condition: stanza.UndefinedCondition}
			}
			return fmt.Errorf("client: iq result from %s has no payload", to)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth != 2 {
				continue
			}
			if !isError {
				return d.DecodeElement(result, &t)
			}
			if t.Name.Local == "error" {
				var se stanza.Error
				if err := d.DecodeElement(&se, &t); err != nil {
					return fmt.Errorf("client: iq error from %s: %w", to, err)
				}
				return se
			}
			d.Skip()
			depth--
		case xml.EndElement:
			depth--
		}
	}
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

type pingPayload struct {
	XMLName xml.Name `xml:"urn:xmpp:ping ping"`
}

// Ping sends an XEP-0199 ping to to and waits for the answer.
func (c *Client) Ping(ctx context.Context, to jid.JID) error {
	return c.IQ(ctx, stanza.GetIQ, to, pingPayload{}, nil)
}

// ExternalServices asks service (clinkd's component domain) for the STUN
// and TURN servers a call may use, with fresh TURN credentials (XEP-0215).
// Only users of the server's own domain get them.
func (c *Client) ExternalServices(ctx context.Context, service jid.JID) ([]extdisco.Service, error) {
	var res extdisco.Services
	if err := c.IQ(ctx, stanza.GetIQ, service, extdisco.Services{}, &res); err != nil {
		return nil, err
	}
	return res.Services, nil
}

// DiscoInfo asks to for its XEP-0030 identities and features.
func (c *Client) DiscoInfo(ctx context.Context, to jid.JID) (disco.Info, error) {
	var info disco.Info
	err := c.IQ(ctx, stanza.GetIQ, to, disco.InfoQuery{}, &info)
	return info, err
}

// SendMessage sends a message with the payloads as its children.
func (c *Client) SendMessage(ctx context.Context, m stanza.Message, payload ...any) error {
	return c.send(ctx, m.StartElement(), payload)
}

// SendPresence sends a presence with the payloads as its children;
// with To set it is directed presence.
func (c *Client) SendPresence(ctx context.Context, p stanza.Presence, payload ...any) error {
	return c.send(ctx, p.StartElement(), payload)
}

func (c *Client) send(ctx context.Context, start xml.StartElement, payload []any) error {
	r, err := xmlpayload.Readers(payload...)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if err := c.write(ctx, func() error { return c.sess.SendElement(context.Background(), r, start) }); err != nil {
		return fmt.Errorf("client: send %s: %w", start.Name.Local, err)
	}
	return nil
}

// SendRaw writes a stanza as given: tests use it to send what a correct
// client never would.
func (c *Client) SendRaw(ctx context.Context, r xml.TokenReader) error {
	return c.write(ctx, func() error { return c.sess.Send(context.Background(), r) })
}

// write runs one write to the server under a write deadline of its own,
// taken from ctx (at most 30s). mellium.im/xmpp v0.22.0 turns a send's
// context into a deadline from a goroutine that can wake after the send
// returned, see both the send finished and the context cancelled, and set
// a deadline in the past on the connection: a later, unrelated write then
// fails with i/o timeout (seen here after Dial's context ended). So every
// write gets context.Background() and its deadline from here.
func (c *Client) write(ctx context.Context, f func() error) error {
	select {
	case c.writeSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.writeSem }()
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.conn.SetWriteDeadline(deadline)
	defer c.conn.SetWriteDeadline(time.Time{})
	return f()
}

// inbox holds received stanzas until Next takes them. The read loop must
// never block on a slow consumer, or IQ replies behind it would stall, so
// a push never waits: past the bounds it drops the oldest stanzas, counted.
type inbox struct {
	mu       sync.Mutex
	queue    []*Stanza
	bytes    int           // of Raw, in queue
	max      int           // stanzas, ≥ 1
	maxBytes int           // bytes of Raw, ≥ 1; one stanza larger than it is kept alone
	signal   chan struct{} // closed and replaced when the queue changes
	closed   bool
	dropped  atomic.Uint64
}

func (b *inbox) init(max, maxBytes int) {
	if max <= 0 {
		max = DefaultMaxInbox
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxInboxBytes
	}
	b.max, b.maxBytes = max, maxBytes
	b.signal = make(chan struct{})
}

func (b *inbox) push(s *Stanza) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.queue = append(b.queue, s)
	b.bytes += len(s.Raw)
	for len(b.queue) > 1 && (len(b.queue) > b.max || b.bytes > b.maxBytes) {
		b.bytes -= len(b.queue[0].Raw)
		b.queue[0] = nil // let it be collected
		b.queue = b.queue[1:]
		b.dropped.Add(1)
	}
	close(b.signal)
	b.signal = make(chan struct{})
}

func (b *inbox) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	close(b.signal)
	b.signal = make(chan struct{})
}

// ErrClosed is returned by Next once the session has ended and nothing
// matching is queued.
var ErrClosed = errors.New("client: session ended")

func (b *inbox) next(ctx context.Context, match func(*Stanza) bool) (*Stanza, error) {
	for {
		b.mu.Lock()
		for i, s := range b.queue {
			if match == nil || match(s) {
				b.bytes -= len(s.Raw)
				copy(b.queue[i:], b.queue[i+1:])
				b.queue[len(b.queue)-1] = nil
				b.queue = b.queue[:len(b.queue)-1]
				b.mu.Unlock()
				return s, nil
			}
		}
		closed, sig := b.closed, b.signal
		b.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		select {
		case <-sig:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// LoadCertPool reads a PEM file of CA certificates into a new pool, for
// Config.TLS when the server's certificate is not signed by a system CA
// (a lab, a private CA).
func LoadCertPool(path string) (*x509.CertPool, error) {
	pool, err := certpool.Load(path)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return pool, nil
}
