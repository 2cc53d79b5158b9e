package component

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

const testStreamHeader = `<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='x' from='clink.example'>`

// readAll reads tokens until the stream ends, an error, or limit tokens,
// copying each and joining adjacent text as readStanza does.
func readAll(r xml.TokenReader, limit int) ([]xml.Token, error) {
	var toks []xml.Token
	for len(toks) < limit {
		tok, err := r.Token()
		if err != nil {
			if err == io.EOF {
				return toks, nil
			}
			return toks, err
		}
		tok = xml.CopyToken(tok)
		if text, ok := tok.(xml.CharData); ok && len(toks) > 0 {
			if last, ok := toks[len(toks)-1].(xml.CharData); ok {
				toks[len(toks)-1] = append(last, text...)
				continue
			}
		}
		toks = append(toks, tok)
	}
	return toks, nil
}

// referenceReader is what the link read before: encoding/xml's Decoder
// over the whole stream, header included, with mellium's rules on top
// (no comments, processing instructions or directives; no text but
// whitespace between stanzas; the stream's end ends it).
type referenceReader struct {
	d     *xml.Decoder
	depth int
	done  bool
	total int64 // bytes in all
	read  int64 // bytes read up to the end of the last token
}

func newReferenceReader(content []byte) (*referenceReader, error) {
	d := xml.NewDecoder(io.MultiReader(strings.NewReader(testStreamHeader), bytes.NewReader(content)))
	if _, err := d.Token(); err != nil {
		return nil, err
	}
	return &referenceReader{d: d, total: int64(len(testStreamHeader) + len(content)), read: d.InputOffset()}, nil
}

func (r *referenceReader) Token() (xml.Token, error) {
	if r.done {
		return nil, io.EOF
	}
	tok, err := r.d.Token()
	if err != nil {
		if err == io.EOF || strings.Contains(err.Error(), "unexpected EOF") {
			// The stream header is never closed, so encoding/xml calls
			// every end unexpected: between stanzas it is not.
			if r.depth == 0 && r.read == r.total {
				return nil, io.EOF
			}
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	r.read = r.d.InputOffset()
	switch t := tok.(type) {
	case xml.StartElement:
		r.depth++
	case xml.EndElement:
		if r.depth == 0 {
			r.done = true
			return t, nil
		}
		r.depth--
	case xml.CharData:
		if r.depth == 0 && len(bytes.TrimLeft(t, " \t\r\n")) != 0 {
			return nil, errors.New("text outside a stanza")
		}
	default:
		return nil, errors.New("comment, processing instruction or directive")
	}
	return tok, nil
}

func newTestStreamReader(src io.Reader, bufSize int) *streamReader {
	in := newLinkBuffer(src, bufSize)
	return newStreamReader(in, nsAccept, 1<<20)
}

// tokenizersAgree checks the link's reader against encoding/xml on one
// input, fed whole and a byte at a time through a small buffer that must
// grow: the same tokens, and the same verdict, except where the link's
// reader is meant to differ (a valid name beyond ASCII that encoding/xml's
// tables refuse).
func tokensAgree(t *testing.T, content []byte) {
	t.Helper()
	ref, err := newReferenceReader(content)
	if err != nil {
		t.Fatal(err)
	}
	want, wantErr := readAll(ref, 10000)
	feeds := []struct {
		name string
		src  func() io.Reader
		buf  int
	}{
		{"whole", func() io.Reader { return bytes.NewReader(content) }, 16 << 10},
		{"byte at a time", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(content)) }, 8},
		{"halves", func() io.Reader { return iotest.HalfReader(bytes.NewReader(content)) }, 32},
	}
	for _, f := range feeds {
		got, gotErr := readAll(newTestStreamReader(f.src(), f.buf), 10000)
		switch {
		case wantErr == nil && gotErr != nil:
			t.Fatalf("%s: encoding/xml reads %q, the link's reader fails: %v", f.name, content, gotErr)
		case wantErr != nil && gotErr == nil:
			if !strings.Contains(wantErr.Error(), "invalid XML name") || utf8.Valid(content) && isASCII(content) {
				t.Fatalf("%s: the link's reader reads %q, encoding/xml fails: %v", f.name, content, wantErr)
			}
		case wantErr == nil && !reflect.DeepEqual(got, want):
			t.Fatalf("%s: on %q\nthe link's reader gave %#v\nencoding/xml gave     %#v", f.name, content, got, want)
		}
	}
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

var streamReaderSeeds = []string{
	`<message from='a@example/r' to='clink.example' id='1'><body>hi &amp; bye &#x41;&#66;</body></message>`,
	` <iq type='get' id='2'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>` + "\n",
	`<message xmlns:e='urn:clinkme:envelope:1' xml:lang='en'><e:envelope v="1"><e:key rid='x'>QUJD</e:key></e:envelope></message>`,
	`<presence/><presence type='unavailable'></presence>`,
	"<message><body>a\r\nb\rc</body><x a='1\r\n2'/></message>",
	`<message><body><![CDATA[<not a tag> & ]]></body></message>`,
	`<message><body>]]></body></message>`,
	`<message><body>]] ></body></message>`,
	`<message><body>&bogus;</body></message>`,
	`<message><body>&#xD800;&#0;</body></message>`,
	`<message><!-- no --></message>`,
	`<?xml version='1.0'?><message/>`,
	`<message><a></b></message>`,
	`<message><x:a xmlns:x='u'></y:a></message>`,
	`<message a:b:c='1'/>`,
	`<message a=1/>`,
	`<message a='<'/>`,
	`<message>` + "\x00" + `</message>`,
	`<message>` + "\xff" + `</message>`,
	`<message><body>` + "h\u00e9llo \U0001F600" + `</body></message>`,
	`<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>`,
	`<message/></stream:stream><message/>`,
	`</stream>`,
	`text`,
	`<message><:a/><a:/></message>`,
	`<message xmlns='jabber:client'><body xmlns=''>x</body></message>`,
	`<message><y:body>unbound</y:body></message>`,
	`<message xmlns:xml='x' xml:a='1' xmlns:xmlns='y'/>`,
	`<message><body>&#x10FFFF;&#x110000;</body></message>`,
	`<message a = "1"	b='2'/>`,
}

// TestStreamReaderAgreesWithEncodingXML runs the fuzz seeds.
func TestStreamReaderAgreesWithEncodingXML(t *testing.T) {
	t.Parallel()
	for _, s := range streamReaderSeeds {
		tokensAgree(t, []byte(s))
	}
}

// FuzzStreamReader holds the link's reader to encoding/xml on arbitrary
// input.
func FuzzStreamReader(f *testing.F) {
	for _, s := range streamReaderSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		tokensAgree(t, content)
	})
}

