package envelope

// This file makes the test vectors of testdata/vectors from the committed
// keys of testdata/keys and a deterministic source of randomness per vector,
// and checks that the committed files are what it makes. Run
//
//	go test ./client/envelope -run TestVectorsUpToDate -update
//
// to rewrite them (and to create missing keys, which are random: commit
// them). It also rewrites the fuzz seed corpora from the vector envelopes.

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors, the fuzz seed corpora, and missing testdata/keys")

// testKeys are the names of the keys in testdata/keys, their JIDs and sizes.
var testKeys = []struct {
	name, jid string
	bits      int
}{
	{"alice", "alice@example.org", 3072},
	{"bob", "bob@example.org", 3072},
	{"carol", "carol@example.net", 3072},
	{"dave", "dave@example.org", 4096},
	{"mallory", "mallory@example.com", 2048}, // too small: for ErrKeySize
}

func loadKey(t testing.TB, name string, bits int) *rsa.PrivateKey {
	t.Helper()
	path := filepath.Join("testdata", "keys", name+".pem")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && *update {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		data = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("%s: no PRIVATE KEY block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok || rk.N.BitLen() != bits {
		t.Fatalf("%s: not an RSA-%d key", path, bits)
	}
	return rk
}

// A vector is one file of testdata/vectors; see docs/envelope.md, "Test
// vectors".
type vector struct {
	expect   string
	comments []string
	identity string // key name; the JID is that of testKeys
	sender   string // key name of the sender key given to Open
	contacts []contactEntry
	content  *Content // for expect: success
	padding  *int     // for expect: success, optional: zero bytes after the body
	// checkpoint is, for a version 1 envelope that opens, the checkpoint
	// it carries (docs/envelope.md, section 12).
	checkpoint []byte
	body       []byte // the envelope XML
}

type contactEntry struct {
	contact string
	key     ContactKey
}

func (v *vector) marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "expect: %s\n", v.expect)
	for _, c := range v.comments {
		fmt.Fprintf(&b, "comment: %s\n", c)
	}
	fmt.Fprintf(&b, "identity: %s %s.pem\n", jidOf(v.identity), v.identity)
	fmt.Fprintf(&b, "sender key: %s.pem\n", v.sender)
	for _, c := range v.contacts {
		fmt.Fprintf(&b, "contact key: %s %s\n", c.contact, base64.StdEncoding.EncodeToString(c.key.Bytes()))
	}
	if v.content != nil {
		var body []byte
		switch v.content.Kind {
		case KindText:
			body = []byte(v.content.Text)
		case KindKeyShare:
			body = v.content.Key.Bytes()
		}
		fmt.Fprintf(&b, "content: %s %s\n", v.content.Kind, base64.StdEncoding.EncodeToString(body))
	}
	if v.padding != nil {
		fmt.Fprintf(&b, "padding: %d\n", *v.padding)
	}
	if v.checkpoint != nil {
		fmt.Fprintf(&b, "checkpoint: %s\n", base64.StdEncoding.EncodeToString(v.checkpoint))
	}
	b.WriteString("\n")
	b.Write(v.body)
	b.WriteString("\n")
	return b.Bytes()
}

func jidOf(name string) string {
	for _, k := range testKeys {
		if k.name == name {
			return k.jid
		}
	}
	panic("no test key " + name)
}

// gen holds what the vectors are made from.
type gen struct {
	t   testing.TB
	ids map[string]Identity
	pub map[string]*rsa.PublicKey
}

func newGen(t testing.TB) *gen {
	g := &gen{t: t, ids: map[string]Identity{}, pub: map[string]*rsa.PublicKey{}}
	for _, k := range testKeys {
		key := loadKey(t, k.name, k.bits)
		g.pub[k.name] = &key.PublicKey
		if k.bits >= MinKeyBits {
			id, err := NewIdentity(k.jid, key)
			if err != nil {
				t.Fatal(err)
			}
			g.ids[k.name] = id
		}
	}
	return g
}

// rng returns the deterministic source of randomness of the vector name.
func rng(name string) io.Reader {
	return mathrand.NewChaCha8(sha256.Sum256([]byte("clinkd envelope test vector " + name)))
}

var vectorTime = time.Date(2025, 11, 25, 19, 44, 0, 0, time.UTC)

func (g *gen) header(name string) Header {
	return Header{ID: name, Time: vectorTime}
}

func (g *gen) recipients(names ...string) []Recipient {
	var rs []Recipient
	for _, n := range names {
		rs = append(rs, Recipient{JID: jidOf(n), Key: g.pub[n]})
	}
	return rs
}

