package component

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Kind is the kind of a stanza: iq, message or presence.
type Kind string

// The three stanza kinds of RFC 6120 §8.
const (
	KindIQ       Kind = "iq"
	KindMessage  Kind = "message"
	KindPresence Kind = "presence"
)

// A Stanza is one stanza as received from the server, read whole before it
// reaches a handler, so a handler never touches the connection.
//
// From is the address the server stamped on the stanza; XEP-0114 servers
// rewrite it for stanzas from their own users, so features may trust it.
type Stanza struct {
	Kind Kind
	ID   string
	Type string
	From jid.JID
	To   jid.JID
	Lang string

	start    xml.StartElement
	tokens   []xml.Token // the stanza's inner tokens, copied
	children []span      // top-level child elements, in order
	// childSpans holds the first children, so that a stanza's usual few
	// take no allocation of their own (a timed message has four: the
	// envelope and three hints).
	childSpans [6]span
	size       int       // approximate serialized size in bytes
	oversized  bool      // over MaxStanzaBytes: tokens and children dropped
	arrived    time.Time // when the read loop got it: its deadline counts from here
	// mem is where tokens and text lie, the link's to reuse once the
	// stanza's handler has returned (release); nil when they are the
	// stanza's own.
	mem *stanzaMemory
}

type span struct {
	name   xml.Name
	lo, hi int // tokens[lo] is the child's start element, tokens[hi-1] its end
}

// Payloads returns the names of the stanza's top-level child elements, in
// document order.
func (s *Stanza) Payloads() []xml.Name {
	names := make([]xml.Name, len(s.children))
	for i, c := range s.children {
		names[i] = c.name
	}
	return names
}

// Has reports whether the stanza has a top-level child with this name.
func (s *Stanza) Has(name xml.Name) bool {
	_, ok := s.child(name)
	return ok
}

// HasNS reports whether the stanza has a top-level child in namespace ns.
func (s *Stanza) HasNS(ns string) bool {
	for _, c := range s.children {
		if c.name.Space == ns {
			return true
		}
	}
	return false
}

func (s *Stanza) child(name xml.Name) (span, bool) {
	for _, c := range s.children {
		if c.name == name {
			return c, true
		}
	}
	return span{}, false
}

// Payload returns the tokens of the first top-level child with this name,
// start and end element included, or nil if there is none.
func (s *Stanza) Payload(name xml.Name) xml.TokenReader {
	c, ok := s.child(name)
	if !ok {
		return nil
	}
	return &sliceReader{toks: s.tokens[c.lo:c.hi]}
}

// ErrNoPayload is returned by Decode when the stanza lacks the payload.
var ErrNoPayload = errors.New("component: no such payload")

// Decode unmarshals the first top-level child with this name into v using
// encoding/xml, or v's DecodeTokens when it has one (TokenDecoder). A
// missing child gives ErrNoPayload; a malformed one an error that the
// router turns into bad-request when a handler returns it.
func (s *Stanza) Decode(name xml.Name, v any) error {
	c, ok := s.child(name)
	if !ok {
		return fmt.Errorf("%w: %s %s", ErrNoPayload, name.Space, name.Local)
	}
	var err error
	if td, ok := v.(TokenDecoder); ok {
		// The tokens as held: a TokenDecoder does not change them.
		err = td.DecodeTokens(&sliceReader{toks: s.tokens[c.lo+1 : c.hi], asHeld: true}, s.tokens[c.lo].(xml.StartElement))
	} else {
		err = xml.NewTokenDecoder(&sliceReader{toks: s.tokens[c.lo:c.hi]}).Decode(v)
	}
	if err != nil {
		return BadRequest(fmt.Sprintf("malformed %s payload: %v", name.Local, err))
	}
	return nil
}

// A TokenDecoder decodes a payload from its tokens as the stanza holds
// them: start, then the rest up to and including its end element from r,
// names already translated to namespaces and the XML already checked by
// the link's reader. It must not change the tokens: other readers of the
// stanza see the same ones. Decoding this way skips an xml.Decoder, which
// for a timed message's envelope cost more than the decoding itself
// (issue 15); envelopexml.Envelope is one.
type TokenDecoder interface {
	DecodeTokens(r xml.TokenReader, start xml.StartElement) error
}

// TokenReader returns the whole stanza, outer element included.
func (s *Stanza) TokenReader() xml.TokenReader {
	return xmlstream.Wrap(&sliceReader{toks: s.tokens}, s.start.Copy())
}

// Size is the approximate serialized size of the stanza in bytes.
func (s *Stanza) Size() int { return s.size }