// TestStreamReaderRefuses lists what the link's reader must refuse,
// beside what encoding/xml refuses (the fuzz test covers that).
func TestStreamReaderRefuses(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		`<message><!-- comment --></message>`,
		`<message><?pi x?></message>`,
		`<!DOCTYPE x [<!ENTITY a 'b'>]><message/>`,
		`<message><body>&a;</body></message>`,
		`<message><body>&#1;</body></message>`,
		`<message><body>` + "\x01" + `</body></message>`,
		`<message a='&#xFFFE;'/>`,
		`hello<message/>`,
		`</message>`,
		`<message></presence>`,
		`<message><body>]]></body></message>`,
		`<message><a>`, // cut off: the link ended inside a stanza
	} {
		_, err := readAll(newTestStreamReader(strings.NewReader(in), 16<<10), 1000)
		if err == nil {
			t.Errorf("%q: read without an error", in)
		}
	}
}

// TestStreamReaderTakesNamesBeyondASCII is the one intended difference
// from encoding/xml: a name XML 1.0 (fifth edition) allows but
// encoding/xml's older tables do not.
func TestStreamReaderTakesNamesBeyondASCII(t *testing.T) {
	t.Parallel()
	in := "<message><x\u0487y xmlns='urn:x'/></message>" // U+0487: a combining mark
	if _, err := readAll(xml.NewDecoder(strings.NewReader(in)), 100); err == nil {
		t.Fatalf("encoding/xml takes %q: pick another name", in)
	}
	toks, err := readAll(newTestStreamReader(strings.NewReader(in), 16<<10), 100)
	if err != nil {
		t.Fatal(err)
	}
	if got := toks[1].(xml.StartElement).Name; got != (xml.Name{Space: "urn:x", Local: "x\u0487y"}) {
		t.Fatalf("name = %v", got)
	}
}

