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
	"os"
	"sync"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/extensions/extdisco"
)

// Config is what a device needs to log in, and how its session behaves.
// Only Addr, JID, Password and TLS are required.
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
	// Timeout bounds one connection: dialing, TLS and login (default 15s).
	Timeout time.Duration
	// RequestTimeout bounds a request (an IQ, or the wait for a link to
	// send on) whose context has no deadline of its own (default 30s):
	// nothing the SDK asks waits for ever.
	RequestTimeout time.Duration
	// KeepAlive is how long the link may be silent before the device
	// checks it (an XEP-0198 <r/>, or an XEP-0199 ping to the server),
	// and KeepAliveTimeout how long it then waits for any byte before it
	// drops the connection and reconnects (defaults 30s and 15s): a link
	// that went silent is found dead within 45 s.
	KeepAlive, KeepAliveTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between reconnection
	// attempts, which doubles from BackoffMin up to BackoffMax, less up to
	// a quarter at random (defaults 1s and 30s).
	BackoffMin, BackoffMax time.Duration
	// MaxInbox and MaxInboxBytes bound the stanzas received that no Next
	// took yet (defaults DefaultMaxInbox and DefaultMaxInboxBytes): past
	// either, the oldest are dropped and counted (InboxDropped), so that a
	// flood, or stanzas nobody asks for, cannot grow the device's memory
	// without end.
	MaxInbox      int
	MaxInboxBytes int
}

func (cfg *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Timeout, 15*time.Second)
	def(&cfg.RequestTimeout, 30*time.Second)
	def(&cfg.KeepAlive, 30*time.Second)
	def(&cfg.KeepAliveTimeout, 15*time.Second)
	def(&cfg.BackoffMin, time.Second)
	def(&cfg.BackoffMax, 30*time.Second)
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = cfg.BackoffMin
	}
}

// A Client is one logged-in device's session with its XMPP server. It
// keeps itself connected: after a dropped connection, a silent link
// (KeepAlive) or a server restart, it reconnects with backoff, resumes
// the stream when the server offers stream management (XEP-0198) so that
// nothing is lost or repeated, and otherwise logs in again with a new
// resource. Calls made while it reconnects wait for the link (within
// their context and Config.RequestTimeout). The session ends only when
// Close is called or the server refuses the credentials on a
// reconnection; Done is closed then, and Err says why. Its methods are
// safe for concurrent use.
type Client struct {
	cfg Config

	mu       sync.Mutex
	cur      *link         // the live link; nil while reconnecting (also written under outMu)
	jid      jid.JID       // of the current or last stream
	up       chan struct{} // closed while cur is set
	gen      uint64        // links attached so far
	closed   bool          // Close was called
	closing  chan struct{} // closed by Close
	done     chan struct{} // closed when the session ended for good
	err      error         // why; read after done is closed
	watchers []*watcher
	stats    SessionStats

	outMu sync.Mutex // orders every write with stream management's count
	sm    streamMgmt

	inbox     inbox
	iqMu      sync.RWMutex
	iqs       map[xml.Name]IQHandler // by payload name
	pendingMu sync.Mutex
	pending   map[string]*pendingIQ   // our IQs awaiting a reply, by id
	errWaits  map[string]chan *Stanza // message errors awaited, by id
	keepalive map[string]struct{}     // ids of keepalive pings in flight
}

// pendingIQ is an IQ waiting for its reply.
type pendingIQ struct {
	ch  chan iqReply // buffered, one reply
	gen uint64       // the link it was written on; 0 until written
}

type iqReply struct {
	s   *Stanza
	err error
}

// mechanisms in order of preference: mellium takes the first one that the
// server offers. PLAIN comes last and only ever runs inside TLS; it is what
// the ClinkID auth bridges offer, since they must see the password to check
// it.
var mechanisms = []sasl.Mechanism{sasl.ScramSha256, sasl.ScramSha1, sasl.Plain}

// Dial connects, secures the stream with StartTLS, authenticates, binds a
// resource, enables stream management when the server offers it, sends
// initial presence, and keeps the session connected until Close. A
// refused login is an *AuthError (errors.Is ErrNotAuthorized or
// ErrAccountLocked); a stream ended by the server a *StreamError.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.TLS == nil {
		return nil, errors.New("client: a TLS config is required")
	}
	cfg.setDefaults()
	cfg.TLS = cfg.TLS.Clone()
	if cfg.TLS.ServerName == "" {
		cfg.TLS.ServerName = cfg.JID.Domainpart()
	}
	if cfg.TLS.MinVersion < tls.VersionTLS12 {
		cfg.TLS.MinVersion = tls.VersionTLS12
	}
	c := &Client{
		cfg:     cfg,
		up:      make(chan struct{}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.inbox.init(cfg.MaxInbox, cfg.MaxInboxBytes)
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	l, _, err := c.connect(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("client: login as %s: %w", cfg.JID.Bare(), err)
	}
	if err := c.attach(l, nil); err != nil {
		l.close()
		return nil, fmt.Errorf("client: login as %s: %w", cfg.JID.Bare(), err)
	}
	go c.run(l)
	return c, nil
}

// JID returns the full address the server bound for this device. It
// changes when the session reconnects without resuming its stream.
func (c *Client) JID() jid.JID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.jid
}

