package component

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"unicode/utf8"
)

// Reading the stream.
//
// After the handshake the link reads the server's stream with its own
// tokenizer rather than encoding/xml's Decoder, which reads a byte at a
// time through an interface and allocated most of what a relayed message
// cost clinkd (issue 15). The tokenizer reads the restricted XML of
// RFC 6120 §11.1 and gives the tokens encoding/xml's Decoder.Token would
// give for the same bytes, names translated to namespaces the same way, so
// that everything above it (stanzas, payload decoding) is unchanged:
//
//   - elements, attributes, text, CDATA sections, the five predefined
//     entities and character references; names split at their one colon
//     into prefix and local name, as encoding/xml does;
//   - comments, processing instructions and document type declarations are
//     refused (RFC 6120 §11.1 forbids them; mellium's reader refused them
//     too), as are unknown entities, characters outside XML's Char
//     production, invalid UTF-8 and mismatched end tags;
//   - text may come as several CharData tokens in a row (it is handed out
//     as it arrives, so that whitespace keepalives between stanzas are seen
//     when they arrive); readStanza joins them;
//   - one difference on purpose: a name with characters beyond ASCII is
//     taken whenever it is valid UTF-8 of XML characters, where
//     encoding/xml checks it against XML 1.0's fourth-edition tables.
//     The server has already accepted the name, and refusing it here
//     would end the link for everyone over one user's stanza.
//
// FuzzStreamReader holds it to encoding/xml on arbitrary input.

// linkBuffer is the link's read buffer. The handshake reads through it
// byte by byte (encoding/xml takes an io.ByteReader as it is, without a
// buffer of its own), so that no byte the server sent after the handshake
// is left in a reader the link no longer uses.
//
// Bytes read are zeroed before the buffer reads again, so that a timed
// message it carried does not stay in it once read (docs/expiry.md,
// "Overwriting"). Read bytes lie in buf[:r] and buf[w:hi]; fill moves the
// unread ones to the front and zeroes what is left of the old ones, so
// that while it waits for the source only unread bytes are held, and
// buf[hi:] is always zero.
type linkBuffer struct {
	src     io.Reader
	buf     []byte
	r, w    int
	hi      int   // buf[:hi] may hold bytes; buf[hi:] is zero
	initial int   // the size it shrinks back to after one long token
	err     error // the source's error, returned once the buffer is empty
}

// newLinkBuffer reads src through a buffer of size bytes, which grows
// when one token needs more.
func newLinkBuffer(src io.Reader, size int) *linkBuffer {
	size = max(size, 16)
	return &linkBuffer{src: src, buf: make([]byte, size), initial: size}
}

// linkBufferSize holds a few stanzas of the usual size: most arrive whole
// in one read.
const linkBufferSize = 16 << 10

