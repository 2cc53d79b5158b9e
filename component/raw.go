package component

import (
	"context"
	"fmt"
	"net"
	"time"

	"mellium.im/xmpp/stanza"
)

// SendMessageRaw sends a message whose children are XML that the caller
// already holds as bytes, written to the connection as they are: no
// tokenising, no re-encoding. It is for bytes clinkd made itself from
// values it checked (an envelope's canonical XML, payloads it marshalled
// once), because a relay that re-parses what it holds to send it spends
// most of its time doing so (issue 15). Each child must be one or more
// whole elements, each declaring its namespace; a malformed one would
// corrupt the stream, and the server would close the link. As for
// SendMessage, m.From must be set; m.ID is made up when empty.
func (c *Component) SendMessageRaw(ctx context.Context, m stanza.Message, children ...[]byte) error {
	if m.ID == "" {
		m.ID = randomID()
	}
	bp := c.rawBufs.Get().(*[]byte)
	defer c.rawBufs.Put(bp)
	*bp = appendStart((*bp)[:0], m) // keep what grew for the next send
	return c.sendRaw(ctx, KindMessage, *bp, messageEnd, children...)
}

// RawXML is an IQ result's payload that clinkd made itself as bytes: one
// or more whole elements, each declaring its namespace, under the same
// rules as SendMessageRaw's children. An IQ handler that returns it has
// the result written as it is, because a large answer (a key lookup's
// proofs) marshalled, parsed back into tokens and encoded again cost more
// CPU than the rest of the lookup (issue 15).
type RawXML []byte

// sendRaw writes one stanza: start, the children as they are, and end.
func (c *Component) sendRaw(ctx context.Context, kind Kind, start, end []byte, children ...[]byte) error {
	sess, conn := c.session()
	if sess == nil {
		return ErrNotLinked
	}
	bufs := make(net.Buffers, 0, len(children)+2)
	bufs = append(bufs, start)
	for _, ch := range children {
		bufs = append(bufs, ch)
	}
	bufs = append(bufs, end)

	select {
	case c.sendSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("component: send %s: %w", kind, ctx.Err())
	}
	defer func() { <-c.sendSem }()
	// The session's writer: holding it keeps mellium.im/xmpp from writing
	// meanwhile (a Close), and its Flush (a no-op: every send ends with
	// one) says whether our side of the stream is still open. Between
	// two sends nothing is buffered in it, so bytes written to the
	// connection here come after everything it wrote and before what it
	// writes next.
	w := sess.TokenWriter()
	defer w.Close()
	if err := w.Flush(); err != nil {
		return fmt.Errorf("component: send %s: %w", kind, err)
	}
	deadline := time.Now().Add(c.cfg.SendTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetWriteDeadline(deadline)
	if _, err := bufs.WriteTo(conn); err != nil {
		// Part of a stanza may have gone: the stream cannot go on.
		conn.Close()
		return fmt.Errorf("component: send %s: %w", kind, err)
	}
	c.metrics.StanzasOut.WithLabelValues(string(kind)).Inc()
	return nil
}

var iqEnd = []byte("</iq>")

// appendIQStart appends the IQ's start element, as mellium.im/xmpp
// writes it on a component stream (its attributes, in another order).
func appendIQStart(b []byte, iq stanza.IQ) []byte {
	b = append(b, `<iq xmlns="`+nsAccept+`"`...)
	b = appendAttr(b, "id", iq.ID)
	b = appendAttr(b, "to", iq.To.String())
	b = appendAttr(b, "from", iq.From.String())
	b = appendAttr(b, "type", string(iq.Type))
	b = appendAttr(b, "xml:lang", iq.Lang)
	return append(b, '>')
}

// appendAttr appends name="v", escaped, unless v is empty.
func appendAttr(b []byte, name, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ' ')
	b = append(b, name...)
	b = append(b, `="`...)
	b = AppendEscaped(b, v)
	return append(b, '"')
}

var messageEnd = []byte("</message>")

// appendStart appends the message's start element, as mellium.im/xmpp
// writes it on a component stream.
func appendStart(b []byte, m stanza.Message) []byte {
	b = append(b, `<message xmlns="`+nsAccept+`"`...)
	b = appendAttr(b, "id", m.ID)
	b = appendAttr(b, "to", m.To.String())
	b = appendAttr(b, "from", m.From.String())
	b = appendAttr(b, "type", string(m.Type))
	b = appendAttr(b, "xml:lang", m.Lang)
	return append(b, '>')
}

// AppendEscaped appends s escaped for an attribute value in double
// quotes or for text, escaping what xml.EscapeText escapes, so that bytes
// written raw equal what encoding/xml writes.
func AppendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			b = append(b, "&#34;"...)
		case '\'':
			b = append(b, "&#39;"...)
		case '&':
			b = append(b, "&amp;"...)
		case '<':
			b = append(b, "&lt;"...)
		case '>':
			b = append(b, "&gt;"...)
		case '\t':
			b = append(b, "&#x9;"...)
		case '\n':
			b = append(b, "&#xA;"...)
		case '\r':
			b = append(b, "&#xD;"...)
		default:
			b = append(b, c)
		}
	}
	return b
}