// TLSState returns the TLS state of the current link to the server (the
// zero value while reconnecting).
func (c *Client) TLSState() tls.ConnectionState {
	c.mu.Lock()
	l := c.cur
	c.mu.Unlock()
	if l == nil {
		return tls.ConnectionState{}
	}
	return l.sess.ConnectionState()
}

// Close ends the session gracefully: the server forgets the stream (it
// is not resumed), and clinkd learns that the device went.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closed = true
	close(c.closing)
	l := c.cur
	c.mu.Unlock()
	if l != nil {
		c.outMu.Lock()
		l.sess.Close() // </stream:stream>
		c.outMu.Unlock()
		select {
		case <-l.served:
		case <-time.After(3 * time.Second):
		}
		l.close()
	}
	<-c.done
	return nil
}

// Done is closed when the session has ended for good.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the session ended for good: ErrClosed after Close, or
// the server's refusal of a reconnection (an *AuthError). It is nil while
// the session is connected or reconnecting.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Connected reports whether the session has a live link now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur != nil
}

// SessionStats counts what the session went through.
type SessionStats struct {
	Reconnects     uint64 // new streams after the first
	Resumed        uint64 // streams resumed (XEP-0198) after a dropped connection
	InboxDropped   uint64 // received stanzas dropped unread: the inbox was over its bounds
	InboxUnmatched uint64 // received stanzas dropped because no consumer takes them (Interest)
	Unacked        int    // stanzas sent that the server has not acknowledged yet
}

