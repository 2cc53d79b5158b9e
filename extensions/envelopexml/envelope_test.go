package envelopexml_test

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

var t0 = time.Date(2025, 11, 25, 19, 44, 0, 0, time.UTC)

func filler(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func standard() *envelopexml.Envelope {
	return &envelopexml.Envelope{
		Kind: envelopexml.Standard,
		From: "alice@example.org",
		To:   []string{"bob@example.org", "carol@example.net"},
		ID:   "m-1",
		Time: t0,
		Keys: []envelopexml.WrappedKey{
			{Fingerprint: filler(1, envelopexml.FingerprintSize), Key: filler(2, 384)},
			{Fingerprint: filler(3, envelopexml.FingerprintSize), Key: filler(4, 512)},
			{Fingerprint: filler(5, envelopexml.FingerprintSize), Key: filler(6, 385)},
		},
		Nonce:     filler(7, envelopexml.NonceSize),
		Payload:   filler(8, 272),
		Signature: filler(9, 384),
	}
}

func enhanced() *envelopexml.Envelope {
	return &envelopexml.Envelope{
		Kind:      envelopexml.Enhanced,
		From:      "alice@example.org",
		To:        []string{"bob@example.org"},
		ID:        "m-2",
		Time:      t0,
		Expires:   t0.Add(time.Hour),
		KeyID:     filler(1, envelopexml.KeyIDSize),
		Nonce:     filler(2, envelopexml.NonceSize),
		Payload:   filler(3, envelopexml.TagSize),
		Signature: filler(4, 512),
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		base  func() *envelopexml.Envelope
		edit  func(e *envelopexml.Envelope)
		valid bool
	}{
		{"standard", standard, func(e *envelopexml.Envelope) {}, true},
		{"enhanced", enhanced, func(e *envelopexml.Envelope) {}, true},
		{"domain JIDs", standard, func(e *envelopexml.Envelope) { e.From, e.To = "example.org", []string{"example.net"} }, true},
		{"unicode JID", standard, func(e *envelopexml.Envelope) { e.To[0] = "jürgen@münchen.example" }, true},
		{"address literal JID", standard, func(e *envelopexml.Envelope) { e.To = []string{"bob@127.0.0.1"} }, true},
		{"max recipients", standard, func(e *envelopexml.Envelope) { e.To = jids(envelopexml.MaxRecipients) }, true},
		{"max keys", standard, func(e *envelopexml.Envelope) { e.Keys = keys(envelopexml.MaxKeys) }, true},
		{"max payload", standard, func(e *envelopexml.Envelope) { e.Payload = filler(1, envelopexml.MaxPayloadSize) }, true},
		{"max id", standard, func(e *envelopexml.Envelope) { e.ID = strings.Repeat("~", envelopexml.MaxIDLen) }, true},
		{"max JID", standard, func(e *envelopexml.Envelope) { e.From = strings.Repeat("a", 1023) + "@" + strings.Repeat("b", 1023) }, true},

		{"no kind", standard, func(e *envelopexml.Envelope) { e.Kind = "" }, false},
		{"unknown kind", standard, func(e *envelopexml.Envelope) { e.Kind = "plain" }, false},
		{"no from", standard, func(e *envelopexml.Envelope) { e.From = "" }, false},
		{"full JID from", standard, func(e *envelopexml.Envelope) { e.From = "alice@example.org/phone" }, false},
		{"empty localpart", standard, func(e *envelopexml.Envelope) { e.From = "@example.org" }, false},
		{"empty domain", standard, func(e *envelopexml.Envelope) { e.From = "alice@" }, false},
		{"two @", standard, func(e *envelopexml.Envelope) { e.From = "a@b@example.org" }, false},
		{"space in JID", standard, func(e *envelopexml.Envelope) { e.To[1] = "carol @example.net" }, false},
		{"control in JID", standard, func(e *envelopexml.Envelope) { e.To[1] = "carol\x00@example.net" }, false},
		{"quote in JID", standard, func(e *envelopexml.Envelope) { e.To[1] = "ca\"rol@example.net" }, false},
		{"not UTF-8 JID", standard, func(e *envelopexml.Envelope) { e.To[1] = "carol\xff@example.net" }, false},
		{"upper-case localpart", standard, func(e *envelopexml.Envelope) { e.From = "Alice@example.org" }, false},
		{"full-width localpart", standard, func(e *envelopexml.Envelope) { e.From = "\uff21lice@example.org" }, false},
		{"upper-case domain", standard, func(e *envelopexml.Envelope) { e.To[1] = "carol@Example.net" }, false},
		{"trailing dot", standard, func(e *envelopexml.Envelope) { e.To[0] = "bob@example.org." }, false},
		{"punycode domain", standard, func(e *envelopexml.Envelope) { e.To[0] = "jürgen@xn--mnchen-3ya.example" }, false},
		{"decomposed localpart", standard, func(e *envelopexml.Envelope) { e.To[0] = "ju\u0308rgen@example.org" }, false},
		{"upper-case domain-only JID", standard, func(e *envelopexml.Envelope) { e.From, e.To = "Example.org", []string{"example.net"} }, false},
		{"not preparable", standard, func(e *envelopexml.Envelope) { e.To[0] = "bob@exa_mple.org" }, false},
		{"same JID two forms", standard, func(e *envelopexml.Envelope) { e.To[1] = "Bob@example.org" }, false},
		{"JID too long", standard, func(e *envelopexml.Envelope) { e.From = strings.Repeat("a", 1024) + "@example.org" }, false},
		{"no recipients", standard, func(e *envelopexml.Envelope) { e.To = nil }, false},
		{"too many recipients", standard, func(e *envelopexml.Envelope) { e.To = jids(envelopexml.MaxRecipients + 1) }, false},
		{"duplicate recipient", standard, func(e *envelopexml.Envelope) { e.To[1] = e.To[0] }, false},
		{"no id", standard, func(e *envelopexml.Envelope) { e.ID = "" }, false},
		{"id too long", standard, func(e *envelopexml.Envelope) { e.ID = strings.Repeat("a", envelopexml.MaxIDLen+1) }, false},
		{"space in id", standard, func(e *envelopexml.Envelope) { e.ID = "a b" }, false},
		{"no time", standard, func(e *envelopexml.Envelope) { e.Time = time.Time{} }, false},
		{"fractional time", standard, func(e *envelopexml.Envelope) { e.Time = t0.Add(time.Millisecond) }, false},
		{"fractional expiry", standard, func(e *envelopexml.Envelope) { e.Expires = t0.Add(time.Hour + time.Millisecond) }, false},
		{"expires at time", standard, func(e *envelopexml.Envelope) { e.Expires = e.Time }, false},
		{"expires before time", standard, func(e *envelopexml.Envelope) { e.Expires = e.Time.Add(-time.Second) }, false},
		{"no keys", standard, func(e *envelopexml.Envelope) { e.Keys = nil }, false},
		{"too many keys", standard, func(e *envelopexml.Envelope) { e.Keys = keys(envelopexml.MaxKeys + 1) }, false},
		{"short fingerprint", standard, func(e *envelopexml.Envelope) { e.Keys[0].Fingerprint = filler(1, 31) }, false},
		{"duplicate fingerprint", standard, func(e *envelopexml.Envelope) { e.Keys[1].Fingerprint = e.Keys[0].Fingerprint }, false},
		{"short wrapped key", standard, func(e *envelopexml.Envelope) { e.Keys[0].Key = filler(1, envelopexml.MinRSASize-1) }, false},
		{"long wrapped key", standard, func(e *envelopexml.Envelope) { e.Keys[0].Key = filler(1, envelopexml.MaxRSASize+1) }, false},
		{"keyid in standard", standard, func(e *envelopexml.Envelope) { e.KeyID = filler(1, envelopexml.KeyIDSize) }, false},
		{"enhanced two recipients", enhanced, func(e *envelopexml.Envelope) { e.To = append(e.To, "carol@example.net") }, false},
		{"enhanced to self", enhanced, func(e *envelopexml.Envelope) { e.To[0] = e.From }, false},
		{"enhanced with keys", enhanced, func(e *envelopexml.Envelope) { e.Keys = keys(1) }, false},
		{"enhanced no keyid", enhanced, func(e *envelopexml.Envelope) { e.KeyID = nil }, false},
		{"enhanced short keyid", enhanced, func(e *envelopexml.Envelope) { e.KeyID = e.KeyID[1:] }, false},
		{"no nonce", standard, func(e *envelopexml.Envelope) { e.Nonce = nil }, false},
		{"long nonce", standard, func(e *envelopexml.Envelope) { e.Nonce = filler(1, envelopexml.NonceSize+1) }, false},
		{"short payload", standard, func(e *envelopexml.Envelope) { e.Payload = filler(1, envelopexml.TagSize-1) }, false},
		{"long payload", standard, func(e *envelopexml.Envelope) { e.Payload = filler(1, envelopexml.MaxPayloadSize+1) }, false},
		{"no signature", standard, func(e *envelopexml.Envelope) { e.Signature = nil }, false},
		{"short signature", standard, func(e *envelopexml.Envelope) { e.Signature = filler(1, envelopexml.MinRSASize-1) }, false},
		{"long signature", standard, func(e *envelopexml.Envelope) { e.Signature = filler(1, envelopexml.MaxRSASize+1) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.base()
			tt.edit(e)
			err := e.Validate()
			if tt.valid && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if !tt.valid && !errors.Is(err, envelopexml.ErrInvalid) {
				t.Fatalf("Validate() = %v, want ErrInvalid", err)
			}
		})
	}
}

// TestCheckJID: CheckJID checks the shape only, CheckCanonicalJID also the
// canonical form that Validate requires (docs/envelope.md, section 2.1).
func TestCheckJID(t *testing.T) {
	for _, tt := range []struct {
		jid              string
		shape, canonical bool
	}{
		{"alice@example.org", true, true},
		{"example.org", true, true},
		{"jürgen@münchen.example", true, true},
		{"Alice@example.org", true, false},
		{"alice@EXAMPLE.org", true, false},
		{"\uff21lice@example.org", true, false},
		{"alice@example.org.", true, false},
		{"jürgen@xn--mnchen-3ya.example", true, false},
		{"ju\u0308rgen@example.org", true, false},
		{"alice@exa_mple.org", true, false},
		{"alice@example.org/phone", false, false},
		{"", false, false},
	} {
		if err := envelopexml.CheckJID(tt.jid); (err == nil) != tt.shape || err != nil && !errors.Is(err, envelopexml.ErrInvalid) {
			t.Errorf("CheckJID(%q) = %v, want ok=%v", tt.jid, err, tt.shape)
		}
		if err := envelopexml.CheckCanonicalJID(tt.jid); (err == nil) != tt.canonical || err != nil && !errors.Is(err, envelopexml.ErrInvalid) {
			t.Errorf("CheckCanonicalJID(%q) = %v, want ok=%v", tt.jid, err, tt.canonical)
		}
	}
}

func jids(n int) []string {
	var s []string
	for i := range n {
		s = append(s, fmt.Sprintf("user%d@example.org", i))
	}
	return s
}

func keys(n int) []envelopexml.WrappedKey {
	var k []envelopexml.WrappedKey
	for i := range n {
		k = append(k, envelopexml.WrappedKey{Fingerprint: filler(byte(i), envelopexml.FingerprintSize), Key: filler(1, 384)})
	}
	return k
}

func TestRoundTrip(t *testing.T) {
	for _, e := range []*envelopexml.Envelope{standard(), enhanced()} {
		out, err := xml.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		var got envelopexml.Envelope
		if err := xml.Unmarshal(out, &got); err != nil {
			t.Fatalf("Unmarshal(%s) = %v", out, err)
		}
		if !reflect.DeepEqual(&got, e) {
			t.Errorf("Unmarshal(Marshal(e)) = %+v, want %+v", got, e)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("Validate() = %v", err)
		}
	}
}

// TestAppendXMLMatchesMarshal: AppendXML writes what xml.Marshal writes,
// byte for byte, for every kind and version of envelope and for values
// that need escaping, appended to what the buffer held.
func TestAppendXMLMatchesMarshal(t *testing.T) {
	odd := standard()
	odd.From, odd.ID, odd.To = `a"b'c<d>&e\tf`, "id\n\r", []string{"x&y@example.org", "ü@example.org"}
	odd.KeyID = nil
	v1 := enhanced()
	v1.Version, v1.Checkpoint = 1, []byte("checkpoint\n")
	expiring := standard()
	expiring.Expires = t0.Add(time.Hour)
	for i, e := range []*envelopexml.Envelope{standard(), enhanced(), odd, v1, expiring, {}} {
		want, err := xml.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.AppendXML([]byte("prefix")); string(got) != "prefix"+string(want) {
			t.Errorf("envelope %d: AppendXML = %s\nwant prefix%s", i, got, want)
		}
		if got := envelopexml.EncodedLen(e); got != len(want) {
			t.Errorf("envelope %d: EncodedLen = %d, want %d", i, got, len(want))
		}
	}
}

// TestEmbedded checks that an envelope is found inside a message stanza,
// the way a server or client meets it.
func TestEmbedded(t *testing.T) {
	e := enhanced()
	inner, err := xml.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	stanza := `<message xmlns="jabber:client" to="bob@example.org" type="chat"><body>This message is end-to-end encrypted.</body>` + string(inner) + `</message>`
	var m struct {
		Envelope *envelopexml.Envelope `xml:"urn:clinkme:envelope:0 envelope"`
	}
	if err := xml.Unmarshal([]byte(stanza), &m); err != nil {
		t.Fatal(err)
	}
	if m.Envelope == nil || !reflect.DeepEqual(m.Envelope, e) {
		t.Fatalf("envelope in stanza = %+v, want %+v", m.Envelope, e)
	}
}

// TestMaxEncodedSize checks the bound stated in the package and the spec: a
// valid envelope at every limit fits in a 256 KiB client stanza.
func TestMaxEncodedSize(t *testing.T) {
	long := func(i int) string {
		return fmt.Sprintf("%0*d@%s", 1023, i, strings.Repeat("d", 1023))
	}
	e := standard()
	e.From = long(0)
	e.To = nil
	for i := range envelopexml.MaxRecipients {
		e.To = append(e.To, long(i+1))
	}
	e.ID = strings.Repeat("&", envelopexml.MaxIDLen) // escapes to &amp;
	e.Expires = e.Time.Add(time.Hour)
	e.Keys = nil
	for i := range envelopexml.MaxKeys {
		e.Keys = append(e.Keys, envelopexml.WrappedKey{Fingerprint: filler(byte(i), envelopexml.FingerprintSize), Key: filler(1, envelopexml.MaxRSASize)})
	}
	e.Payload = filler(1, envelopexml.MaxPayloadSize)
	e.Signature = filler(1, envelopexml.MaxRSASize)
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	out, err := xml.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 200 << 10
	if len(out) > limit {
		t.Errorf("len(Marshal(largest envelope)) = %d, want ≤ %d", len(out), limit)
	}
	t.Logf("largest envelope: %d bytes", len(out))
}

func TestUnmarshal(t *testing.T) {
	const ns = `xmlns="urn:clinkme:envelope:0"`
	good, err := xml.Marshal(enhanced())
	if err != nil {
		t.Fatal(err)
	}
	// replace edits the known-good encoding.
	replace := func(old, new string) string {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("%q not in %s", old, good)
		}
		return strings.Replace(string(good), old, new, 1)
	}
	tests := []struct {
		name string
		in   string
		want error // nil, ErrInvalid or ErrUnsupportedVersion
	}{
		{"good", string(good), nil},
		{"whitespace and comments between elements", replace("<nonce>", "\n  <!-- c -->\n  <nonce>"), nil},
		{"prefixed namespace", strings.NewReplacer("<envelope "+ns, `<e:envelope xmlns:e="urn:clinkme:envelope:0"`, "</", "</e:", "<", "<e:").Replace(string(good)), nil},
		{"prefixed parent only", replace("<envelope "+ns, `<e:envelope xmlns:e="urn:clinkme:envelope:0"`), envelopexml.ErrInvalid},
		{"version 2", replace(ns, `xmlns="urn:clinkme:envelope:2"`), envelopexml.ErrUnsupportedVersion},
		{"version 1 with a checkpoint", strings.Replace(replace(ns, `xmlns="urn:clinkme:envelope:1"`), "<nonce>", "<checkpoint>Y3A=</checkpoint><nonce>", 1), nil},
		{"a checkpoint in version 0", replace("<nonce>", "<checkpoint>Y3A=</checkpoint><nonce>"), envelopexml.ErrInvalid},
		{"version 0.1", replace(ns, `xmlns="urn:clinkme:envelope:0.1"`), envelopexml.ErrUnsupportedVersion},
		{"other namespace", replace(ns, `xmlns="urn:example:envelope"`), envelopexml.ErrInvalid},
		{"no namespace", replace(ns, ``), envelopexml.ErrInvalid},
		{"other name", `<letter ` + ns + `/>`, envelopexml.ErrInvalid},
		{"unknown attribute", replace(`id="m-2"`, `id="m-2" v="0"`), envelopexml.ErrInvalid},
		{"foreign attribute", replace(`id="m-2"`, `id="m-2" xml:lang="en"`), envelopexml.ErrInvalid},
		{"duplicate attribute", replace(`id="m-2"`, `id="m-2" id="m-3"`), envelopexml.ErrInvalid},
		{"missing id", replace(`id="m-2" `, ``), envelopexml.ErrInvalid},
		{"missing kind", replace(`kind="enhanced" `, ``), envelopexml.ErrInvalid},
		{"time with offset", replace(`time="2025-11-25T19:44:00Z"`, `time="2025-11-25T20:44:00+01:00"`), envelopexml.ErrInvalid},
		{"time with fraction", replace(`time="2025-11-25T19:44:00Z"`, `time="2025-11-25T19:44:00.5Z"`), envelopexml.ErrInvalid},
		{"time lowercase", replace(`time="2025-11-25T19:44:00Z"`, `time="2025-11-25t19:44:00z"`), envelopexml.ErrInvalid},
		{"unknown element", replace("<nonce>", "<hint/><nonce>"), envelopexml.ErrInvalid},
		{"foreign element", replace("<nonce>", `<x xmlns="urn:example"/><nonce>`), envelopexml.ErrInvalid},
		{"text in envelope", replace("<nonce>", "hello<nonce>"), envelopexml.ErrInvalid},
		{"duplicate nonce", replace("<nonce>", "<nonce>AAAAAAAAAAAAAAAA</nonce><nonce>"), envelopexml.ErrInvalid},
		{"empty nonce", replace("<nonce>AgICAgICAgICAgIC</nonce>", "<nonce></nonce>"), envelopexml.ErrInvalid},
		{"nonce with newline", replace("<nonce>AgICAgICAgICAgIC</nonce>", "<nonce>AgICAgICAgIC\nAgIC</nonce>"), envelopexml.ErrInvalid},
		{"nonce with spaces", replace("<nonce>AgICAgICAgICAgIC</nonce>", "<nonce> AgICAgICAgICAgIC </nonce>"), envelopexml.ErrInvalid},
		{"non-canonical base64", replace("<keyid>AQEBAQEBAQEBAQEBAQEBAQ==</keyid>", "<keyid>AQEBAQEBAQEBAQEBAQEBAR==</keyid>"), envelopexml.ErrInvalid},
		{"nonce with carriage return", replace("<nonce>AgICAgICAgICAgIC</nonce>", "<nonce>AgICAgICAgIC&#xD;AgIC</nonce>"), envelopexml.ErrInvalid},
		{"base64 without padding", replace("<keyid>AQEBAQEBAQEBAQEBAQEBAQ==</keyid>", "<keyid>AQEBAQEBAQEBAQEBAQEBAQ</keyid>"), envelopexml.ErrInvalid},
		{"unpadded base64", replace("<keyid>AQEBAQEBAQEBAQEBAQEBAQ==</keyid>", "<keyid>AQEBAQEBAQEBAQEBAQEBAQ</keyid>"), envelopexml.ErrInvalid},
		{"url base64", replace("<keyid>AQEBAQEBAQEBAQEBAQEBAQ==</keyid>", "<keyid>-_-_AQEBAQEBAQEBAQEBAQ==</keyid>"), envelopexml.ErrInvalid},
		{"keyid too long", replace("<keyid>AQEBAQEBAQEBAQEBAQEBAQ==</keyid>", "<keyid>AQEBAQEBAQEBAQEBAQEBAQE=</keyid>"), envelopexml.ErrInvalid},
		{"child in nonce", replace("<nonce>AgICAgICAgICAgIC</nonce>", "<nonce><b/></nonce>"), envelopexml.ErrInvalid},
		{"text in to", replace(`<to jid="bob@example.org"></to>`, `<to jid="bob@example.org">x</to>`), envelopexml.ErrInvalid},
		{"to without jid", replace(`<to jid="bob@example.org"></to>`, `<to/>`), envelopexml.ErrInvalid},
		{"to with extra attribute", replace(`<to jid="bob@example.org">`, `<to jid="bob@example.org" name="Bob">`), envelopexml.ErrInvalid},
		{"key without fp", replace("<nonce>", "<key>AA==</key><nonce>"), envelopexml.ErrInvalid},
		{"truncated", string(good[:len(good)-3]), nil}, // a syntax error, not ErrInvalid
		{"processing instruction", replace("<nonce>", "<?pi x?><nonce>"), envelopexml.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e envelopexml.Envelope
			err := xml.Unmarshal([]byte(tt.in), &e)
			switch {
			case tt.name == "truncated":
				if err == nil {
					t.Fatalf("Unmarshal(%s) = nil, want an error", tt.in)
				}
			case tt.want == nil:
				if err != nil {
					t.Fatalf("Unmarshal(%s) = %v, want nil", tt.in, err)
				}
				if err := e.Validate(); err != nil {
					t.Fatalf("Validate() = %v", err)
				}
			default:
				if !errors.Is(err, tt.want) {
					t.Fatalf("Unmarshal(%s) = %v, want %v", tt.in, err, tt.want)
				}
			}
		})
	}
}