// Read reads from the buffer, or from the source when it is empty.
func (b *linkBuffer) Read(p []byte) (int, error) {
	if b.r == b.w {
		if b.err != nil {
			return 0, b.err
		}
		if len(p) >= len(b.buf) {
			return b.src.Read(p)
		}
		if err := b.fill(0); err != nil && b.r == b.w {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}

// ReadByte reads one byte.
func (b *linkBuffer) ReadByte() (byte, error) {
	for b.r == b.w {
		if err := b.fill(0); err != nil && b.r == b.w {
			return 0, err
		}
	}
	c := b.buf[b.r]
	b.r++
	return c, nil
}

// fill reads at least one more byte into the buffer, moving what is unread
// to its start first, and growing it (up to max bytes) when it is full.
func (b *linkBuffer) fill(max int) error {
	if b.err != nil {
		return b.err
	}
	if b.r > 0 {
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	clear(b.buf[b.w:b.hi])
	b.hi = b.w
	switch {
	case b.w == len(b.buf):
		if len(b.buf) >= max {
			return errTokenTooLong
		}
		b.resize(min(2*len(b.buf), max))
	case len(b.buf) > b.initial && b.w < b.initial/2:
		// A long token made it grow; it is read.
		b.resize(b.initial)
	}
	for range 100 {
		n, err := b.src.Read(b.buf[b.w:])
		b.w += n
		b.hi = b.w
		if err != nil {
			b.err = err
		}
		if n > 0 || err != nil {
			return err
		}
	}
	b.err = io.ErrNoProgress
	return b.err
}

// resize moves what is unread to a buffer of size bytes and zeroes the
// old one.
func (b *linkBuffer) resize(size int) {
	buf := make([]byte, size)
	copy(buf, b.buf[:b.w])
	clear(b.buf[:b.hi])
	b.buf = buf
}

var errTokenTooLong = errors.New("component: an XML tag, entity or CDATA section longer than the link's limit")

// bufferedConn is the connection the session negotiates on: reads go
// through the link's buffer.
type bufferedConn struct {
	net.Conn
	in *linkBuffer
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.in.Read(p) }
func (c bufferedConn) ReadByte() (byte, error)    { return c.in.ReadByte() }

// streamReader tokenizes the content of a stream whose header was read.
type streamReader struct {
	in       *linkBuffer
	maxToken int // the longest tag, entity or CDATA section

	open []openElement
	ns   []nsBinding // in scope, innermost last

	pendingEnd bool      // a self-closing element's end is the next token
	final      bool      // the source has ended: what is buffered is all
	end        xml.Token // that end, an xml.EndElement
	closed     bool      // </stream:stream> was read
	err        error

	text    []byte            // the last text: scratch or the buffer
	scratch []byte            // where text is unescaped
	attrs   []rawAttr         // the tag being read
	names   map[string]string // interned names and namespaces

	// ends and starts hold tokens made once and handed out again: the
	// same few elements come in every stanza, and a token in an
	// interface costs an allocation each time it is made. Sharing them
	// is safe because tokens are values nobody changes: a stanza hands
	// out copies of its elements to decoders, which translate names in
	// place, and a TokenDecoder must not change them (stanza.go).
	ends   map[xml.Name]xml.Token   // xml.EndElement by name
	starts map[string]internedStart // by the tag as written; see startTag
}

// internedStart is a start element whose tag declares namespaces only, so
// that what it translates to depends only on its bytes and its name's
// namespace in scope: one tag written the same way under another default
// namespace is another element, and replaces it.
type internedStart struct {
	name xml.Name
	tok  xml.Token // an xml.StartElement
}

type openElement struct {
	prefix, local string
	nsMark        int // len(ns) before the element's declarations
}

type nsBinding struct{ prefix, uri string }

// maxInterned bounds the names a link remembers, so that a stream of
// made-up names cannot grow it.
const (
	maxInterned     = 1024
	maxInternedName = 128
)

// newStreamReader reads the stream's content from in. defaultNS is the
// stream's default namespace; the streams namespace is bound to the prefix
// "stream", as both servers write it (RFC 6120 §4.8.5 recommends it).
func newStreamReader(in *linkBuffer, defaultNS string, maxToken int) *streamReader {
	return &streamReader{
		in:       in,
		maxToken: maxToken,
		ns:       []nsBinding{{"", defaultNS}, {"stream", nsStreams}},
	}
}

const nsStreams = "http://etherx.jabber.org/streams"

// errShort means the buffer ends inside a token: read more and try again.
var errShort = errors.New("short")

// Token returns the next token. Text (CharData) is valid until the next
// call, as with encoding/xml.
func (s *streamReader) Token() (xml.Token, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.pendingEnd {
		s.pendingEnd = false
		s.pop()
		return s.end, nil // made by startTag (endToken)
	}
	if s.closed {
		return nil, io.EOF
	}
	for {
		if s.in.r < s.in.w {
			tok, n, err := s.scan(s.in.buf[s.in.r:s.in.w])
			if err == nil {
				s.in.r += n
				return tok, nil
			}
			if err != errShort {
				s.err = err
				return nil, err
			}
		}
		if err := s.in.fill(s.maxToken); err != nil {
			if s.in.r < s.in.w && err != errTokenTooLong {
				// Let the next call see what is left.
				continue
			}
			if err == io.EOF && (s.in.r < s.in.w || len(s.open) > 0) {
				err = io.ErrUnexpectedEOF
			}
			s.err = err
			return nil, err
		}
	}
}

func (s *streamReader) syntax(format string, args ...any) error {
	return fmt.Errorf("component: XML syntax error: "+format, args...)
}

// scan reads one token from the start of b and says how many bytes it
// took, or returns errShort when b ends inside it.
func (s *streamReader) scan(b []byte) (xml.Token, int, error) {
	if s.in.err != nil {
		// The source has ended: a token cut off is not coming back, and
		// text that ends in "\r" or "]" ends there.
		s.final = true
		defer func() { s.final = false }()
		tok, n, err := s.scanOne(b)
		if err == errShort {
			return nil, 0, io.ErrUnexpectedEOF
		}
		return tok, n, err
	}
	return s.scanOne(b)
}

func (s *streamReader) scanOne(b []byte) (xml.Token, int, error) {
	if b[0] != '<' {
		n, err := s.textRun(b)
		if err != nil {
			return nil, 0, err
		}
		if len(s.open) == 0 && len(bytes.TrimLeft(s.text, " \t\r\n")) != 0 {
			return nil, 0, s.syntax("text outside a stanza")
		}
		return xml.CharData(s.text), n, nil
	}
	if len(b) < 2 {
		return nil, 0, errShort
	}
	switch b[1] {
	case '/':
		return s.endTag(b)
	case '?':
		return nil, 0, s.syntax("processing instruction (RFC 6120 §11.1 forbids them)")
	case '!':
		const cdata = "<![CDATA["
		if len(b) < len(cdata) {
			if !bytes.HasPrefix([]byte(cdata), b) {
				return nil, 0, s.syntax("comment or declaration (RFC 6120 §11.1 forbids them)")
			}
			return nil, 0, errShort
		}
		if !bytes.HasPrefix(b, []byte(cdata)) {
			return nil, 0, s.syntax("comment or declaration (RFC 6120 §11.1 forbids them)")
		}
		if len(s.open) == 0 {
			return nil, 0, s.syntax("text outside a stanza")
		}
		return s.cdata(b, len(cdata))
	}
	return s.startTag(b)
}

// textRun unescapes text from the start of b up to the next '<' into
// s.text. When b ends first it stops where the text so far is whole (not
// inside an entity, a character or a "\r\n" or "]]>" that may go on), or
// returns errShort if that leaves nothing.
func (s *streamReader) textRun(b []byte) (int, error) {
	s.text = s.scratch[:0]
	i := 0
	plain := 0 // b[plain:i] is text not yet copied
	for i < len(b) {
		c := b[i]
		if c < utf8.RuneSelf && textPlain[c] {
			i++
			continue
		}
		switch {
		case c == '<':
			return s.textDone(b, plain, i)
		case c == '&':
			r, n, err := s.entity(b[i:])
			if err == errShort {
				return s.textDone(b, plain, i)
			}
			if err != nil {
				return 0, err
			}
			s.text = append(s.text, b[plain:i]...)
			s.text = utf8.AppendRune(s.text, r)
			i += n
			plain = i
		case c == '\r':
			if i+1 == len(b) && !s.final {
				return s.textDone(b, plain, i)
			}
			s.text = append(s.text, b[plain:i]...)
			s.text = append(s.text, '\n')
			i++
			if i < len(b) && b[i] == '\n' {
				i++
			}
			plain = i
		case c == ']':
			if i+3 > len(b) && bytes.HasPrefix([]byte("]]>"), b[i:]) && !s.final {
				return s.textDone(b, plain, i)
			}
			if bytes.HasPrefix(b[i:], []byte("]]>")) {
				return 0, s.syntax("unescaped ]]> not in CDATA section")
			}
			i++
		case c < utf8.RuneSelf:
			return 0, s.syntax("illegal character code %U", rune(c))
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				if !utf8.FullRune(b[i:]) {
					return s.textDone(b, plain, i)
				}
				return 0, s.syntax("invalid UTF-8")
			}
			if !isXMLChar(r) {
				return 0, s.syntax("illegal character code %U", r)
			}
			i += n
		}
	}
	return s.textDone(b, plain, i)
}

func (s *streamReader) textDone(b []byte, plain, i int) (int, error) {
	if len(s.text) == 0 {
		if i == 0 {
			return 0, errShort
		}
		// Nothing was unescaped: hand out the input itself.
		s.text = b[:i:i]
		return i, nil
	}
	s.text = append(s.text, b[plain:i]...)
	s.scratch = s.text
	return i, nil
}

// textPlain marks the ASCII bytes that stand for themselves in text.
var textPlain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = true
	}
	t['\t'], t['\n'] = true, true
	t['<'], t['&'], t['\r'], t[']'] = false, false, false, false
	return t
}()