// Stats returns the session's counters.
func (c *Client) Stats() SessionStats {
	c.mu.Lock()
	s := c.stats
	c.mu.Unlock()
	c.outMu.Lock()
	s.Unacked = len(c.sm.queue)
	c.outMu.Unlock()
	s.InboxDropped = c.inbox.dropped.Load()
	s.InboxUnmatched = c.inbox.unmatched.Load()
	return s
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

// StanzaError returns the error an error-typed stanza carries.
func (s *Stanza) StanzaError() (stanza.Error, bool) {
	var se stanza.Error
	if s.Type != "error" || s.Decode(xml.Name{Space: stanza.NSClient, Local: "error"}, &se) != nil && s.Decode(xml.Name{Local: "error"}, &se) != nil {
		return stanza.Error{}, false
	}
	return se, true
}

// Next returns the next received stanza for which match returns true (any
// stanza if match is nil), waiting until ctx ends. Stanzas that do not match
// stay queued for later calls, within the inbox's bounds (Config.MaxInbox):
// past them the oldest go, whether a later call would have matched them or
// not. Once the session ended and nothing matching is queued, it returns
// an error matching ErrClosed. Received stanzas are kept across
// reconnections.
func (c *Client) Next(ctx context.Context, match func(*Stanza) bool) (*Stanza, error) {
	return c.inbox.next(ctx, match, func() error { return closedError(c.err) })
}

// Interest declares which received stanzas a consumer takes with Next.
// Once any interest is declared, a received stanza that no interest
// matches is dropped on arrival and counted (Stats().InboxUnmatched),
// instead of waiting in the inbox until its bound pushes out stanzas a
// consumer would take. Without any, every stanza is kept. stop withdraws
// it. A Device declares the messages from its clinkd.
func (c *Client) Interest(match func(*Stanza) bool) (stop func()) {
	return c.inbox.interest(match)
}

// InboxDropped returns how many received stanzas were dropped unread
// because the inbox was over its bounds.
func (c *Client) InboxDropped() uint64 { return c.inbox.dropped.Load() }

// IQ sends an IQ of type typ with the payload to to and decodes the
// result's payload into result (which may be nil). An error reply is
// returned as a stanza.Error. Without a deadline in ctx, it waits at most
// Config.RequestTimeout. A connection lost meanwhile, when the stream is
// not resumed, fails it with ErrConnectionLost.
//
// Replies are matched here rather than by mellium.im/xmpp's SendIQ, whose
// context also drives its write deadline (see write).
func (c *Client) IQ(ctx context.Context, typ stanza.IQType, to jid.JID, payload, result any) error {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	id := randomID()
	p := &pendingIQ{ch: make(chan iqReply, 1)}
	c.pendingMu.Lock()
	if c.pending == nil {
		c.pending = make(map[string]*pendingIQ)
	}
	c.pending[id] = p
	c.pendingMu.Unlock()
	defer func() {
		c.pendingMu.Lock()
		delete(c.pending, id)
		c.pendingMu.Unlock()
	}()
	gen, err := c.send(ctx, stanza.IQ{ID: id, Type: typ, To: to}.StartElement(), []any{payload})
	if err != nil {
		return fmt.Errorf("client: iq to %s: %w", to, err)
	}
	c.pendingMu.Lock()
	p.gen = gen
	c.pendingMu.Unlock()
	var reply iqReply
	select {
	case reply = <-p.ch:
	case <-ctx.Done():
		return fmt.Errorf("client: iq to %s: %w", to, ctx.Err())
	}
	if reply.err != nil {
		return fmt.Errorf("client: iq to %s: %w", to, reply.err)
	}
	return decodeIQResult(reply.s, to, result)
}

// decodeIQResult decodes an IQ reply into result, or returns its error.
func decodeIQResult(s *Stanza, to jid.JID, result any) error {
	isError := s.Type == string(stanza.ErrorIQ)
	if !isError && result == nil {
		return nil
	}
	d := xml.NewDecoder(bytes.NewReader(s.Raw))
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

// requestContext bounds ctx by Config.RequestTimeout when it has no
// deadline.
func (c *Client) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.RequestTimeout)
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

// SendMessage sends a message with the payloads as its children. Sending
// waits for a link while the session reconnects; with stream management
// a message is kept until the server acknowledges it and sent again on
// the resumed (or, failing that, the new) stream.
func (c *Client) SendMessage(ctx context.Context, m stanza.Message, payload ...any) error {
	_, err := c.send(ctx, m.StartElement(), payload)
	return err
}

// SendPresence sends a presence with the payloads as its children;
// with To set it is directed presence.
func (c *Client) SendPresence(ctx context.Context, p stanza.Presence, payload ...any) error {
	_, err := c.send(ctx, p.StartElement(), payload)
	return err
}

// send encodes a stanza and writes it; it returns the generation of the
// link it went on.
func (c *Client) send(ctx context.Context, start xml.StartElement, payload []any) (uint64, error) {
	r, err := payloadReaders(payload...)
	if err != nil {
		return 0, fmt.Errorf("client: %w", err)
	}
	raw, err := encodeStanza(start, r)
	if err != nil {
		return 0, fmt.Errorf("client: send %s: %w", start.Name.Local, err)
	}
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	gen, err := c.writeStanza(ctx, raw, start.Name.Local)
	if err != nil {
		return 0, fmt.Errorf("client: send %s: %w", start.Name.Local, err)
	}
	return gen, nil
}

// SendRaw writes a stanza as given: tests use it to send what a correct
// client never would. It is counted for stream management as a stanza
// when it is one.
func (c *Client) SendRaw(ctx context.Context, r xml.TokenReader) error {
	tok, err := r.Token()
	if err != nil {
		return err
	}
	start, ok := tok.(xml.StartElement)
	if !ok {
		return fmt.Errorf("client: SendRaw: a stanza starts with an element, not %T", tok)
	}
	raw, err := encodeStanza(start, xmlstream.Inner(r))
	if err != nil {
		return err
	}
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	_, err = c.writeStanza(ctx, raw, start.Name.Local)
	return err
}

// encodeStanza encodes a stanza to the bytes that go on the wire, and
// that stream management keeps for sending again. As mellium's own
// encoder does, it leaves out xmlns attributes of elements whose name
// has a namespace (encoding/xml writes the namespace already).
func encodeStanza(start xml.StartElement, payload xml.TokenReader) ([]byte, error) {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	write := func(t xml.Token) error {
		if s, ok := t.(xml.StartElement); ok && s.Name.Space != "" {
			attrs := s.Attr[:0:0]
			for _, a := range s.Attr {
				if a.Name.Local == "xmlns" && a.Name.Space == "" {
					continue
				}
				attrs = append(attrs, a)
			}
			s.Attr = attrs
			t = s
		}
		return enc.EncodeToken(t)
	}
	if err := write(start); err != nil {
		return nil, err
	}
	if payload != nil {
		for {
			tok, err := payload.Token()
			if tok != nil {
				if werr := write(xml.CopyToken(tok)); werr != nil {
					return nil, werr
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
		}
	}
	if err := enc.EncodeToken(start.End()); err != nil {
		return nil, err
	}
	if err := enc.Flush(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// LoadCertPool reads a PEM file of CA certificates into a new pool, for
// Config.TLS when the server's certificate is not signed by a system CA
// (a lab, a private CA). It fails when the file cannot be read or holds
// no certificate. (clinkd's internal/certpool is the server's loader, with
// the same rules; the SDK links nothing of the server.)
func LoadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("client: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client: CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// payloadReaders returns the tokens of payloads, one after the other:
// each one's own tokens when it is an xmlstream.Marshaler or an
// xml.TokenReader, else what encoding/xml makes of it. (mellium.im/xmpp
// v0.22.0's Session.EncodeElement ignores the start element it is given,
// so stanzas go out as tokens; clinkd's internal/xmlpayload does the same
// for the server.)
func payloadReaders(payloads ...any) (xml.TokenReader, error) {
	rs := make([]xml.TokenReader, 0, len(payloads))
	for _, v := range payloads {
		switch v := v.(type) {
		case xmlstream.Marshaler:
			rs = append(rs, v.TokenReader())
		case xml.TokenReader:
			rs = append(rs, v)
		default:
			b, err := xml.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("encode %T: %w", v, err)
			}
			rs = append(rs, xml.NewDecoder(bytes.NewReader(b)))
		}
	}
	return xmlstream.MultiReader(rs...), nil
}
