package component

// A scripted stand-in for the server side of XEP-0114, for unit tests of
// the routing logic only. Everything that claims to work with Prosody or
// ejabberd is proven against the real servers in e2e_test.go.

import (
	"crypto/sha1"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

type fakeServer struct {
	t      testing.TB
	ln     net.Listener
	secret string
	conns  chan *fakeConn
}

func startFake(t testing.TB, secret string) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, ln: ln, secret: secret, conns: make(chan *fakeConn, 16)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				fc, err := f.handshake(c)
				if err != nil {
					c.Close()
					return
				}
				f.conns <- fc
			}()
		}
	}()
	return f
}

type fakeConn struct {
	net.Conn
	dec *xml.Decoder
}

func (f *fakeServer) handshake(c net.Conn) (*fakeConn, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	dec := xml.NewDecoder(c)
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "stream" {
			break
		}
	}
	id := "fake-stream-id"
	fmt.Fprintf(c, `<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' from='clink.example' id='%s'>`, id)
	var hs struct {
		XMLName xml.Name `xml:"handshake"`
		Digest  string   `xml:",chardata"`
	}
	if err := dec.Decode(&hs); err != nil {
		return nil, err
	}
	sum := sha1.Sum([]byte(id + f.secret))
	if strings.TrimSpace(hs.Digest) != hex.EncodeToString(sum[:]) {
		io.WriteString(c, `<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>`)
		return nil, fmt.Errorf("bad handshake")
	}
	io.WriteString(c, `<handshake/>`)
	c.SetDeadline(time.Time{})
	return &fakeConn{Conn: c, dec: dec}, nil
}

// next waits for the component to connect.
func (f *fakeServer) next(t testing.TB) *fakeConn {
	t.Helper()
	select {
	case c := <-f.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("component did not connect")
		return nil
	}
}

func (c *fakeConn) send(t testing.TB, s string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

type gotStanza struct {
	XMLName xml.Name
	ID      string `xml:"id,attr"`
	Type    string `xml:"type,attr"`
	From    string `xml:"from,attr"`
	To      string `xml:"to,attr"`
	Inner   string `xml:",innerxml"`
}

// read returns the next stanza the component sent.
func (c *fakeConn) read(t testing.TB) gotStanza {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		tok, err := c.dec.Token()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			var g gotStanza
			if err := c.dec.DecodeElement(&g, &se); err != nil {
				t.Fatalf("decode: %v", err)
			}
			return g
		}
	}
}

// readUntil reads stanzas until one has the id, failing on any other
// stanza: it proves that what was sent before got no reply.
func (c *fakeConn) expectOnly(t testing.TB, id string) gotStanza {
	t.Helper()
	g := c.read(t)
	if g.ID != id {
		t.Fatalf("got unexpected %s id=%q type=%q: %s; want only the reply to %q", g.XMLName.Local, g.ID, g.Type, g.Inner, id)
	}
	return g
}

// pingRoundTrip sends a ping and waits for its result, proving the
// component still serves and that nothing else was queued before it.
func (c *fakeConn) pingRoundTrip(t testing.TB, id string) {
	t.Helper()
	c.send(t, fmt.Sprintf(`<iq type='get' id='%s' from='u@example/r' to='clink.example'><ping xmlns='urn:xmpp:ping'/></iq>`, id))
	g := c.expectOnly(t, id)
	if g.Type != "result" {
		t.Fatalf("ping %s: type %q: %s", id, g.Type, g.Inner)
	}
}
