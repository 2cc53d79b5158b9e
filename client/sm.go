package client

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

// Stream management (XEP-0198, urn:xmpp:sm:3): both servers the SDK is
// tested with offer it (Prosody 0.12's mod_smacks, ejabberd's
// mod_stream_mgmt). With it the session counts the stanzas each side
// handled and, after a dropped connection, resumes the same stream: the
// server sends again what the device did not acknowledge, the device
// sends again what the server did not, so nothing is lost or repeated,
// and the device keeps its resource, its presence and its place at
// clinkd.
//
// The device enables it with resumption right after binding a resource
// on a new stream, counts every stanza (message, presence, iq) it sends
// from then on and keeps each one until the server acknowledges it
// (<a h/>, asked with <r/> after a few stanzas and when the link is
// quiet), and counts every stanza it handles from the server's
// <enabled/> on, answering the server's <r/>. After a drop it asks to
// resume (<resume previd h/>) in place of binding a resource; if the
// server refuses (<failed/>: the stream timed out, or the server
// restarted), it binds a new resource, enables stream management again
// and sends again the messages the old stream may not have delivered
// (the server's h in <failed/> says which, when it gives one).
const smNS = "urn:xmpp:sm:3"

// Bounds of stream management: an <r/> is sent after ackEvery stanzas
// not yet acknowledged (and when the link is quiet, by the keepalive);
// at most maxUnacked stanzas wait for an acknowledgement, beyond which
// sending waits for the link as without stream management.
const (
	ackEvery   = 8
	maxUnacked = 4096
)

// streamMgmt is the state of stream management, across the streams of
// one Client. Fields are guarded by Client.outMu but inH, which the read
// loop counts.
type streamMgmt struct {
	on      bool     // <enable/> sent on the current stream: stanzas sent are counted and kept
	id      string   // the stream's resumption id; "" when it cannot be resumed
	jid     jid.JID  // the full JID of the stream, to resume
	acked   uint32   // the server's last h
	queue   []queued // sent and not acknowledged, oldest first
	asked   bool     // an <r/> waits for its <a/>
	inH     atomic.Uint32
	counted atomic.Bool // inH counts on this stream (from <enabled/>)
}

type queued struct {
	raw  []byte
	kind string // message, presence or iq
}

// ack drops what the server acknowledged with h (mod 2^32).
func (m *streamMgmt) ack(h uint32) {
	n := h - m.acked // stanzas newly acknowledged
	if int64(n) > int64(len(m.queue)) {
		n = uint32(len(m.queue)) // a confused server: never drop what was not sent
	}
	clear(m.queue[:n])
	m.queue = m.queue[n:]
	m.acked = h
	m.asked = false
}

// smElement is any element of the namespace, as received.
type smElement struct {
	XMLName  xml.Name
	H        string `xml:"h,attr"`
	ID       string `xml:"id,attr"`
	Resume   string `xml:"resume,attr"`
	PrevID   string `xml:"previd,attr"`
	Location string `xml:"location,attr"`
}

// h returns the element's h attribute.
func (e *smElement) h() (uint32, bool) {
	v, err := strconv.ParseUint(e.H, 10, 32)
	return uint32(v), err == nil
}

func smStart(local string, attrs ...string) xml.StartElement {
	s := xml.StartElement{Name: xml.Name{Space: smNS, Local: local}}
	for i := 0; i+1 < len(attrs); i += 2 {
		s.Attr = append(s.Attr, xml.Attr{Name: xml.Name{Local: attrs[i]}, Value: attrs[i+1]})
	}
	return s
}

// smTokens is an empty element of the namespace.
func smTokens(local string, attrs ...string) xml.TokenReader {
	return xmlstream.Wrap(nil, smStart(local, attrs...))
}

// resumeAttempt is what a new connection tries to resume, and what it
// learnt.
type resumeAttempt struct {
	previd string
	h      uint32 // stanzas handled from the old stream
	jid    jid.JID

	resumed bool
	serverH uint32 // the server's h: what it handled of the old stream
	hKnown  bool
}

// bindOrResume is resource binding (RFC 6120, section 7) that first tries
// to resume the stream of try, when there is one and the server offers
// stream management: the stream is then ready with the old full JID and
// no resource is bound.
func bindOrResume(try *resumeAttempt) xmpp.StreamFeature {
	bind := xmpp.BindResource()
	f := bind
	f.Negotiate = func(ctx context.Context, s *xmpp.Session, data any) (xmpp.SessionState, io.ReadWriter, error) {
		if try != nil && try.previd != "" {
			if _, offered := s.Feature(smNS); offered {
				if err := resume(s, try); err != nil {
					return 0, nil, err
				}
				if try.resumed {
					if !s.UpdateAddr(try.jid) {
						return 0, nil, fmt.Errorf("client: resumed stream: cannot set the address %s", try.jid)
					}
					return xmpp.Ready, nil, nil
				}
			}
		}
		return bind.Negotiate(ctx, s, data)
	}
	return f
}

// resume sends <resume/> and reads the answer into try.
func resume(s *xmpp.Session, try *resumeAttempt) error {
	w := s.TokenWriter()
	_, err := xmlstream.Copy(w, smTokens("resume", "previd", try.previd, "h", strconv.FormatUint(uint64(try.h), 10)))
	if err == nil {
		err = w.Flush()
	}
	w.Close()
	if err != nil {
		return fmt.Errorf("client: resume: %w", err)
	}
	r := s.TokenReader()
	defer r.Close()
	d := xml.NewTokenDecoder(r)
	for {
		tok, err := d.Token()
		if err != nil {
			return fmt.Errorf("client: resume: %w", err)
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue // white space
		}
		var e smElement
		if err := d.DecodeElement(&e, &start); err != nil {
			return fmt.Errorf("client: resume: %w", err)
		}
		if start.Name.Space != smNS {
			return fmt.Errorf("client: resume: unexpected <%s xmlns=%q>", start.Name.Local, start.Name.Space)
		}
		try.serverH, try.hKnown = e.h()
		switch start.Name.Local {
		case "resumed":
			if !try.hKnown {
				return fmt.Errorf("client: resume: <resumed/> without h")
			}
			try.resumed = true
		case "failed":
		default:
			return fmt.Errorf("client: resume: unexpected <%s/>", start.Name.Local)
		}
		return nil
	}
}
