package component

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"time"

	"mellium.im/xmpp"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/internal/xmlpayload"
)

type pingPayload struct {
	XMLName xml.Name `xml:"urn:xmpp:ping ping"`
}

func randomID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// SendMessage sends a message with the payloads as its children. m.From
// must be set (ejabberd refuses a component stanza without one); it is
// usually the component's domain or an address at it.
func (c *Component) SendMessage(ctx context.Context, m stanza.Message, payload ...any) error {
	if m.ID == "" {
		m.ID = randomID()
	}
	return c.send(ctx, KindMessage, m.StartElement(), payload...)
}

// SendPresence sends a presence stanza with the payloads as its children.
func (c *Component) SendPresence(ctx context.Context, p stanza.Presence, payload ...any) error {
	if p.ID == "" {
		p.ID = randomID()
	}
	return c.send(ctx, KindPresence, p.StartElement(), payload...)
}

// SendIQ sends an IQ get or set and waits for its result or error, which
// it returns; an error reply is returned as the Stanza and as a
// stanza.Error. The reply route is in place before the request leaves, so
// a fast reply cannot be lost. If the link drops first the wait ends with
// ErrNotLinked.
func (c *Component) SendIQ(ctx context.Context, iq stanza.IQ, payload any) (*Stanza, error) {
	if iq.ID == "" {
		iq.ID = randomID()
	}
	ch := make(chan *Stanza, 1)
	c.pendingMu.Lock()
	if _, dup := c.pending[iq.ID]; dup {
		c.pendingMu.Unlock()
		return nil, fmt.Errorf("component: IQ id %q already awaits a reply", iq.ID)
	}
	c.pending[iq.ID] = ch
	c.pendingMu.Unlock()
	defer func() {
		c.pendingMu.Lock()
		delete(c.pending, iq.ID)
		c.pendingMu.Unlock()
	}()
	var p []any
	if payload != nil {
		p = []any{payload}
	}
	if err := c.send(ctx, KindIQ, iq.StartElement(), p...); err != nil {
		return nil, err
	}
	select {
	case reply := <-ch:
		if reply == nil {
			return nil, ErrNotLinked
		}
		if reply.Type == string(stanza.ErrorIQ) {
			se, ok := reply.StanzaError()
			if !ok {
				se = stanza.Error{Type: stanza.Cancel, Condition: stanza.UndefinedCondition}
			}
			return reply, se
		}
		return reply, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("component: waiting for reply to %s: %w", iq.ID, ctx.Err())
	}
}

// Sync returns once the server has answered a ping (XEP-0199) that this
// component sent after every stanza it wrote before the call. A server
// handles one stream's stanzas in order, so by then it has read and
// routed all of them: a handoff calls it before the taker links, because
// Prosody drops what it has not read from the old link when it closes it
// for the new one. An error reply (a server without ping) is an answer
// too. A balanced link (Config.Balanced) pings from its home address, so
// that the answer comes back to it; until the link has learnt one (within
// milliseconds of linking) the answer may reach another link, and Sync
// waits until ctx ends.
func (c *Component) Sync(ctx context.Context) error {
	_, err := c.SendIQ(ctx, stanza.IQ{Type: stanza.GetIQ, To: c.cfg.ServerDomain, From: c.pingFrom()}, pingPayload{})
	var se stanza.Error
	if errors.As(err, &se) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("component: sync with %s: %w", c.cfg.ServerDomain, err)
	}
	return nil
}

// deliverPending hands a result or error to the SendIQ waiting for it and
// reports whether one was.
func (c *Component) deliverPending(s *Stanza) bool {
	if c.first != nil && c.first.deliverPending(s) {
		return true
	}
	c.pendingMu.Lock()
	ch, ok := c.pending[s.ID]
	if ok {
		delete(c.pending, s.ID)
	}
	c.pendingMu.Unlock()
	if ok {
		ch <- s // buffered, and each channel gets at most one send
	}
	return ok
}

// failPending ends every wait when the link goes down: a reply can no
// longer arrive on it.
func (c *Component) failPending() {
	c.pendingMu.Lock()
	defer c.pendingMu.Unlock()
	for id, ch := range c.pending {
		ch <- nil
		delete(c.pending, id)
	}
}

func (c *Component) send(ctx context.Context, kind Kind, start xml.StartElement, payload ...any) error {
	sess, conn := c.session()
	if sess == nil {
		return ErrNotLinked
	}
	return c.sendStanza(ctx, sess, conn, kind, start, payload...)
}

// sendStanza writes one stanza. Writes are serialized here, each under its
// own write deadline on the connection, and any write error closes the
// connection so the link is re-made. Both guard against mellium.im/xmpp
// v0.22.0: a Send's context does not reliably bound a blocked write (its
// deadline goroutine sets and at once clears the deadline), and after a
// failed write its buffered writer keeps the error, leaving a session
// that reads but can never write again (docs/xmpp-library.md).
func (c *Component) sendStanza(ctx context.Context, sess *xmpp.Session, conn net.Conn, kind Kind, start xml.StartElement, payload ...any) error {
	r, err := xmlpayload.Readers(payload...)
	if err != nil {
		return fmt.Errorf("component: %w", err)
	}
	select {
	case c.sendSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("component: send %s: %w", kind, ctx.Err())
	}
	defer func() { <-c.sendSem }()
	deadline := time.Now().Add(c.cfg.SendTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetWriteDeadline(deadline)
	if err := sess.SendElement(context.Background(), r, start); err != nil {
		if !errors.Is(err, xmpp.ErrOutputStreamClosed) {
			// A failed write leaves the session unable to write again
			// (see above); a stream Release closed on our side is still
			// read to its end.
			conn.Close()
		}
		return fmt.Errorf("component: send %s: %w", kind, err)
	}
	c.metrics.StanzasOut.WithLabelValues(string(kind)).Inc()
	return nil
}