// entity reads an entity or character reference at the start of b (which
// starts with '&') and returns the character it stands for.
func (s *streamReader) entity(b []byte) (rune, int, error) {
	end := bytes.IndexByte(b, ';')
	if end < 0 {
		// The longest valid reference is short; a longer one is wrong
		// whatever follows.
		if len(b) > maxEntity {
			return 0, 0, s.syntax("invalid character entity %.20s (no semicolon)", b)
		}
		return 0, 0, errShort
	}
	ref := b[1:end]
	if len(ref) > 0 && ref[0] == '#' {
		digits, base := ref[1:], 10
		if len(digits) > 0 && digits[0] == 'x' {
			digits, base = digits[1:], 16
		}
		if len(digits) == 0 || !allDigits(digits, base) {
			return 0, 0, s.syntax("invalid character entity %.20s", b[:end+1])
		}
		n, err := strconv.ParseUint(string(digits), base, 64)
		if err != nil || n > utf8.MaxRune {
			return 0, 0, s.syntax("invalid character entity %.20s", b[:end+1])
		}
		r := rune(n)
		if r >= 0xD800 && r <= 0xDFFF {
			// encoding/xml turns a surrogate's reference into U+FFFD
			// (through string(rune(n))); so does this reader, so that
			// what it took before it still takes.
			r = utf8.RuneError
		}
		if !isXMLChar(r) {
			return 0, 0, s.syntax("illegal character code %U", r)
		}
		return r, end + 1, nil
	}
	switch string(ref) {
	case "lt":
		return '<', end + 1, nil
	case "gt":
		return '>', end + 1, nil
	case "amp":
		return '&', end + 1, nil
	case "apos":
		return '\'', end + 1, nil
	case "quot":
		return '"', end + 1, nil
	}
	return 0, 0, s.syntax("invalid character entity %.20s", b[:end+1])
}