// TestUnmarshalCountBounds checks that counts are bounded while reading, not
// only by Validate.
func TestUnmarshalCountBounds(t *testing.T) {
	var b strings.Builder
	b.WriteString(`<envelope xmlns="urn:clinkme:envelope:0" kind="standard" from="a@example.org" id="1" time="2025-11-25T19:44:00Z">`)
	for i := range envelopexml.MaxRecipients + 1 {
		fmt.Fprintf(&b, `<to jid="u%d@example.org"/>`, i)
	}
	b.WriteString(`</envelope>`)
	var e envelopexml.Envelope
	err := xml.Unmarshal([]byte(b.String()), &e)
	if !errors.Is(err, envelopexml.ErrInvalid) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("Unmarshal(%d recipients) = %v, want ErrInvalid (more than ...)", envelopexml.MaxRecipients+1, err)
	}
}

func FuzzParseEnvelope(f *testing.F) {
	for _, e := range []*envelopexml.Envelope{standard(), enhanced()} {
		out, err := xml.Marshal(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(out)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var e envelopexml.Envelope
		if err := xml.Unmarshal(data, &e); err != nil {
			return
		}
		if err := e.Validate(); err != nil {
			return
		}
		// A valid envelope survives a round trip unchanged.
		out, err := xml.Marshal(&e)
		if err != nil {
			t.Fatalf("Marshal(valid envelope) = %v", err)
		}
		if app := e.AppendXML(nil); !bytes.Equal(app, out) {
			t.Fatalf("AppendXML = %s\nMarshal = %s", app, out)
		}
		if got := envelopexml.EncodedLen(&e); got != len(out) {
			t.Fatalf("EncodedLen = %d, want %d", got, len(out))
		}
		var back envelopexml.Envelope
		if err := xml.Unmarshal(out, &back); err != nil {
			t.Fatalf("Unmarshal(Marshal(e)) = %v\n%s", err, out)
		}
		if !reflect.DeepEqual(&back, &e) {
			t.Fatalf("Unmarshal(Marshal(e)) = %+v, want %+v", back, e)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("Validate(Unmarshal(Marshal(e))) = %v", err)
		}
	})
}

