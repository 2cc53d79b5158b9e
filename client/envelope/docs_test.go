package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// TestDocExamples: every example of docs/envelope.md that shows bytes is
// what this package makes of the committed test vectors, so the document
// cannot drift from the code. (The transport examples are checked by
// package client, which sends them.)
func TestDocExamples(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "envelope.md"))
	if wd, _ := os.Getwd(); errors.Is(err, fs.ErrNotExist) && strings.Contains(filepath.ToSlash(wd), "/pkg/mod/") {
		t.Skip("docs/envelope.md is in the clinkd repository, not in the SDK module")
	}
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	contains := func(what, s string) {
		t.Helper()
		if !strings.Contains(doc, s) {
			t.Errorf("docs/envelope.md, %s: does not contain %q", what, s)
		}
	}

	// Example: enhanced, complete.
	enhBody, enh := docVector(t, "enhanced_text")
	contains("Example: enhanced", "```xml\n"+string(enhBody)+"\n```")

	// Example: standard, with base64 cut: the fingerprints in order and
	// the lengths the document gives.
	_, std := docVector(t, "standard_text")
	for _, k := range std.Keys {
		contains("Example: standard", fmt.Sprintf(`<key fp="%s">…%d characters…</key>`, base64.StdEncoding.EncodeToString(k.Fingerprint), base64.StdEncoding.EncodedLen(len(k.Key))))
	}
	contains("Example: standard", fmt.Sprintf("<nonce>…%d characters…</nonce>", base64.StdEncoding.EncodedLen(len(std.Nonce))))
	contains("Example: standard", fmt.Sprintf("<payload>…%d characters: %d bytes of padded content plus the tag…</payload>",
		base64.StdEncoding.EncodedLen(len(std.Payload)), len(std.Payload)-envelopexml.TagSize))
	contains("Example: standard", fmt.Sprintf("<sig>…%d characters…</sig>", base64.StdEncoding.EncodedLen(len(std.Signature))))

	// Section 6: the AAD of enhanced_text as a hex dump, and the signed
	// encoding's size and hash.
	a := aad(enh)
	contains("section 6", fmt.Sprintf("Example: the AAD of vector `enhanced_text` (%d bytes):\n\n```\n%s```", len(a), hex.Dump(a)))
	sg := signed(enh)
	contains("section 6", fmt.Sprintf("signed encoding is %d bytes, with SHA-256\n`%x`", len(sg), sha256.Sum256(sg)))

	// Section 4: the text "hi".
	c, err := Content{Kind: KindText, Text: "hi"}.marshal()
	if err != nil {
		t.Fatal(err)
	}
	u := 1 + 4 + len(KindText) + 4 + 2
	if !bytes.Equal(c[:u], []byte("\x00\x00\x00\x00\x04text\x00\x00\x00\x02hi")) {
		t.Fatalf("marshal(text hi) starts %x", c[:u])
	}
	contains("section 4", fmt.Sprintf("`%x %x %x %x %x` followed by %d zero bytes", c[:1], c[1:5], c[5:9], c[9:13], c[13:u], len(c)-u))

	// Label sizes of sections 5.2 and 5.3.
	contains("section 5.2", fmt.Sprintf("`%s` (%d ASCII bytes)", oaepLabel, len(oaepLabel)))
	contains("section 5.3", fmt.Sprintf("(the label is %d ASCII", len(keyIDLabel)))
}

// docVector returns the envelope of a committed vector, as in the file and
// parsed.
func docVector(t *testing.T, name string) ([]byte, *envelopexml.Envelope) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "vectors", name))
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := bytes.Cut(b, []byte("\n\n"))
	if !ok {
		t.Fatalf("vector %s: no body", name)
	}
	body = bytes.TrimSuffix(body, []byte("\n"))
	var e envelopexml.Envelope
	if err := xml.Unmarshal(body, &e); err != nil {
		t.Fatalf("vector %s: %v", name, err)
	}
	return body, &e
}