// maxEntity is longer than any reference worth reading ("&#x10FFFF;" with
// leading zeros aside).
const maxEntity = 64

func allDigits(b []byte, base int) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || base == 16 && ('a' <= c && c <= 'f' || 'A' <= c && c <= 'F')) {
			return false
		}
	}
	return true
}

// isXMLChar reports whether r is in XML 1.0's Char production.
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= 0x10FFFF
}

// cdata reads a CDATA section whose "<![CDATA[" is b[:i].
func (s *streamReader) cdata(b []byte, i int) (xml.Token, int, error) {
	end := bytes.Index(b[i:], []byte("]]>"))
	if end < 0 {
		return nil, 0, errShort
	}
	body := b[i : i+end]
	s.text = s.scratch[:0]
	for j := 0; j < len(body); {
		c := body[j]
		switch {
		case c == '\r':
			s.text = append(s.text, '\n')
			j++
			if j < len(body) && body[j] == '\n' {
				j++
			}
			continue
		case c < utf8.RuneSelf:
			if c < 0x20 && c != '\t' && c != '\n' {
				return nil, 0, s.syntax("illegal character code %U", rune(c))
			}
			s.text = append(s.text, c)
			j++
			continue
		}
		r, n := utf8.DecodeRune(body[j:])
		if r == utf8.RuneError && n == 1 {
			return nil, 0, s.syntax("invalid UTF-8")
		}
		if !isXMLChar(r) {
			return nil, 0, s.syntax("illegal character code %U", r)
		}
		s.text = append(s.text, body[j:j+n]...)
		j += n
	}
	s.scratch = s.text
	return xml.CharData(s.text), i + end + 3, nil
}