// TestKeepaliveIsSeenWhenItArrives: the read loop counts any input as a
// sign of life (keepalive), so whitespace between stanzas must come out
// as it arrives, not when the next stanza starts.
func TestKeepaliveIsSeenWhenItArrives(t *testing.T) {
	t.Parallel()
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	r := newStreamReader(newLinkBuffer(client, linkBufferSize), nsAccept, 1<<20)
	go server.Write([]byte("<message/> "))
	for _, want := range []any{xml.StartElement{}, xml.EndElement{}, xml.CharData{}} {
		done := make(chan xml.Token, 1)
		go func() {
			tok, err := r.Token()
			if err != nil {
				t.Error(err)
			}
			done <- tok
		}()
		select {
		case tok := <-done:
			if reflect.TypeOf(tok) != reflect.TypeOf(want) {
				t.Fatalf("got %T, want %T", tok, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %T within 10 s: the reader waits for more input", want)
		}
	}
}

// TestHandshakeLeavesNothingBehind: the server may send stanzas in the
// same packet as the handshake's answer; encoding/xml, reading the
// handshake through the link's buffer, must leave them there.
func TestHandshakeLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	in := newLinkBuffer(strings.NewReader(testStreamHeader+`<handshake/><message id='first'/>`), linkBufferSize)
	d := xml.NewDecoder(bufferedConn{in: in})
	for range 3 { // the header, <handshake> and </handshake>
		if _, err := d.Token(); err != nil {
			t.Fatal(err)
		}
	}
	toks, err := readAll(newStreamReader(in, nsAccept, 1<<20), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 2 || toks[0].(xml.StartElement).Attr[0].Value != "first" {
		t.Fatalf("after the handshake the link read %v", toks)
	}
}

// TestTokenTooLong: one tag may not grow the buffer past its limit.
func TestTokenTooLong(t *testing.T) {
	t.Parallel()
	in := newLinkBuffer(strings.NewReader(`<message a='`+strings.Repeat("x", 5000)+`'/>`), 64)
	_, err := readAll(newStreamReader(in, nsAccept, 4096), 10)
	if !errors.Is(err, errTokenTooLong) {
		t.Fatalf("err = %v, want errTokenTooLong", err)
	}
}

// signallingReader tells when the reader asks for more input, and then
// waits: the buffer is as the reader left it before reading again.
type signallingReader struct {
	data    []byte
	asked   chan struct{}
	release chan struct{}
}

func (r *signallingReader) Read(p []byte) (int, error) {
	if len(r.data) > 0 {
		n := copy(p, r.data)
		r.data = r.data[n:]
		return n, nil
	}
	r.asked <- struct{}{}
	<-r.release
	return 0, io.EOF
}

// TestReadBytesAreZeroed: once a stanza is read and the link waits for
// more, no byte of it is left in the link's buffer (a timed message must
// not outlive its expiry there; docs/expiry.md, "Overwriting").
func TestReadBytesAreZeroed(t *testing.T) {
	t.Parallel()
	const secret = "c2VjcmV0IGNpcGhlcnRleHQ"
	for _, size := range []int{16, 64, linkBufferSize} { // growing, and not
		src := &signallingReader{
			data:    []byte(`<message><payload xmlns='urn:x'>` + secret + `</payload></message>`),
			asked:   make(chan struct{}),
			release: make(chan struct{}),
		}
		in := newLinkBuffer(src, size)
		r := newStreamReader(in, nsAccept, 1<<20)
		for { // up to </message>; the text may come in pieces
			tok, err := r.Token()
			if err != nil {
				t.Fatal(err)
			}
			if end, ok := tok.(xml.EndElement); ok && end.Name.Local == "message" {
				break
			}
		}
		done := make(chan error, 1)
		go func() {
			_, err := r.Token()
			done <- err
		}()
		<-src.asked
		if i := bytes.Index(in.buf, []byte(secret[:8])); i >= 0 {
			t.Errorf("buffer of %d: the stanza's text is still in the link's buffer at %d", size, i)
		}
		if i := bytes.IndexFunc(in.buf, func(r rune) bool { return r != 0 }); i >= 0 {
			t.Errorf("buffer of %d: byte %d is %q, not zero", size, i, in.buf[i])
		}
		close(src.release)
		if err := <-done; err != io.EOF {
			t.Fatalf("after the stream: %v", err)
		}
	}
}

// TestStanzaMemoryIsZeroedAndReused: a stanza read into the link's memory
// holds its text there; released, the text is zeroed and the stanza has no
// payload left to read (not another stanza's); the next stanza reads into
// the same memory.
func TestStanzaMemoryIsZeroedAndReused(t *testing.T) {
	t.Parallel()
	const first, second = "Zmlyc3QgY2lwaGVydGV4dA==", "c2Vjb25kIGNpcGhlcnRleHQ="
	stream := `<message from='a@example.org/r'><payload xmlns='urn:x'>` + first + `</payload></message>` +
		`<message from='b@example.org/r'><payload xmlns='urn:x'>` + second + `</payload></message>`
	r := newStreamReader(newLinkBuffer(strings.NewReader(stream), linkBufferSize), nsAccept, 1<<20)
	payload := xml.Name{Space: "urn:x", Local: "payload"}
	read := func(mem *stanzaMemory) (*Stanza, xml.CharData) {
		t.Helper()
		tok, err := r.Token()
		if err != nil {
			t.Fatal(err)
		}
		s, oversized, err := readStanza(r, tok.(xml.StartElement), 1<<20, nil, mem)
		if err != nil || oversized {
			t.Fatal(err, oversized)
		}
		toks, err := readAll(s.Payload(payload), 10)
		if err != nil || len(toks) != 3 {
			t.Fatalf("payload %v: %v", toks, err)
		}
		return s, s.tokens[1].(xml.CharData) // as held, not copied
	}
	s1, text1 := read(newStanzaMemory().(*stanzaMemory))
	if string(text1) != first {
		t.Fatalf("first stanza's text %q", text1)
	}
	mem := s1.release()
	if mem == nil || s1.release() != nil {
		t.Fatal("release gave back no memory, or gave it back twice")
	}
	if !bytes.Equal(text1, make([]byte, len(text1))) {
		t.Errorf("released, the first stanza's text reads %q, not zeros", text1)
	}
	if s1.Has(payload) || s1.Payload(payload) != nil || !errors.Is(s1.Decode(payload, new(struct{})), ErrNoPayload) {
		t.Error("a released stanza still has its payload")
	}
	s2, text2 := read(mem)
	if string(text2) != second {
		t.Fatalf("second stanza's text %q", text2)
	}
	if &text2[0] != &text1[0] {
		t.Error("the second stanza's text is not in the memory the first gave back")
	}
	s2.release()
}