func (g *gen) encode(c Content) []byte {
	b, err := c.marshal()
	if err != nil {
		g.t.Fatal(err)
	}
	return b
}

// standard seals plain from the key name from to the names in to, lets
// edit change the envelope before it is signed, signs it, then lets after
// change it.
func (g *gen) standard(r io.Reader, id string, from string, to []Recipient, kind ContentKind, plain []byte, edit, after func(*envelopexml.Envelope)) []byte {
	return g.finish(r, g.ids[from], func() (*envelopexml.Envelope, error) {
		return sealStandard(r, g.ids[from], to, g.header(id), kind, plain)
	}, edit, after)
}

func (g *gen) enhanced(r io.Reader, id string, from, to string, k ContactKey, h Header, plain []byte, edit, after func(*envelopexml.Envelope)) []byte {
	return g.finish(r, g.ids[from], func() (*envelopexml.Envelope, error) {
		return sealEnhanced(r, g.ids[from], jidOf(to), k, h, KindText, plain)
	}, edit, after)
}

func (g *gen) finish(r io.Reader, from Identity, seal func() (*envelopexml.Envelope, error), edit, after func(*envelopexml.Envelope)) []byte {
	e, err := seal()
	if err != nil {
		g.t.Fatal(err)
	}
	if edit != nil {
		edit(e)
	}
	if err := sign(r, from, e); err != nil {
		g.t.Fatal(err)
	}
	if after != nil {
		after(e)
	}
	out, err := xml.Marshal(e)
	if err != nil {
		g.t.Fatal(err)
	}
	return out
}

func flip(b []byte) { b[len(b)/2] ^= 0x01 }

// reseal seals plain again under the header fields e has now, as a sender
// that wrote those fields would have: for a standard envelope it unwraps the
// payload key with from's own key, for an enhanced one it uses k. Vectors
// use it in an edit function to make an envelope whose signature and payload
// are good and which breaks one rule of section 3 and nothing else, so that
// the rule alone decides its outcome.
func (g *gen) reseal(from Identity, k ContactKey, e *envelopexml.Envelope, plain []byte) {
	var key []byte
	if e.Kind == envelopexml.Enhanced {
		key = k.key()
	} else {
		i := slices.IndexFunc(e.Keys, func(w envelopexml.WrappedKey) bool { return bytes.Equal(w.Fingerprint, from.fp[:]) })
		if i < 0 {
			g.t.Fatal("reseal: no key wrapped for the sender")
		}
		var err error
		if key, err = rsa.DecryptOAEP(sha256.New(), nil, from.key, e.Keys[i].Key, []byte(oaepLabel)); err != nil {
			g.t.Fatal(err)
		}
	}
	e.Payload = newGCM(key).Seal(nil, e.Nonce, plain, aad(e))
}

