package client

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// The transport rules of docs/envelope.md, "Transport", without a server.

var exampleComponent = jid.MustParse("clink.example.org")

// TestRelayPeer: a device reads only messages that clinkd relayed from a
// user's address at its component.
func TestRelayPeer(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, kind, typ, from string
		peer                  string // "" if the message is not read
	}{
		{"ordinary relayed", "message", "chat", `alice\40example.org@clink.example.org`, "alice@example.org"},
		{"timed relayed", "message", "headline", `alice\40example.org@clink.example.org`, "alice@example.org"},
		{"no type", "message", "", `alice\40example.org@clink.example.org`, "alice@example.org"},
		{"with a resource", "message", "chat", `alice\40example.org@clink.example.org/x`, "alice@example.org"},
		{"error", "message", "error", `alice\40example.org@clink.example.org`, ""},
		{"directly from the user", "message", "chat", "alice@example.org/phone", ""},
		{"from the user's bare JID", "message", "chat", "alice@example.org", ""},
		{"from the component itself", "message", "headline", "clink.example.org", ""},
		{"from another component", "message", "chat", `alice\40example.org@clink.example.net`, ""},
		{"not a user's address", "message", "chat", "alice@clink.example.org", ""},
		{"presence", "presence", "", `alice\40example.org@clink.example.org`, ""},
	} {
		s := &Stanza{Kind: tt.kind, Type: tt.typ, From: jid.MustParse(tt.from)}
		peer, ok := relayPeer(s, exampleComponent)
		if got := map[bool]string{true: peer.String()}[ok]; got != tt.peer {
			t.Errorf("relayPeer(%s from %s) = %q, %v; want %q", tt.name, tt.from, got, ok, tt.peer)
		}
	}
}

// TestCheckAuthor: the envelope's signed from must fit the address it came
// from.
func TestCheckAuthor(t *testing.T) {
	t.Parallel()
	const me = "bob@example.org"
	env := func(from string, to ...string) *envelopexml.Envelope {
		return &envelopexml.Envelope{ID: "m1", From: from, To: to}
	}
	alice := jid.MustParse("alice@example.org")
	for _, tt := range []struct {
		name string
		peer jid.JID
		sent bool
		env  *envelopexml.Envelope
		ok   bool
	}{
		{"from the peer", alice, false, env("alice@example.org", me), true},
		{"from the peer, to several", alice, false, env("alice@example.org", "carol@example.net", me), true},
		{"from someone else", alice, false, env("carol@example.net", me), false},
		{"own message without the sent mark", alice, false, env(me, "alice@example.org"), false},
		{"own copy, to the peer", alice, true, env(me, "alice@example.org"), true},
		{"own copy, to several", alice, true, env(me, "carol@example.net", "alice@example.org"), true},
		{"copy claimed by the peer", alice, true, env("alice@example.org", me), false},
		{"copy not to the peer", alice, true, env(me, "carol@example.net"), false},
	} {
		err := checkAuthor(me, tt.peer, tt.sent, tt.env)
		if tt.ok && err != nil || !tt.ok && !errors.Is(err, ErrWrongAuthor) {
			t.Errorf("checkAuthor(%s) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// TestTransportExamples: every message a device sends in the examples of
// docs/envelope.md (those addressed to bob at clink.example.org, with the
// id of a test vector) is what SendEnvelope sends for that vector, once
// the elided envelope is put back. Namespace declarations are compared by
// meaning: Go's encoder repeats them, the document does not.
func TestTransportExamples(t *testing.T) {
	t.Parallel()
	doc := repoFile(t, "docs/envelope.md")
	blocks := regexp.MustCompile("(?s)```xml\n\\s*(<message .*?)```").FindAllSubmatch(doc, -1)
	elided := regexp.MustCompile(`<envelope [^\n]*</envelope>`)
	var checked []string
	for _, b := range blocks {
		example := string(b[1])
		if !strings.Contains(example, `to="bob\40example.org@clink.example.org"`) {
			continue // not sent by a device
		}
		id := regexp.MustCompile(`<message [^>]*id="([^"]+)"`).FindStringSubmatch(example)
		if id == nil {
			t.Errorf("example without an id:\n%s", example)
			continue
		}
		env, raw := readVectorEnvelope(t, id[1])
		m, payload, err := envelopeMessage(exampleComponent, jid.MustParse("bob@example.org"), env)
		if err != nil {
			t.Fatal(err)
		}
		r, err := payloadReaders(payload...)
		if err != nil {
			t.Fatal(err)
		}
		var sent bytes.Buffer
		enc := xml.NewEncoder(&sent)
		if _, err := xmlstream.Copy(enc, m.Wrap(r)); err != nil {
			t.Fatal(err)
		}
		enc.Flush()
		if !elided.MatchString(example) {
			t.Errorf("example %s: no elided envelope on one line", id[1])
			continue
		}
		full := elided.ReplaceAllLiteralString(example, string(raw))
		got, want := xmlTokens(t, sent.Bytes()), xmlTokens(t, []byte(full))
		if !slices.Equal(got, want) {
			t.Errorf("example %s differs from what SendEnvelope sends:\n got %q\nwant %q", id[1], got, want)
		}
		checked = append(checked, id[1])
	}
	if len(checked) < 3 {
		t.Errorf("checked examples %v, want the ordinary, the timed and the key-share one", checked)
	}
}

// readVectorEnvelope returns the envelope of a test vector of
// client/envelope, parsed and as it is in the file.
func readVectorEnvelope(t *testing.T, name string) (*envelopexml.Envelope, []byte) {
	t.Helper()
	b, err := os.ReadFile("envelope/testdata/vectors/" + name)
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := bytes.Cut(b, []byte("\n\n"))
	if !ok {
		t.Fatalf("vector %s: no body", name)
	}
	body = bytes.TrimSuffix(body, []byte("\n"))
	var env envelopexml.Envelope
	if err := xml.Unmarshal(body, &env); err != nil {
		t.Fatalf("vector %s: %v", name, err)
	}
	return &env, body
}

// xmlTokens lists the elements, attributes and text of an XML document in
// order: names with their namespaces, attributes sorted and without
// namespace declarations, text without surrounding white space.
func xmlTokens(t *testing.T, doc []byte) []string {
	t.Helper()
	var out []string
	d := xml.NewDecoder(bytes.NewReader(doc))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			var attrs []string
			for _, a := range tok.Attr {
				if a.Name.Space == "xmlns" || a.Name.Space == "" && a.Name.Local == "xmlns" {
					continue
				}
				attrs = append(attrs, fmt.Sprintf("%s:%s=%q", a.Name.Space, a.Name.Local, a.Value))
			}
			slices.Sort(attrs)
			out = append(out, fmt.Sprintf("<{%s}%s %s>", tok.Name.Space, tok.Name.Local, strings.Join(attrs, " ")))
		case xml.EndElement:
			out = append(out, "</"+tok.Name.Local+">")
		case xml.CharData:
			if s := strings.TrimSpace(string(tok)); s != "" {
				out = append(out, s)
			}
		}
	}
}
