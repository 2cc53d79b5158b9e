package component

import (
	"context"
	"encoding/xml"
	"fmt"
	"strings"
	"testing"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

type rawTestPayload struct {
	XMLName xml.Name `xml:"urn:example:raw thing"`
	By      string   `xml:"by,attr"`
	Text    string   `xml:",chardata"`
}

// TestSendMessageRaw proves that a message written as bytes arrives as the
// same stanza as one written as tokens, that the two kinds of send can
// follow each other on one stream, and that attribute values are escaped.
func TestSendMessageRaw(t *testing.T) {
	t.Parallel()
	c, _, conn := newTestComponent(t, nil, nil)
	ctx := context.Background()
	p := rawTestPayload{By: `a"b'<c>&d`, Text: "x < y & z"}
	raw, err := xml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	m := stanza.Message{Type: stanza.HeadlineMessage, To: jid.MustParse(`a\40b@clink.example/r"1`), From: c.Domain()}
	for i, send := range []func(id string) error{
		func(id string) error { m.ID = id; return c.SendMessage(ctx, m, p, p) },
		func(id string) error { m.ID = id; return c.SendMessageRaw(ctx, m, raw, raw) },
		func(id string) error { m.ID = id; return c.SendMessage(ctx, m, p, p) },
		func(id string) error { m.ID = id; return c.SendMessageRaw(ctx, m, raw, raw) },
	} {
		id := string(rune('a'+i)) + `&"<`
		errc := make(chan error, 1)
		go func() { errc <- send(id) }()
		g := conn.read(t)
		if err := <-errc; err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if g.XMLName != (xml.Name{Space: nsAccept, Local: "message"}) || g.ID != id || g.Type != "headline" || g.To != m.To.String() || g.From != c.Domain().String() {
			t.Fatalf("send %d: got %+v", i, g)
		}
		d := xml.NewDecoder(strings.NewReader(g.Inner))
		for j := range 2 {
			var got rawTestPayload
			if err := d.Decode(&got); err != nil {
				t.Fatalf("send %d payload %d: %v in %q", i, j, err, g.Inner)
			}
			if got.By != p.By || got.Text != p.Text || got.XMLName.Space != "urn:example:raw" {
				t.Fatalf("send %d payload %d = %+v, want %+v", i, j, got, p)
			}
		}
	}
}

// TestRawXMLResult proves that an IQ result whose payload a handler
// returns as RawXML arrives as the same stanza as one returned as a
// value, with the request's id (escaped) and addresses swapped.
func TestRawXMLResult(t *testing.T) {
	t.Parallel()
	p := rawTestPayload{By: `a"b'<c>&d`, Text: "x < y & z"}
	raw, err := xml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	_, _, conn := newTestComponent(t, nil, func(c *Component) {
		c.HandleIQ(xml.Name{Space: testNS, Local: "value"}, IQHandlerFunc(func(context.Context, *Stanza) (any, error) { return p, nil }))
		c.HandleIQ(xml.Name{Space: testNS, Local: "raw"}, IQHandlerFunc(func(context.Context, *Stanza) (any, error) { return RawXML(raw), nil }))
	})
	for i, local := range []string{"value", "raw", "value", "raw"} {
		id := string(rune('a'+i)) + `&amp;&quot;&lt;`
		conn.send(t, `<iq type='get' id='`+id+`' from='a\40b@example/r"1' to='clink.example'><`+local+` xmlns='`+testNS+`'/></iq>`)
		g := conn.read(t)
		wantID := string(rune('a'+i)) + `&"<`
		if g.XMLName != (xml.Name{Space: nsAccept, Local: "iq"}) || g.ID != wantID || g.Type != "result" || g.To != `a\40b@example/r"1` || g.From != "clink.example" {
			t.Fatalf("%s result %d: got %+v", local, i, g)
		}
		var got rawTestPayload
		if err := xml.Unmarshal([]byte(g.Inner), &got); err != nil {
			t.Fatalf("%s result %d: %v in %q", local, i, err, g.Inner)
		}
		if got.By != p.By || got.Text != p.Text || got.XMLName.Space != "urn:example:raw" {
			t.Fatalf("%s result %d = %+v, want %+v", local, i, got, p)
		}
	}
}

func TestAppendEscapedMatchesEncodingXML(t *testing.T) {
	for _, s := range []string{"", "plain", `"'<>&`, "tab\tnl\ncr\r", "ünïcödé \\40"} {
		var want sliceBuf
		if err := xml.EscapeText(&want, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if got := string(AppendEscaped(nil, s)); got != string(want) {
			t.Errorf("AppendEscaped(%q) = %q, want %q", s, got, want)
		}
	}
}

type sliceBuf []byte

func (b *sliceBuf) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// TestKeptTokensOutliveTheDecoder proves what readStanza's keepToken
// relies on: the elements and attributes it keeps without copying are not
// overwritten by the tokens the decoder reads after them (the decoder
// makes a new attribute slice per element), and the text it copies is
// intact, so every payload reads back as it was written.
func TestKeptTokensOutliveTheDecoder(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString(`<message from='a@example.org/r' to='clink.example.org'>`)
	const n = 50
	for i := range n {
		fmt.Fprintf(&b, `<thing xmlns='urn:example:raw' by='by-%d' k%d='v%d'>text-%d &amp; more</thing>`, i, i, i, i)
	}
	b.WriteString(`</message>`)
	s, err := ParseStanza(b.String(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewTokenDecoder(s.TokenReader())
	var i int
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		start, ok := tok.(xml.StartElement)
		if !ok || start.Name.Local != "thing" {
			continue
		}
		var p struct {
			By   string     `xml:"by,attr"`
			Attr []xml.Attr `xml:",any,attr"`
			Text string     `xml:",chardata"`
		}
		if err := d.DecodeElement(&p, &start); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("by-%d k%d=v%d text-%d & more", i, i, i, i)
		got := p.By
		for _, a := range p.Attr {
			if a.Name.Local != "xmlns" {
				got += " " + a.Name.Local + "=" + a.Value
			}
		}
		if got += " " + p.Text; got != want {
			t.Fatalf("payload %d = %q, want %q", i, got, want)
		}
		i++
	}
	if i != n {
		t.Fatalf("read %d payloads, want %d", i, n)
	}
}