type sliceReader struct {
	toks   []xml.Token
	i      int
	asHeld bool // elements handed out as held, not copied (TokenDecoder)
}

func (r *sliceReader) Token() (xml.Token, error) {
	if r.i >= len(r.toks) {
		return nil, io.EOF
	}
	t := r.toks[r.i]
	r.i++
	if c, ok := t.(xml.CharData); ok {
		// Text is handed out as it is held, not copied: nothing writes
		// to a token, and encoding/xml copies what it keeps. Capped, so
		// that an append by a reader cannot reach past it.
		return c[:len(c):len(c)], nil
	}
	// Elements are copied: a decoder translates their names and
	// attributes in place, which would change the stanza for the next
	// reader.
	if r.asHeld {
		return t, nil
	}
	return xml.CopyToken(t), nil
}

// tokenSize estimates how many bytes a token took on the wire. It need not
// be exact: it bounds memory and enforces the stanza size limit the same way
// whatever buffering the decoder does.
func tokenSize(t xml.Token) int {
	switch t := t.(type) {
	case xml.StartElement:
		n := 2 + len(t.Name.Local)
		for _, a := range t.Attr {
			n += 4 + len(a.Name.Local) + len(a.Value)
			if a.Name.Space != "" {
				n += 1 + len(a.Name.Space)
			}
		}
		return n
	case xml.EndElement:
		return 3 + len(t.Name.Local)
	case xml.CharData:
		return len(t)
	case xml.Comment:
		return 7 + len(t)
	case xml.ProcInst:
		return 4 + len(t.Target) + len(t.Inst)
	case xml.Directive:
		return 3 + len(t)
	}
	return 0
}

// readStanza reads the rest of the stanza whose start element was already
// read from r. Past max bytes it stops keeping tokens but still consumes the
// element, so the stream stays in step; the caller checks oversized.
// Addresses are parsed through jids when it is not nil.
//
// start is kept as it is: like every element token the link's reader and
// encoding/xml's Decoder give, it has names and attributes of its own.
func readStanza(r xml.TokenReader, start xml.StartElement, max int, jids *jidCache, mem *stanzaMemory) (s *Stanza, oversized bool, err error) {
	s = &Stanza{
		Kind:  Kind(start.Name.Local),
		start: start,
		size:  tokenSize(start),
		mem:   mem,
	}
	if mem != nil {
		s.tokens = mem.tokens[:0]
	} else {
		// Enough for a timed message's envelope without growing.
		s.tokens = make([]xml.Token, 0, 32)
	}
	s.children = s.childSpans[:0]
	for _, a := range start.Attr {
		if a.Name.Space != "" && a.Name.Space != "xml" && a.Name.Space != "http://www.w3.org/XML/1998/namespace" {
			continue
		}
		switch a.Name.Local {
		case "id":
			s.ID = a.Value
		case "type":
			s.Type = a.Value
		case "lang":
			s.Lang = a.Value
		case "from":
			// A malformed address is kept as the zero JID; handlers that need
			// a sender refuse the stanza.
			s.From, _ = jids.parse(a.Value)
		case "to":
			s.To, _ = jids.parse(a.Value)
		}
	}
	depth := 1
	childStart := -1
	for depth > 0 {
		tok, err := r.Token()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, false, err
		}
		s.size += tokenSize(tok)
		if s.size > max {
			oversized = true
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 2 {
				childStart = len(s.tokens)
			}
		case xml.EndElement:
			depth--
			if depth == 0 {
				continue // the stanza's own end element is not kept
			}
		}
		if oversized {
			s.tokens, s.children = nil, nil
			continue
		}
		if text, ok := tok.(xml.CharData); ok && len(s.tokens) > 0 {
			// The link's reader hands out text as it arrives, in
			// pieces when it arrives in pieces: keep it whole, as one
			// token, as encoding/xml would have given it.
			if last, ok := s.tokens[len(s.tokens)-1].(xml.CharData); ok {
				s.tokens[len(s.tokens)-1] = append(last, text...)
				continue
			}
		}
		s.tokens = append(s.tokens, s.keep(tok))
		if e, ok := tok.(xml.EndElement); ok && depth == 1 && childStart >= 0 {
			s.children = append(s.children, span{name: e.Name, lo: childStart, hi: len(s.tokens)})
			childStart = -1
		}
	}
	return s, oversized, nil
}