// name reads an XML name at the start of b: the bytes encoding/xml takes
// in a name. It returns errShort when b ends inside it.
func (s *streamReader) name(b []byte) ([]byte, error) {
	i := 0
	for i < len(b) && (b[i] >= utf8.RuneSelf || nameByte[b[i]]) {
		i++
	}
	if i == len(b) {
		return nil, errShort
	}
	n := b[:i]
	if i == 0 {
		return nil, nil
	}
	c := n[0]
	if c < utf8.RuneSelf && !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' || c == ':') {
		return nil, s.syntax("invalid XML name: %.40s", n)
	}
	if !utf8.Valid(n) {
		return nil, s.syntax("invalid XML name: %.40q", n)
	}
	for _, r := range string(n) {
		if r >= utf8.RuneSelf && !isXMLChar(r) {
			return nil, s.syntax("invalid XML name: %.40q", n)
		}
	}
	return n, nil
}

var nameByte = func() (t [utf8.RuneSelf]bool) {
	for c := 0; c < utf8.RuneSelf; c++ {
		t[c] = 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '_' || c == ':' || c == '.' || c == '-'
	}
	return t
}()

// qname splits a name as encoding/xml does: at its one colon, when both
// sides are non-empty; a second colon makes it no name at all.
func (s *streamReader) qname(n []byte) (prefix, local string, err error) {
	i := bytes.IndexByte(n, ':')
	if i < 0 {
		return "", s.intern(n), nil
	}
	if bytes.IndexByte(n[i+1:], ':') >= 0 {
		return "", "", s.syntax("invalid XML name: %.40s", n)
	}
	if i == 0 || i == len(n)-1 {
		return "", s.intern(n), nil
	}
	return s.intern(n[:i]), s.intern(n[i+1:]), nil
}

