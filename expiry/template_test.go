package expiry_test

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// sealing is how timedTemplate seals its envelope.
type sealing int

const (
	enhanced sealing = iota // with a contact key (about 1 KB)
	standard                // with bob's RSA key (about 2.3 KB)
)

// timedTemplate returns the XML of an envelope from alice to
// bob@example.org, id ID-PLACEHOLDER, written at start and valid for an
// hour, and its expires attribute as written. Tests make thousands of
// messages from it (forRecipient, then the expires attribute replaced):
// the relay checks neither signatures nor that the expiry matches the
// sealed header's.
func timedTemplate(t testing.TB, start time.Time, how sealing) (template, expiresAttr string) {
	t.Helper()
	alice := clinkdtest.Identity(t, "alice", "alice@example.org")
	h := envelope.Header{ID: "ID-PLACEHOLDER", Time: start, Expires: start.Add(time.Hour)}
	content := envelope.Content{Kind: envelope.KindText, Text: strings.Repeat("a typical short message ", 4)}
	var env *envelopexml.Envelope
	var err error
	switch how {
	case enhanced:
		env, err = envelope.SealEnhanced(alice, "bob@example.org", envelope.NewContactKey(), h, content)
	case standard:
		bob := clinkdtest.Identity(t, "bob", "bob@example.org")
		env, err = envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}}, h, content)
	}
	if err != nil {
		t.Fatal(err)
	}
	raw, err := xml.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	template, expiresAttr = string(raw), expiresAt(start.Add(time.Hour))
	if !strings.Contains(template, expiresAttr) {
		t.Fatalf("the envelope has no %s to replace:\n%s", expiresAttr, template)
	}
	return template, expiresAttr
}

// forRecipient is template with id as its id and addressed to to instead
// of bob@example.org.
func forRecipient(template, id, to string) string {
	text := strings.ReplaceAll(template, "ID-PLACEHOLDER", id)
	return strings.Replace(text, `jid="bob@example.org"`, `jid="`+to+`"`, 1)
}

// expiresAt is an envelope's expires attribute for t.
func expiresAt(t time.Time) string { return `expires="` + t.UTC().Format(time.RFC3339) + `"` }

// timedMessage is the message alice's laptop sends to the address of the
// user to at the component (to without the escaping of its domain, e.g.
// "bob@example.org"), carrying envelopeXML.
func timedMessage(to, envelopeXML string) string {
	return `<message type='headline' from='alice@example.org/laptop' to='` + strings.Replace(to, "@", `\40`, 1) +
		`@clink.example.org'>` + envelopeXML + `<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`
}

// timedStanza is timedMessage as the read loop parses it.
func timedStanza(t testing.TB, to, envelopeXML string) *component.Stanza {
	t.Helper()
	s, err := component.ParseStanza(timedMessage(to, envelopeXML), 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