// vectors returns every vector by file name.
func (g *gen) vectors() map[string]*vector {
	vs := map[string]*vector{}
	text := func(s string) *Content { return &Content{Kind: KindText, Text: s} }

	hello := text("Hello, Bob! 👋")
	r := rng("standard_text")
	stdText := g.standard(r, "standard_text", "alice", g.recipients("bob"), KindText, g.encode(*hello), nil, nil)
	vs["standard_text"] = &vector{expect: "success", comments: []string{"alice sends bob a text message; bob opens it"},
		identity: "bob", sender: "alice", content: hello, body: stdText}
	vs["standard_text_own_copy"] = &vector{expect: "success", comments: []string{"the envelope of standard_text, opened by another device of its sender"},
		identity: "alice", sender: "alice", content: hello, body: stdText}

	two := text("To both of you.")
	r = rng("standard_two_recipients")
	vs["standard_two_recipients"] = &vector{expect: "success", comments: []string{"alice writes to bob and dave; dave, with a 4096-bit key, opens it"},
		identity: "dave", sender: "alice", content: two,
		body: g.standard(r, "standard_two_recipients", "alice", g.recipients("bob", "dave"), KindText, g.encode(*two), nil, nil)}

	fromDave := text("A 512-byte signature.")
	r = rng("standard_from_4096")
	vs["standard_from_4096"] = &vector{expect: "success", comments: []string{"dave, with a 4096-bit key, writes to alice"},
		identity: "alice", sender: "dave", content: fromDave,
		body: g.standard(r, "standard_from_4096", "dave", g.recipients("alice"), KindText, g.encode(*fromDave), nil, nil)}

	note := text("Buy milk.")
	r = rng("standard_note_to_self")
	vs["standard_note_to_self"] = &vector{expect: "success", comments: []string{"alice writes to herself: to lists her, one key is wrapped"},
		identity: "alice", sender: "alice", content: note,
		body: g.standard(r, "standard_note_to_self", "alice", nil, KindText, g.encode(*note), nil, nil)}

	empty := text("")
	r = rng("standard_empty_text")
	vs["standard_empty_text"] = &vector{expect: "success", comments: []string{"an empty text is a valid message"},
		identity: "bob", sender: "alice", content: empty,
		body: g.standard(r, "standard_empty_text", "alice", g.recipients("bob"), KindText, g.encode(*empty), nil, nil)}

	long := text(strings.Repeat("0123456789abcdef", 40))
	r = rng("standard_expires")
	vs["standard_expires"] = &vector{expect: "success", comments: []string{"a 640-byte text valid for one hour; Open does not look at the clock"},
		identity: "bob", sender: "alice", content: long,
		body: g.finish(r, g.ids["alice"], func() (*envelopexml.Envelope, error) {
			h := g.header("standard_expires")
			h.Expires = h.Time.Add(time.Hour)
			return sealStandard(r, g.ids["alice"], g.recipients("bob"), h, KindText, g.encode(*long))
		}, nil, nil)}

	r = rng("key_share")
	k1, err := newContactKey(r)
	if err != nil {
		g.t.Fatal(err)
	}
	share := &Content{Kind: KindKeyShare, Key: k1}
	keyShare := g.standard(r, "key_share", "alice", g.recipients("bob"), KindKeyShare, g.encode(*share), nil, nil)
	vs["key_share"] = &vector{expect: "success", comments: []string{"alice shares a contact key with bob, who stores it for alice"},
		identity: "bob", sender: "alice", content: share, body: keyShare}
	vs["key_share_own_copy"] = &vector{expect: "success", comments: []string{"the envelope of key_share, opened by another device of alice, which stores the key for bob"},
		identity: "alice", sender: "alice", content: share, body: keyShare}

	secret := text("This one is sealed under our contact key.")
	r = rng("enhanced_text")
	enh := g.enhanced(r, "enhanced_text", "alice", "bob", k1, g.header("enhanced_text"), g.encode(*secret), nil, nil)
	vs["enhanced_text"] = &vector{expect: "success", comments: []string{"alice writes to bob under the contact key of key_share"},
		identity: "bob", sender: "alice", contacts: []contactEntry{{jidOf("alice"), k1}}, content: secret, body: enh}
	vs["enhanced_own_copy"] = &vector{expect: "success", comments: []string{"the envelope of enhanced_text, opened by another device of alice holding the key for bob"},
		identity: "alice", sender: "alice", contacts: []contactEntry{{jidOf("bob"), k1}}, content: secret, body: enh}

	reply := text("Same key, other direction.")
	r = rng("enhanced_reply")
	k2, err := newContactKey(r)
	if err != nil {
		g.t.Fatal(err)
	}
	h := g.header("enhanced_reply")
	h.Expires = h.Time.Add(24 * time.Hour)
	vs["enhanced_reply"] = &vector{expect: "success", comments: []string{"bob answers alice under the same key; alice holds an older key for bob too"},
		identity: "alice", sender: "bob", contacts: []contactEntry{{jidOf("bob"), k2}, {jidOf("bob"), k1}}, content: reply,
		body: g.enhanced(r, "enhanced_reply", "bob", "alice", k1, h, g.encode(*reply), nil, nil)}

	// Negative vectors.
	vs["bad_signature_wrong_sender_key"] = &vector{expect: "bad signature", comments: []string{"standard_text checked with carol's key instead of alice's"},
		identity: "bob", sender: "carol", body: stdText}
	r = rng("bad_signature_payload_flipped")
	vs["bad_signature_payload_flipped"] = &vector{expect: "bad signature", comments: []string{"one payload bit flipped after signing"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "bad_signature_payload_flipped", "alice", g.recipients("bob"), KindText, g.encode(*hello), nil, func(e *envelopexml.Envelope) { flip(e.Payload) })}
	r = rng("bad_signature_recipient_added")
	vs["bad_signature_recipient_added"] = &vector{expect: "bad signature", comments: []string{"carol added to the recipients after signing"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "bad_signature_recipient_added", "alice", g.recipients("bob"), KindText, g.encode(*hello), nil, func(e *envelopexml.Envelope) {
			e.To = append(e.To, jidOf("carol"))
		})}
	r = rng("bad_signature_time_changed")
	vs["bad_signature_time_changed"] = &vector{expect: "bad signature", comments: []string{"time moved one second after signing"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "bad_signature_time_changed", "alice", g.recipients("bob"), KindText, g.encode(*hello), nil, func(e *envelopexml.Envelope) {
			e.Time = e.Time.Add(time.Second)
		})}
	r = rng("bad_signature_from_changed")
	vs["bad_signature_from_changed"] = &vector{expect: "bad signature", comments: []string{"from changed to carol after signing; the opener checks it with carol's key, as the directory gives it for the claimed sender"},
		identity: "bob", sender: "carol",
		body: g.standard(r, "bad_signature_from_changed", "alice", g.recipients("bob"), KindText, g.encode(*hello), nil, func(e *envelopexml.Envelope) {
			e.From = jidOf("carol")
		})}
	r = rng("bad_signature_enhanced_nonce")
	vs["bad_signature_enhanced_nonce"] = &vector{expect: "bad signature", comments: []string{"enhanced_text with its nonce changed after signing"},
		identity: "bob", sender: "alice", contacts: []contactEntry{{jidOf("alice"), k1}},
		body: g.enhanced(r, "bad_signature_enhanced_nonce", "alice", "bob", k1, g.header("bad_signature_enhanced_nonce"), g.encode(*secret), nil, func(e *envelopexml.Envelope) { flip(e.Nonce) })}

	vs["not_for_me_other_identity"] = &vector{expect: "not for me", comments: []string{"standard_text opened by carol"},
		identity: "carol", sender: "alice", body: stdText}
	r = rng("not_for_me_key_missing")
	vs["not_for_me_key_missing"] = &vector{expect: "not for me", comments: []string{"addressed to bob, but the key is wrapped for carol's key, not bob's"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "not_for_me_key_missing", "alice", []Recipient{{JID: jidOf("bob"), Key: g.pub["carol"]}}, KindText, g.encode(*hello), nil, nil)}
	vs["not_for_me_enhanced"] = &vector{expect: "not for me", comments: []string{"enhanced_text opened by carol, who holds the key for alice"},
		identity: "carol", sender: "alice", contacts: []contactEntry{{jidOf("alice"), k1}}, body: enh}

	vs["no_contact_key"] = &vector{expect: "no contact key", comments: []string{"enhanced_text opened by bob without the contact key"},
		identity: "bob", sender: "alice", body: enh}
	vs["no_contact_key_other_contact"] = &vector{expect: "no contact key", comments: []string{"enhanced_text opened by bob holding the key for carol, not for alice"},
		identity: "bob", sender: "alice", contacts: []contactEntry{{jidOf("carol"), k1}, {jidOf("alice"), k2}}, body: enh}

	r = rng("tampered_payload")
	vs["tampered_payload"] = &vector{expect: "tampered", comments: []string{"a payload bit flipped before signing: the signature is good, the payload does not decrypt"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "tampered_payload", "alice", g.recipients("bob"), KindText, g.encode(*hello), func(e *envelopexml.Envelope) { flip(e.Payload) }, nil)}
	r = rng("tampered_wrapped_key")
	vs["tampered_wrapped_key"] = &vector{expect: "tampered", comments: []string{"bob's wrapped key flipped before signing: RSA-OAEP fails"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "tampered_wrapped_key", "alice", g.recipients("bob"), KindText, g.encode(*hello), func(e *envelopexml.Envelope) { flip(e.Keys[0].Key) }, nil)}
	r = rng("tampered_header")
	vs["tampered_header"] = &vector{expect: "tampered", comments: []string{"the id changed after encryption, before signing: the AES-GCM additional data no longer matches"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "tampered_header", "alice", g.recipients("bob"), KindText, g.encode(*hello), func(e *envelopexml.Envelope) { e.ID += "x" }, nil)}
	r = rng("tampered_enhanced")
	vs["tampered_enhanced"] = &vector{expect: "tampered", comments: []string{"an enhanced payload bit flipped before signing"},
		identity: "bob", sender: "alice", contacts: []contactEntry{{jidOf("alice"), k1}},
		body: g.enhanced(r, "tampered_enhanced", "alice", "bob", k1, g.header("tampered_enhanced"), g.encode(*secret), func(e *envelopexml.Envelope) { flip(e.Payload) }, nil)}

	r = rng("invalid_nonce_size")
	vs["invalid_nonce_size"] = &vector{expect: "invalid", comments: []string{"an 11-byte nonce"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "invalid_nonce_size", "alice", g.recipients("bob"), KindText, g.encode(*hello), nil, func(e *envelopexml.Envelope) { e.Nonce = e.Nonce[1:] })}
	vs["invalid_unknown_element"] = &vector{expect: "invalid", comments: []string{"standard_text with an element that version 0 does not have"},
		identity: "bob", sender: "alice", body: bytes.Replace(stdText, []byte("<nonce>"), []byte("<hint>plain</hint><nonce>"), 1)}
	vs["invalid_full_jid"] = &vector{expect: "invalid", comments: []string{"standard_text with a resource in from"},
		identity: "bob", sender: "alice", body: bytes.Replace(stdText, []byte(`from="alice@example.org"`), []byte(`from="alice@example.org/phone"`), 1)}

	r = rng("invalid_before_key_size")
	mallory := loadKey(g.t, "mallory", 2048)
	vs["invalid_before_key_size"] = &vector{expect: "invalid", comments: []string{
		"mallory, whose key is 2048 bits, signs a text to bob as such a sender would: the 256-byte signature breaks the bounds of section 3,",
		"so the envelope is invalid; parsing comes before the key size check"},
		identity: "bob", sender: "mallory",
		body: g.standard(r, "invalid_before_key_size", "alice", g.recipients("bob"), KindText, g.encode(*hello),
			func(e *envelopexml.Envelope) { e.From = jidOf("mallory") },
			func(e *envelopexml.Envelope) {
				d := sha256.Sum256(signed(e))
				sig, err := rsa.SignPSS(r, mallory, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
				if err != nil {
					g.t.Fatal(err)
				}
				e.Signature = sig
			})}

	// Section 2: JIDs in canonical form. Each of these is signed and sealed
	// by alice as written, so it would open but for the rule.
	for _, c := range []struct{ name, comment, from, extraTo string }{
		{"invalid_jid_from_case", "from Alice@example.org: an upper-case localpart is not canonical (alice@example.org is)", "Alice@example.org", ""},
		{"invalid_jid_from_width", "from \uff21lice@example.org, with a full-width A (U+FF21): not canonical", "\uff21lice@example.org", ""},
		{"invalid_jid_from_trailing_dot", "from alice@example.org.: a trailing dot on the domain is not canonical", "alice@example.org.", ""},
		{"invalid_jid_to_domain_case", "to bob@example.org and carol@Example.net: an upper-case domainpart is not canonical", "", "carol@Example.net"},
	} {
		r = rng(c.name)
		plain := g.encode(*hello)
		vs[c.name] = &vector{expect: "invalid", comments: []string{c.comment + "; signature and payload are good"},
			identity: "bob", sender: "alice",
			body: g.standard(r, c.name, "alice", g.recipients("bob"), KindText, plain, func(e *envelopexml.Envelope) {
				if c.from != "" {
					e.From = c.from
				}
				if c.extraTo != "" {
					e.To = append(e.To, c.extraTo)
				}
				g.reseal(g.ids["alice"], ContactKey{}, e, plain)
			}, nil)}
	}

	// Section 3: expires is strictly after time.
	r = rng("invalid_expires_equal_time")
	vs["invalid_expires_equal_time"] = &vector{expect: "invalid", comments: []string{"expires equals time; signature and payload are good"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "invalid_expires_equal_time", "alice", g.recipients("bob"), KindText, g.encode(*hello), func(e *envelopexml.Envelope) {
			e.Expires = e.Time
			g.reseal(g.ids["alice"], ContactKey{}, e, g.encode(*hello))
		}, nil)}
	brief := text("Gone in a second.")
	r = rng("standard_expires_one_second")
	vs["standard_expires_one_second"] = &vector{expect: "success", comments: []string{"expires one second after time, the shortest validity an envelope can state"},
		identity: "bob", sender: "alice", content: brief,
		body: g.finish(r, g.ids["alice"], func() (*envelopexml.Envelope, error) {
			h := g.header("standard_expires_one_second")
			h.Expires = h.Time.Add(time.Second)
			return sealStandard(r, g.ids["alice"], g.recipients("bob"), h, KindText, g.encode(*brief))
		}, nil, nil)}

	// Section 4: padding to a multiple of 256 adds nothing to content whose
	// length is one already.
	fox := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 6)
	pad := func(n int) *int { return &n }
	aligned := text(fox[:243]) // 1 + 4 + 4 ("text") + 4 + 243 = 256 bytes
	r = rng("standard_text_aligned")
	vs["standard_text_aligned"] = &vector{expect: "success", comments: []string{"a 243-byte text: the encoded content is exactly 256 bytes, so a sender adds no padding (payload of 272 bytes)"},
		identity: "bob", sender: "alice", content: aligned, padding: pad(0),
		body: g.standard(r, "standard_text_aligned", "alice", g.recipients("bob"), KindText, g.encode(*aligned), nil, nil)}
	over := text(fox[:244])
	r = rng("standard_text_aligned_plus_one")
	vs["standard_text_aligned_plus_one"] = &vector{expect: "success", comments: []string{"a 244-byte text: 257 bytes of content, padded with 255 zero bytes to 512 (payload of 528 bytes)"},
		identity: "bob", sender: "alice", content: over, padding: pad(255),
		body: g.standard(r, "standard_text_aligned_plus_one", "alice", g.recipients("bob"), KindText, g.encode(*over), nil, nil)}
	r = rng("standard_text_extra_padding")
	vs["standard_text_extra_padding"] = &vector{expect: "success", comments: []string{
		"the 243-byte text of standard_text_aligned with 256 zero bytes of padding, as a sender that read the rule as \"always add\" would make:",
		"a conforming sender never does, and a receiver accepts it (any amount of zero padding)"},
		identity: "bob", sender: "alice", content: aligned, padding: pad(256),
		body: g.standard(r, "standard_text_extra_padding", "alice", g.recipients("bob"), KindText, append(g.encode(*aligned), make([]byte, 256)...), nil, nil)}

	vs["unsupported_version_namespace"] = &vector{expect: "unsupported version", comments: []string{"an envelope of a later format version (version 2; until version 1 was specified, this vector named version 1)"},
		identity: "bob", sender: "alice", body: bytes.Replace(stdText, []byte(envelopexml.NS), []byte("urn:clinkme:envelope:2"), 1)}
	r = rng("unsupported_version_content")
	vs["unsupported_version_content"] = &vector{expect: "unsupported version", comments: []string{"content of version 1"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "unsupported_version_content", "alice", g.recipients("bob"), KindText, append([]byte{1}, g.encode(*hello)[1:]...), nil, nil)}
	r = rng("unsupported_content_kind")
	vs["unsupported_content_kind"] = &vector{expect: "unsupported content", comments: []string{"content of kind poll"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "unsupported_content_kind", "alice", g.recipients("bob"), KindText, rawContent(0, "poll", []byte("Lunch?"), 256), nil, nil)}

	r = rng("bad_content_padding")
	vs["bad_content_padding"] = &vector{expect: "bad content", comments: []string{"a non-zero byte in the padding"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "bad_content_padding", "alice", g.recipients("bob"), KindText, func() []byte {
			b := g.encode(*hello)
			b[len(b)-1] = 1
			return b
		}(), nil, nil)}
	r = rng("bad_content_utf8")
	vs["bad_content_utf8"] = &vector{expect: "bad content", comments: []string{"text that is not UTF-8"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "bad_content_utf8", "alice", g.recipients("bob"), KindText, rawContent(0, "text", []byte("caf\xe9"), 256), nil, nil)}
	r = rng("bad_content_truncated")
	vs["bad_content_truncated"] = &vector{expect: "bad content", comments: []string{"a body length past the end of the content"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "bad_content_truncated", "alice", g.recipients("bob"), KindText, rawContent(0, "text", []byte("Hello"), 0)[:12], nil, nil)}
	r = rng("bad_content_key_share_enhanced")
	vs["bad_content_key_share_enhanced"] = &vector{expect: "bad content", comments: []string{"a key-share inside an enhanced envelope"},
		identity: "bob", sender: "alice", contacts: []contactEntry{{jidOf("alice"), k1}},
		body: g.enhanced(r, "bad_content_key_share_enhanced", "alice", "bob", k1, g.header("bad_content_key_share_enhanced"), g.encode(Content{Kind: KindKeyShare, Key: k2}), nil, nil)}
	r = rng("bad_content_key_share_two_recipients")
	vs["bad_content_key_share_two_recipients"] = &vector{expect: "bad content", comments: []string{"a key-share to bob and carol at once"},
		identity: "bob", sender: "alice",
		body: g.standard(r, "bad_content_key_share_two_recipients", "alice", g.recipients("bob", "carol"), KindText, g.encode(Content{Kind: KindKeyShare, Key: k2}), nil, nil)}

	vs["key_size_sender"] = &vector{expect: "key size", comments: []string{"the sender key given is 2048 bits"},
		identity: "bob", sender: "mallory", body: stdText}
	g.v1Vectors(vs, k1)
	return vs
}

