package component

import (
	"context"
	"encoding/xml"
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