func (s *streamReader) intern(b []byte) string {
	if v, ok := s.names[string(b)]; ok {
		return v
	}
	v := string(b)
	if len(s.names) < maxInterned && len(b) <= maxInternedName {
		if s.names == nil {
			s.names = make(map[string]string)
		}
		s.names[v] = v
	}
	return v
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// endTag reads "</name>" at the start of b.
func (s *streamReader) endTag(b []byte) (xml.Token, int, error) {
	n, err := s.name(b[2:])
	if err != nil {
		return nil, 0, err
	}
	if n == nil {
		return nil, 0, s.syntax("expected element name after </")
	}
	i := skipSpace(b, 2+len(n))
	if i == len(b) {
		return nil, 0, errShort
	}
	if b[i] != '>' {
		return nil, 0, s.syntax("invalid characters between </%s and >", n)
	}
	prefix, local, err := s.qname(n)
	if err != nil {
		return nil, 0, err
	}
	if len(s.open) == 0 {
		// Only the stream's own end can come at the top.
		if prefix != "stream" || local != "stream" {
			return nil, 0, s.syntax("unexpected end element </%s>", n)
		}
		s.closed = true
		return xml.EndElement{Name: xml.Name{Space: nsStreams, Local: local}}, i + 1, nil
	}
	top := s.open[len(s.open)-1]
	if top.local != local {
		return nil, 0, s.syntax("element <%s> closed by </%s>", top.local, local)
	}
	if top.prefix != prefix {
		return nil, 0, s.syntax("element <%s> in space %s closed by </%s> in space %s", top.local, top.prefix, local, prefix)
	}
	end := s.endToken(s.translate(prefix, local, true))
	s.pop()
	return end, i + 1, nil
}

// endToken returns the end element of name, made once per name (at most
// maxInterned of them).
func (s *streamReader) endToken(name xml.Name) xml.Token {
	if t, ok := s.ends[name]; ok {
		return t
	}
	var t xml.Token = xml.EndElement{Name: name}
	if len(s.ends) < maxInterned {
		if s.ends == nil {
			s.ends = make(map[xml.Name]xml.Token)
		}
		s.ends[name] = t
	}
	return t
}

func (s *streamReader) pop() {
	top := s.open[len(s.open)-1]
	s.open = s.open[:len(s.open)-1]
	clear(s.ns[top.nsMark:])
	s.ns = s.ns[:top.nsMark]
}

// startTag reads "<name attr='value'...>" or "<name .../>" at the start of
// b. Nothing is changed until the whole tag has been read, so that a tag
// cut off by the buffer's end can be read again.
func (s *streamReader) startTag(b []byte) (xml.Token, int, error) {
	n, err := s.name(b[1:])
	if err != nil {
		return nil, 0, err
	}
	if n == nil {
		return nil, 0, s.syntax("expected element name after <")
	}
	i := 1 + len(n)
	attrs := s.attrs[:0]
	defer func() { s.attrs = attrs[:0] }()
	empty := false
	for {
		i = skipSpace(b, i)
		if i == len(b) {
			return nil, 0, errShort
		}
		if b[i] == '/' {
			if i+1 == len(b) {
				return nil, 0, errShort
			}
			if b[i+1] != '>' {
				return nil, 0, s.syntax("expected /> in element")
			}
			i += 2
			empty = true
			break
		}
		if b[i] == '>' {
			i++
			break
		}
		an, err := s.name(b[i:])
		if err != nil {
			return nil, 0, err
		}
		if an == nil {
			return nil, 0, s.syntax("expected attribute name in element")
		}
		i = skipSpace(b, i+len(an))
		if i == len(b) {
			return nil, 0, errShort
		}
		if b[i] != '=' {
			return nil, 0, s.syntax("attribute name without = in element")
		}
		i = skipSpace(b, i+1)
		if i == len(b) {
			return nil, 0, errShort
		}
		q := b[i]
		if q != '"' && q != '\'' {
			return nil, 0, s.syntax("unquoted or missing attribute value in element")
		}
		v, m, err := s.attrValue(b[i+1:], q, bytes.Equal(an, []byte("xmlns")) || bytes.HasPrefix(an, []byte("xmlns:")))
		if err != nil {
			return nil, 0, err
		}
		attrs = append(attrs, rawAttr{name: an, value: v})
		i += 1 + m
	}
	// The whole tag is here: declare its namespaces, then translate.
	mark := len(s.ns)
	declaresOnly := true // every attribute declares a namespace
	for j := range attrs {
		a := &attrs[j]
		prefix, local, err := s.qname(a.name)
		if err != nil {
			clear(s.ns[mark:])
			s.ns = s.ns[:mark]
			return nil, 0, err
		}
		a.prefix, a.local = prefix, local
		switch {
		case prefix == "xmlns":
			s.ns = append(s.ns, nsBinding{local, a.value})
		case prefix == "" && local == "xmlns":
			s.ns = append(s.ns, nsBinding{"", a.value})
		default:
			declaresOnly = false
		}
	}
	prefix, local, err := s.qname(n)
	if err != nil {
		clear(s.ns[mark:])
		s.ns = s.ns[:mark]
		return nil, 0, err
	}
	name := s.translate(prefix, local, true)
	s.open = append(s.open, openElement{prefix: prefix, local: local, nsMark: mark})
	if empty {
		s.pendingEnd = true
		s.end = s.endToken(name)
	}
	// A namespace declaration's name translates to itself, so a tag of
	// declarations only is the same token wherever its name is: made once
	// (at most maxInterned tags, of at most maxInternedName bytes).
	tag := b[:i]
	if declaresOnly {
		if in, ok := s.starts[string(tag)]; ok && in.name == name {
			return in.tok, i, nil
		}
	}
	start := xml.StartElement{Name: name, Attr: make([]xml.Attr, len(attrs))}
	for j, a := range attrs {
		start.Attr[j] = xml.Attr{Name: s.translate(a.prefix, a.local, false), Value: a.value}
	}
	var tok xml.Token = start
	if declaresOnly && len(tag) <= maxInternedName {
		if s.starts == nil || len(s.starts) >= maxInterned {
			s.starts = make(map[string]internedStart)
		}
		s.starts[string(tag)] = internedStart{name: name, tok: tok}
	}
	return tok, i, nil
}

type rawAttr struct {
	name          []byte
	value         string
	prefix, local string // name split (qname), once the whole tag is here
}

// translate resolves a prefix as encoding/xml's Decoder does: "xmlns"
// stays, "xml" is the XML namespace, a bound prefix becomes its namespace,
// an unprefixed element takes the default namespace, an unprefixed
// attribute none, and an unbound prefix stays as it is.
func (s *streamReader) translate(prefix, local string, element bool) xml.Name {
	switch {
	case prefix == "xmlns":
		return xml.Name{Space: prefix, Local: local}
	case prefix == "" && !element:
		return xml.Name{Local: local}
	case prefix == "xml":
		return xml.Name{Space: "http://www.w3.org/XML/1998/namespace", Local: local}
	case prefix == "" && local == "xmlns":
		return xml.Name{Local: local}
	}
	for j := len(s.ns) - 1; j >= 0; j-- {
		if s.ns[j].prefix == prefix {
			return xml.Name{Space: s.ns[j].uri, Local: local}
		}
	}
	return xml.Name{Space: prefix, Local: local}
}

// attrValue reads a quoted value up to its closing quote q, unescaped,
// and says how many bytes it took with the quote. A namespace's name is
// interned: the same few come with every stanza.
func (s *streamReader) attrValue(b []byte, q byte, namespace bool) (string, int, error) {
	str := func(v []byte) string {
		if namespace {
			return s.intern(v)
		}
		return string(v)
	}
	i := 0
	var out []byte // nil while nothing needed unescaping
	plain := 0
	for {
		if i == len(b) {
			return "", 0, errShort
		}
		c := b[i]
		switch {
		case c == q:
			if out == nil {
				return str(b[:i]), i + 1, nil
			}
			out = append(out, b[plain:i]...)
			return str(out), i + 1, nil
		case c == '<':
			return "", 0, s.syntax("unescaped < inside quoted string")
		case c == '&':
			out = append(out, b[plain:i]...)
			r, n, err := s.entity(b[i:])
			if err != nil {
				return "", 0, err
			}
			out = utf8.AppendRune(out, r)
			i += n
			plain = i
		case c == '\r':
			if i+1 == len(b) {
				return "", 0, errShort
			}
			out = append(out, b[plain:i]...)
			out = append(out, '\n')
			i++
			if b[i] == '\n' {
				i++
			}
			plain = i
		case c < utf8.RuneSelf:
			if c < 0x20 && c != '\t' && c != '\n' {
				return "", 0, s.syntax("illegal character code %U", rune(c))
			}
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				if !utf8.FullRune(b[i:]) {
					return "", 0, errShort
				}
				return "", 0, s.syntax("invalid UTF-8")
			}
			if !isXMLChar(r) {
				return "", 0, s.syntax("illegal character code %U", r)
			}
			i += n
		}
	}
}