// vectorCheckpoint is the checkpoint the version 1 vectors carry: a tree
// of 5 entries of the log clink.example.org/keydir, signed by a note key
// made from a fixed seed (its verifier key is in a comment).
func vectorCheckpoint(t testing.TB) (signed []byte, verifier string) {
	skey, vkey, err := note.GenerateKey(rng("checkpoint signer"), "clink.example.org/keydir")
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	root := sha256.Sum256([]byte("vector tree of 5"))
	msg, err := note.Sign(&note.Note{Text: "clink.example.org/keydir\n5\n" + base64.StdEncoding.EncodeToString(root[:]) + "\n"}, s)
	if err != nil {
		t.Fatal(err)
	}
	return msg, vkey
}

// v1Vectors adds the vectors of envelope version 1 (docs/envelope.md,
// section 12).
func (g *gen) v1Vectors(vs map[string]*vector, k1 ContactKey) {
	cp, vkey := vectorCheckpoint(g.t)
	v1 := func(h Header) Header { h.Checkpoint = cp; return h }
	cpComment := "the checkpoint is signed by the note key " + vkey

	hello := &Content{Kind: KindText, Text: "Hello, Bob! 👋"}
	r := rng("v1_standard_text")
	std := g.finish(r, g.ids["alice"], func() (*envelopexml.Envelope, error) {
		return sealStandard(r, g.ids["alice"], g.recipients("bob"), v1(g.header("v1_standard_text")), KindText, g.encode(*hello))
	}, nil, nil)
	vs["v1_standard_text"] = &vector{expect: "success", comments: []string{"standard_text in version 1: alice's device carries its checkpoint", cpComment},
		identity: "bob", sender: "alice", content: hello, checkpoint: cp, body: std}
	vs["v1_standard_text_own_copy"] = &vector{expect: "success", comments: []string{"v1_standard_text, opened by another device of its sender"},
		identity: "alice", sender: "alice", content: hello, checkpoint: cp, body: std}

	secure := &Content{Kind: KindText, Text: "Secure, with gossip."}
	r = rng("v1_enhanced_text")
	vs["v1_enhanced_text"] = &vector{expect: "success", comments: []string{"an enhanced envelope of version 1, under the contact key of key_share", cpComment},
		identity: "bob", sender: "alice", contacts: []contactEntry{{jidOf("alice"), k1}}, content: secure, checkpoint: cp,
		body: g.enhanced(r, "v1_enhanced_text", "alice", "bob", k1, v1(g.header("v1_enhanced_text")), g.encode(*secure), nil, nil)}

	// The checkpoint is signed: changed, or taken away (the envelope made
	// a version 0 one), the signature fails.
	r = rng("v1_bad_signature_checkpoint_changed")
	vs["v1_bad_signature_checkpoint_changed"] = &vector{expect: "bad signature", comments: []string{"v1_standard_text's checkpoint replaced after signing (another tree size)"},
		identity: "bob", sender: "alice",
		body: g.finish(r, g.ids["alice"], func() (*envelopexml.Envelope, error) {
			return sealStandard(r, g.ids["alice"], g.recipients("bob"), v1(g.header("v1_bad_signature_checkpoint_changed")), KindText, g.encode(*hello))
		}, nil, func(e *envelopexml.Envelope) {
			e.Checkpoint = bytes.Replace(e.Checkpoint, []byte("\n5\n"), []byte("\n6\n"), 1)
		})}
	r = rng("v1_bad_signature_checkpoint_removed")
	vs["v1_bad_signature_checkpoint_removed"] = &vector{expect: "bad signature", comments: []string{"a version 1 envelope whose checkpoint was taken out and whose namespace was made version 0's: the labels differ, so the signature fails"},
		identity: "bob", sender: "alice",
		body: g.finish(r, g.ids["alice"], func() (*envelopexml.Envelope, error) {
			return sealStandard(r, g.ids["alice"], g.recipients("bob"), v1(g.header("v1_bad_signature_checkpoint_removed")), KindText, g.encode(*hello))
		}, nil, func(e *envelopexml.Envelope) { e.Version, e.Checkpoint = 0, nil })}
	// The element's rules.
	noCP := bytes.Replace(std, []byte("<checkpoint>"+base64.StdEncoding.EncodeToString(cp)+"</checkpoint>"), nil, 1)
	vs["v1_invalid_no_checkpoint"] = &vector{expect: "invalid", comments: []string{"v1_standard_text without its checkpoint element: version 1 requires one"},
		identity: "bob", sender: "alice", body: noCP}
	vs["v1_invalid_two_checkpoints"] = &vector{expect: "invalid", comments: []string{"v1_standard_text with its checkpoint element twice"},
		identity: "bob", sender: "alice", body: bytes.Replace(std, []byte("<nonce>"), []byte("<checkpoint>"+base64.StdEncoding.EncodeToString(cp)+"</checkpoint><nonce>"), 1)}
	long := append(bytes.Clone(cp), bytes.Repeat([]byte{'\n'}, envelopexml.MaxCheckpointSize+1-len(cp))...)
	vs["v1_invalid_checkpoint_too_long"] = &vector{expect: "invalid", comments: []string{"a checkpoint of 2049 bytes, one more than allowed"},
		identity: "bob", sender: "alice", body: bytes.Replace(std, []byte(base64.StdEncoding.EncodeToString(cp)), []byte(base64.StdEncoding.EncodeToString(long)), 1)}
	stdText, _ := xml.Marshal(mustParse(g.t, vs["standard_text"].body))
	vs["invalid_checkpoint_in_v0"] = &vector{expect: "invalid", comments: []string{"standard_text (version 0) with a checkpoint element: unknown in version 0"},
		identity: "bob", sender: "alice", body: bytes.Replace(stdText, []byte("<nonce>"), []byte("<checkpoint>"+base64.StdEncoding.EncodeToString(cp)+"</checkpoint><nonce>"), 1)}
}