// jidCache remembers the addresses a link has parsed: the same senders
// and recipients come again and again, and parsing one (normalising it
// with PRECIS and IDNA) cost a tenth of a relayed message's CPU. It holds
// at most maxCachedJIDs and starts afresh when full. One read loop uses
// it; it is not safe for concurrent use.
type jidCache struct {
	m map[string]cachedJID
}

type cachedJID struct {
	j   jid.JID
	err error
}

const maxCachedJIDs = 4096

// parse is jid.Parse, remembered; a nil cache parses every time.
func (c *jidCache) parse(s string) (jid.JID, error) {
	if c == nil {
		return jid.Parse(s)
	}
	if r, ok := c.m[s]; ok {
		return r.j, r.err
	}
	j, err := jid.Parse(s)
	if c.m == nil || len(c.m) >= maxCachedJIDs {
		c.m = make(map[string]cachedJID)
	}
	c.m[s] = cachedJID{j, err}
	return j, err
}

// stanzaMemory is memory a link reuses from stanza to stanza: the slice of
// a stanza's tokens, and the text they hold, up to textArena bytes of it.
// Reading a relayed message's text into memory of its own was a fifth of
// what relaying it allocated (issue 15). The link takes it back once the
// stanza's handler has returned and zeroes the text, so a timed message's
// text does not wait for a heap scrub to be overwritten.
//
// Reusing it makes a rule of what was a habit: nothing keeps a stanza's
// text past its handler. Handlers decode what they keep (encoding/xml
// copies what it decodes; an envelope is decoded into the router's
// buffers), and what they send is written before they return. A Stanza
// released keeps no tokens: a late reader finds no payload, not another
// stanza's.
type stanzaMemory struct {
	text   []byte // cap textArena
	tokens []xml.Token
}

// textArena is how much of a stanza's text its link's memory holds; the
// rest (a stanza with more text than a timed message of a few KB) is
// copied into memory of its own, as before.
const textArena = 4 << 10

// maxKeptTokens bounds the token slice a link keeps for its next stanza.
const maxKeptTokens = 256

func newStanzaMemory() any {
	return &stanzaMemory{text: make([]byte, 0, textArena), tokens: make([]xml.Token, 0, 32)}
}

// keep returns tok in a form that outlives the reader's next Token call:
// text into the stanza's memory while it has room, the rest as keepToken.
func (s *Stanza) keep(tok xml.Token) xml.Token {
	text, ok := tok.(xml.CharData)
	if !ok || s.mem == nil || len(s.mem.text)+len(text) > cap(s.mem.text) {
		return keepToken(tok)
	}
	at := len(s.mem.text)
	s.mem.text = append(s.mem.text, text...)
	// Capped: an append to one token cannot write into the next.
	return xml.CharData(s.mem.text[at:len(s.mem.text):len(s.mem.text)])
}

// queuedBytes is what the stanza holds while it waits for a worker: its
// size, or the link's memory it was read into when that is more (a small
// stanza holds all of it), so that link.max_queued_bytes bounds both.
func (s *Stanza) queuedBytes() int {
	if s.mem == nil {
		return s.size
	}
	return max(s.size, cap(s.mem.text)+cap(s.tokens)*16)
}

// release takes the stanza's memory back, its text zeroed, once nothing
// reads the stanza any more (after its handler and reply), for the link
// to read another stanza into; nil when the stanza has none. The stanza
// keeps no tokens.
func (s *Stanza) release() *stanzaMemory {
	m := s.mem
	if m == nil {
		return nil
	}
	s.mem = nil
	clear(m.text)
	m.text = m.text[:0]
	clear(s.tokens)
	m.tokens = nil
	if cap(s.tokens) <= maxKeptTokens {
		m.tokens = s.tokens[:0]
	}
	s.tokens, s.children = nil, nil
	return m
}

// keepToken returns tok in a form that outlives the reader's next Token
// call. Of the tokens the link's reader and encoding/xml's Decoder give,
// only the byte slices (CharData, Comment, ProcInst, Directive) point into
// the reader's buffer; an element's name and attributes are strings in a
// slice made for that element, so they are kept as they are, not copied
// again (about 1 KB per envelope).
func keepToken(tok xml.Token) xml.Token {
	switch tok.(type) {
	case xml.StartElement, xml.EndElement:
		return tok
	}
	return xml.CopyToken(tok)
}

// isStanza reports whether name is one of the three stanza elements in the
// component stream's namespace.
func isStanza(name xml.Name) bool {
	switch name.Local {
	case "iq", "message", "presence":
		return name.Space == nsAccept || name.Space == stanza.NSClient || name.Space == ""
	}
	return false
}

const nsAccept = "jabber:component:accept"
