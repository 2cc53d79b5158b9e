package component

import (
	"context"
	"encoding/xml"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"mellium.im/xmpp/jid"
)

// FuzzHandle feeds arbitrary input to the path every received stanza
// takes: readStanza, then routing and a handler. Nothing may panic (a
// recovered handler panic counts as a failure here) and the size limit
// must hold whatever the input.
func FuzzHandle(f *testing.F) {
	for _, s := range []string{
		`<iq type='get' id='1' from='u@example/r' to='clink.example'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>`,
		`<iq type='set' id='2' from='u@example/r' to='clink.example'><echo xmlns='urn:clinkme:test:0' text='hi'/></iq>`,
		`<iq type='set' id='3' from='u@example/r' to='clink.example'><echo xmlns='urn:clinkme:test:0'><text>a</text></echo></iq>`,
		`<message from='u@example/r' to='clink.example'><body>x</body></message>`,
		`<presence from='u@example/r' to='a\40b@clink.example' type='unavailable'/>`,
		`<iq type='error' id='4' from='u@example' to='clink.example'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`,
		`<iq type='get' id='5' from='@@@' to=''><ping xmlns='urn:xmpp:ping'/></iq>`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := New(Config{Addr: "127.0.0.1:1", Domain: jid.MustParse("clink.example"), Secret: []byte("x"), MaxStanzaBytes: 1024}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.HandleIQ(xml.Name{Space: testNS, Local: "echo"}, IQHandlerFunc(func(ctx context.Context, iq *Stanza) (any, error) {
			var p echoPayload
			err := iq.Decode(xml.Name{Space: testNS, Local: "echo"}, &p)
			return p, err
		}))
		d := xml.NewDecoder(strings.NewReader(in))
		for {
			tok, err := d.Token()
			if err != nil {
				return
			}
			start, ok := tok.(xml.StartElement)
			if !ok {
				continue
			}
			s, oversized, err := readStanza(d, start, c.cfg.MaxStanzaBytes, nil, nil)
			if err != nil {
				return
			}
			if oversized && len(s.tokens) != 0 {
				t.Fatalf("oversized stanza kept %d tokens", len(s.tokens))
			}
			s.oversized = oversized
			c.handle(context.Background(), s)
			if testutil.ToFloat64(c.metrics.Panics) != 0 {
				t.Fatalf("handler panicked on %q", in)
			}
		}
	})
}