// heldTokens reads all of an element's tokens first, copied, as a stanza
// holds them, and hands them out without copying again.
type heldTokens struct {
	toks []xml.Token
	i    int
}

func (h *heldTokens) Token() (xml.Token, error) {
	if h.i == len(h.toks) {
		return nil, io.EOF
	}
	h.i++
	return h.toks[h.i-1], nil
}

func hold(t *testing.T, doc []byte) (xml.StartElement, *heldTokens) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	var toks []xml.Token
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, xml.CopyToken(tok))
	}
	return toks[0].(xml.StartElement), &heldTokens{toks: toks[1:]}
}

// TestDecodeTokensIntoReusesBuffer: decoded into a buffer with room, an
// envelope's binary fields lie in that buffer, decoded again into it they
// lie there again, and the result is DecodeTokens'.
func TestDecodeTokensIntoReusesBuffer(t *testing.T) {
	for _, want := range []*envelopexml.Envelope{standard(), enhanced()} {
		doc, err := xml.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 0, len(doc))
		for round := range 2 {
			var got envelopexml.Envelope
			start, r := hold(t, doc)
			out, err := got.DecodeTokensInto(buf, r, start)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if !reflect.DeepEqual(&got, want) {
				t.Fatalf("round %d: DecodeTokensInto = %+v, want %+v", round, got, want)
			}
			if &out[:1][0] != &buf[:1][0] {
				t.Fatalf("round %d: a buffer of %d bytes was replaced for %d bytes of fields", round, cap(buf), len(out))
			}
			// Zeroing the buffer zeroes the fields that lie in it.
			clear(buf[:cap(buf)])
			for _, f := range [][]byte{got.Nonce, got.Payload, got.Signature} {
				if !bytes.Equal(f, make([]byte, len(f))) {
					t.Fatalf("round %d: a field has memory of its own", round)
				}
			}
			buf = out[:0]
		}
	}
}

// FuzzPlainCanonical: whatever the fast path takes as canonical, parsing
// takes as canonical too (the fast path may decline what parsing accepts).
func FuzzPlainCanonical(f *testing.F) {
	for _, s := range []string{
		"alice@example.org", "a.b_c-d@sub.example-1.org", "bob@localhost", "x@a.b.c.d.e",
		"carol@127.0.0.1", "dave@1example.org", "eve@xn--bcher-kva.example", "f@ex--ample.org",
		"g@-example.org", "h@example-.org", "i@example..org", "j@example.org.", "k@.example.org",
		"@example.org", "example.org", "Alice@example.org", "l@Example.org", "m@exa_mple.org",
		"n@example.123", "o@a", "p@" + strings.Repeat("a", 64) + ".org", "q.@example.org", "..@example.org",
		strings.Repeat("r", 1024) + "@example.org",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if envelopexml.PlainCanonical(s) {
			if err := envelopexml.ParsedCanonical(s); err != nil {
				t.Fatalf("%q: the fast path takes it as canonical; parsing says %v", s, err)
			}
		}
	})
}