func mustParse(t testing.TB, b []byte) *envelopexml.Envelope {
	var e envelopexml.Envelope
	if err := xml.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	return &e
}

// rawContent encodes content the way marshal does, with any version, kind
// and body, padded with zeros to a multiple of pad (if pad > 0).
func rawContent(version byte, kind string, body []byte, pad int) []byte {
	b := append([]byte{version}, 0, 0, 0, byte(len(kind)))
	b = append(b, kind...)
	b = appendStr(b, body)
	for pad > 0 && len(b)%pad != 0 {
		b = append(b, 0)
	}
	return b
}

func TestVectorsUpToDate(t *testing.T) {
	g := newGen(t)
	vs := g.vectors()
	dir := filepath.Join("testdata", "vectors")
	if *update {
		old, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, f := range old {
			os.Remove(f)
		}
		os.MkdirAll(dir, 0o755)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range vs {
			if !yield(n) {
				return
			}
		}
	})
	for _, name := range names {
		path := filepath.Join(dir, name)
		want := vs[name].marshal()
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("vector %s: %v (run with -update)", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("vector %s differs from what the generator makes (run with -update if the change is intended)", name)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) != len(vs) {
		t.Errorf("%d files in %s, want %d", len(files), dir, len(vs))
	}
	if *update {
		writeSeeds(t, filepath.Join("testdata", "fuzz", "FuzzOpen"), vs, names)
		writeSeeds(t, filepath.Join("..", "..", "extensions", "envelopexml", "testdata", "fuzz", "FuzzParseEnvelope"), vs, names)
		writeContentSeeds(t, g)
	}
}

// writeSeeds writes the envelope of each vector as a seed in the format of
// go test -fuzz.
func writeSeeds(t *testing.T, dir string, vs map[string]*vector, names []string) {
	t.Helper()
	old, _ := filepath.Glob(filepath.Join(dir, "vector_*"))
	for _, f := range old {
		os.Remove(f)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, name := range names {
		body := vs[name].body
		if seen[string(body)] {
			continue
		}
		seen[string(body)] = true
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", body)
		if err := os.WriteFile(filepath.Join(dir, "vector_"+name), []byte(seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func writeContentSeeds(t *testing.T, g *gen) {
	dir := filepath.Join("testdata", "fuzz", "FuzzUnmarshalContent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	k, _ := ParseContactKey(bytes.Repeat([]byte{7}, ContactKeySize))
	seeds := map[string][]byte{
		"text":         g.encode(Content{Kind: KindText, Text: "Hello"}),
		"key_share":    g.encode(Content{Kind: KindKeyShare, Key: k}),
		"unknown_kind": rawContent(0, "poll", []byte("Lunch?"), 256),
		"version_1":    rawContent(1, "text", []byte("Hello"), 0),
		"unpadded":     rawContent(0, "text", []byte("Hello"), 0),
	}
	for name, b := range seeds {
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
