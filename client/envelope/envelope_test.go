package envelope_test

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// The test identities, from testdata/keys (see docs/envelope.md, "Test
// vectors"). They are loaded once: parsing and validating keys is slow.
var loadIdentities = sync.OnceValues(func() (map[string]envelope.Identity, error) {
	ids := map[string]envelope.Identity{}
	for name, jid := range map[string]string{
		"alice": "alice@example.org",
		"bob":   "bob@example.org",
		"carol": "carol@example.net",
		"dave":  "dave@example.org",
	} {
		k, err := readPEM(filepath.Join("testdata", "keys", name+".pem"))
		if err != nil {
			return nil, err
		}
		id, err := envelope.NewIdentity(jid, k.(*rsa.PrivateKey))
		if err != nil {
			return nil, err
		}
		ids[name] = id
	}
	return ids, nil
})

func ids(t testing.TB) map[string]envelope.Identity {
	t.Helper()
	m, err := loadIdentities()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func recipient(id envelope.Identity) envelope.Recipient {
	return envelope.Recipient{JID: id.JID(), Key: id.PublicKey()}
}

var now = time.Date(2025, 11, 25, 19, 44, 0, 0, time.UTC)

func header(id string) envelope.Header { return envelope.Header{ID: id, Time: now} }

func text(s string) envelope.Content { return envelope.Content{Kind: envelope.KindText, Text: s} }

// keyMap is a ContactKeys for tests: contact JID to keys.
type keyMap map[string][]envelope.ContactKey

func (m keyMap) ContactKey(contact string, id []byte) (envelope.ContactKey, bool) {
	for _, k := range m[contact] {
		if bytes.Equal(k.ID(), id) {
			return k, true
		}
	}
	return envelope.ContactKey{}, false
}

// reparse sends e through its XML encoding, as the wire does.
func reparse(t testing.TB, e *envelopexml.Envelope) *envelopexml.Envelope {
	t.Helper()
	out, err := xml.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var back envelopexml.Envelope
	if err := xml.Unmarshal(out, &back); err != nil {
		t.Fatalf("Unmarshal(%s) = %v", out, err)
	}
	return &back
}

func TestRoundTrip(t *testing.T) {
	id := ids(t)
	alice, bob, carol, dave := id["alice"], id["bob"], id["carol"], id["dave"]
	k := envelope.NewContactKey()
	aliceKeys := keyMap{bob.JID(): {k}}
	bobKeys := keyMap{alice.JID(): {envelope.NewContactKey(), k}}

	type opener struct {
		me   envelope.Identity
		keys envelope.ContactKeys
	}
	tests := []struct {
		name    string
		seal    func() (*envelopexml.Envelope, error)
		sender  envelope.Identity
		content envelope.Content
		openers []opener
	}{
		{
			name: "standard to one",
			seal: func() (*envelopexml.Envelope, error) {
				return envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("1"), text("hi"))
			},
			sender:  alice,
			content: text("hi"),
			openers: []opener{{me: bob}, {me: alice}},
		},
		{
			name: "standard to three, one with 4096 bits, repeated",
			seal: func() (*envelopexml.Envelope, error) {
				to := []envelope.Recipient{recipient(bob), recipient(carol), recipient(dave), recipient(bob)}
				return envelope.SealStandard(alice, to, header("2"), text("to all of you"))
			},
			sender:  alice,
			content: text("to all of you"),
			openers: []opener{{me: bob}, {me: carol}, {me: dave}, {me: alice}},
		},
		{
			name: "standard from 4096 bits",
			seal: func() (*envelopexml.Envelope, error) {
				return envelope.SealStandard(dave, []envelope.Recipient{recipient(alice)}, header("3"), text("hello"))
			},
			sender:  dave,
			content: text("hello"),
			openers: []opener{{me: alice}, {me: dave}},
		},
		{
			name: "note to self",
			seal: func() (*envelopexml.Envelope, error) {
				return envelope.SealStandard(alice, nil, header("4"), text("note"))
			},
			sender:  alice,
			content: text("note"),
			openers: []opener{{me: alice}},
		},
		{
			name: "largest text",
			seal: func() (*envelopexml.Envelope, error) {
				return envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("5"), text(strings.Repeat("é", envelope.MaxTextSize/2)+"x"))
			},
			sender:  alice,
			content: text(strings.Repeat("é", envelope.MaxTextSize/2) + "x"),
			openers: []opener{{me: bob}},
		},
		{
			name: "key share",
			seal: func() (*envelopexml.Envelope, error) {
				return envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("6"), envelope.Content{Kind: envelope.KindKeyShare, Key: k})
			},
			sender:  alice,
			content: envelope.Content{Kind: envelope.KindKeyShare, Key: k},
			openers: []opener{{me: bob}, {me: alice}},
		},
		{
			name: "enhanced",
			seal: func() (*envelopexml.Envelope, error) {
				return envelope.SealEnhanced(alice, bob.JID(), k, header("7"), text("secure"))
			},
			sender:  alice,
			content: text("secure"),
			openers: []opener{{me: bob, keys: bobKeys}, {me: alice, keys: aliceKeys}},
		},
		{
			name: "enhanced reply with expiry",
			seal: func() (*envelopexml.Envelope, error) {
				h := header("8")
				h.Expires = now.Add(time.Minute)
				return envelope.SealEnhanced(bob, alice.JID(), k, h, text("ok"))
			},
			sender:  bob,
			content: text("ok"),
			openers: []opener{{me: alice, keys: aliceKeys}, {me: bob, keys: bobKeys}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := tt.seal()
			if err != nil {
				t.Fatalf("seal: %v", err)
			}
			if err := e.Validate(); err != nil {
				t.Fatalf("Validate(sealed) = %v", err)
			}
			e = reparse(t, e)
			for _, o := range tt.openers {
				c, err := envelope.Open(e, o.me, tt.sender.PublicKey(), o.keys)
				if err != nil {
					t.Fatalf("Open(as %s) = %v", o.me.JID(), err)
				}
				if !sameContent(c, tt.content) {
					t.Fatalf("Open(as %s) = %v, want %v", o.me.JID(), c, tt.content)
				}
			}
		})
	}
}

func TestStandardLayout(t *testing.T) {
	id := ids(t)
	alice, bob, carol := id["alice"], id["bob"], id["carol"]
	to := make([]envelope.Recipient, 0, 10) // spare capacity: SealStandard must not write into it
	to = append(to, recipient(bob), recipient(carol), recipient(bob))
	e, err := envelope.SealStandard(alice, to, header("x"), text("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{bob.JID(), carol.JID()}; !slices.Equal(e.To, want) {
		t.Errorf("To = %q, want %q", e.To, want)
	}
	var fps [][]byte
	for _, i := range []envelope.Identity{bob, carol, alice} {
		fp, err := envelope.Fingerprint(i.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		fps = append(fps, fp[:])
	}
	var got [][]byte
	for _, k := range e.Keys {
		got = append(got, k.Fingerprint)
	}
	if !reflect.DeepEqual(got, fps) {
		t.Errorf("key fingerprints = %x, want bob, carol, alice: %x", got, fps)
	}
	if len(to) != 3 || to[:4][3] != (envelope.Recipient{}) {
		t.Errorf("SealStandard wrote into the caller's slice: %v", to[:4])
	}
	if len(e.Payload) != 256+envelopexml.TagSize {
		t.Errorf("len(Payload) = %d, want %d (one padding block)", len(e.Payload), 256+envelopexml.TagSize)
	}
}

// TestEveryChangeDetected changes every decoded field of a sealed envelope,
// and checks that Open fails every time: every bit of every header field, of
// the nonce and of the payload; every byte (one bit, rotating) of the wrapped
// keys and the signature, where each RSA operation fails alike; and whole
// values (times, recipients, keys) moved, added or removed.
func TestEveryChangeDetected(t *testing.T) {
	id := ids(t)
	alice, bob := id["alice"], id["bob"]
	k := envelope.NewContactKey()
	h := header("msg-1")
	h.Expires = now.Add(time.Hour)
	std, err := envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, h, text("attack at dawn"))
	if err != nil {
		t.Fatal(err)
	}
	enh, err := envelope.SealEnhanced(alice, bob.JID(), k, h, text("attack at dawn"))
	if err != nil {
		t.Fatal(err)
	}
	keys := keyMap{alice.JID(): {k}}

	for _, base := range []*envelopexml.Envelope{std, enh} {
		t.Run(string(base.Kind), func(t *testing.T) {
			t.Parallel()
			if _, err := envelope.Open(base, bob, alice.PublicKey(), keys); err != nil {
				t.Fatalf("Open(unchanged) = %v", err)
			}
			n := 0
			check := func(what string, edit func(e *envelopexml.Envelope)) {
				t.Helper()
				e := clone(base)
				edit(e)
				n++
				if c, err := envelope.Open(e, bob, alice.PublicKey(), keys); err == nil {
					t.Fatalf("Open(%s) = %v, nil; want an error", what, c)
				}
			}
			flipAll := func(field string, get func(e *envelopexml.Envelope) []byte) {
				for i := range len(get(base)) {
					for bit := range 8 {
						check(fmt.Sprintf("%s byte %d bit %d", field, i, bit), func(e *envelopexml.Envelope) { get(e)[i] ^= 1 << bit })
					}
				}
			}
			flipBytes := func(field string, get func(e *envelopexml.Envelope) []byte) {
				for i := range len(get(base)) {
					check(fmt.Sprintf("%s byte %d bit %d", field, i, i%8), func(e *envelopexml.Envelope) { get(e)[i] ^= 1 << (i % 8) })
				}
			}
			flipString := func(field string, p func(e *envelopexml.Envelope) *string) {
				for i := range len(*p(base)) {
					for bit := range 8 {
						check(fmt.Sprintf("%s byte %d bit %d", field, i, bit), func(e *envelopexml.Envelope) {
							b := []byte(*p(e))
							b[i] ^= 1 << bit
							*p(e) = string(b)
						})
					}
				}
			}
			flipString("kind", func(e *envelopexml.Envelope) *string { return (*string)(&e.Kind) })
			flipString("from", func(e *envelopexml.Envelope) *string { return &e.From })
			flipString("to", func(e *envelopexml.Envelope) *string { return &e.To[0] })
			flipString("id", func(e *envelopexml.Envelope) *string { return &e.ID })
			for _, d := range []time.Duration{-time.Hour, -time.Second, time.Second, 24 * time.Hour} {
				check(fmt.Sprintf("time %+v", d), func(e *envelopexml.Envelope) { e.Time = e.Time.Add(d) })
				check(fmt.Sprintf("expires %+v", d), func(e *envelopexml.Envelope) { e.Expires = e.Expires.Add(d) })
			}
			check("expires removed", func(e *envelopexml.Envelope) { e.Expires = time.Time{} })
			check("kind swapped", func(e *envelopexml.Envelope) {
				if e.Kind == envelopexml.Standard {
					e.Kind = envelopexml.Enhanced
				} else {
					e.Kind = envelopexml.Standard
				}
			})
			check("recipient added", func(e *envelopexml.Envelope) { e.To = append(e.To, "carol@example.net") })
			check("recipient replaced", func(e *envelopexml.Envelope) { e.To[0] = "carol@example.net" })
			for i := range base.Keys {
				flipAll(fmt.Sprintf("key %d fingerprint", i), func(e *envelopexml.Envelope) []byte { return e.Keys[i].Fingerprint })
				flipBytes(fmt.Sprintf("key %d", i), func(e *envelopexml.Envelope) []byte { return e.Keys[i].Key })
				check(fmt.Sprintf("key %d removed", i), func(e *envelopexml.Envelope) { e.Keys = slices.Delete(e.Keys, i, i+1) })
			}
			if len(base.Keys) > 1 {
				check("keys swapped", func(e *envelopexml.Envelope) { e.Keys[0], e.Keys[1] = e.Keys[1], e.Keys[0] })
			}
			flipAll("keyid", func(e *envelopexml.Envelope) []byte { return e.KeyID })
			flipAll("nonce", func(e *envelopexml.Envelope) []byte { return e.Nonce })
			flipAll("payload", func(e *envelopexml.Envelope) []byte { return e.Payload })
			check("payload truncated", func(e *envelopexml.Envelope) { e.Payload = e.Payload[:len(e.Payload)-1] })
			check("payload extended", func(e *envelopexml.Envelope) { e.Payload = append(e.Payload, 0) })
			flipBytes("signature", func(e *envelopexml.Envelope) []byte { return e.Signature })
			check("signature truncated", func(e *envelopexml.Envelope) { e.Signature = e.Signature[:len(e.Signature)-1] })
			t.Logf("%d changes, all detected", n)
		})
	}
}

// TestEverySerializedByteChangeDetected changes every byte of the XML
// encoding of an envelope (one bit, rotating): either the result does not
// parse, or does not open, or it decodes to the very same envelope (a change
// of quoting or whitespace that the XML data model does not see).
func TestEverySerializedByteChangeDetected(t *testing.T) {
	id := ids(t)
	alice, bob := id["alice"], id["bob"]
	e, err := envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("msg-2"), text("hi"))
	if err != nil {
		t.Fatal(err)
	}
	wire, err := xml.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var orig envelopexml.Envelope
	if err := xml.Unmarshal(wire, &orig); err != nil {
		t.Fatal(err)
	}
	opened, same := 0, 0
	for i := range wire {
		b := bytes.Clone(wire)
		mask := byte(1) << (i % 8)
		b[i] ^= mask
		var got envelopexml.Envelope
		if err := xml.Unmarshal(b, &got); err != nil {
			continue
		}
		if reflect.DeepEqual(&got, &orig) {
			same++
			continue
		}
		opened++
		if _, err := envelope.Open(&got, bob, alice.PublicKey(), nil); err == nil {
			t.Fatalf("byte %d ^ %#x: Open = nil, want an error\n%s", i, mask, b)
		}
	}
	t.Logf("%d bytes changed: %d parsed to another envelope and failed to open, %d parsed to the same one", len(wire), opened, same)
}

func clone(e *envelopexml.Envelope) *envelopexml.Envelope {
	c := *e
	c.To = slices.Clone(e.To)
	c.Keys = nil
	for _, k := range e.Keys {
		c.Keys = append(c.Keys, envelopexml.WrappedKey{Fingerprint: bytes.Clone(k.Fingerprint), Key: bytes.Clone(k.Key)})
	}
	c.KeyID = bytes.Clone(e.KeyID)
	c.Nonce = bytes.Clone(e.Nonce)
	c.Payload = bytes.Clone(e.Payload)
	c.Signature = bytes.Clone(e.Signature)
	return &c
}

func TestWrongRecipient(t *testing.T) {
	id := ids(t)
	alice, bob, carol := id["alice"], id["bob"], id["carol"]
	e, err := envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("m"), text("for bob"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envelope.Open(e, carol, alice.PublicKey(), nil); !errors.Is(err, envelope.ErrNotForMe) {
		t.Errorf("Open(as carol) = %v, want ErrNotForMe", err)
	}
	// Carol claiming to be bob still lacks bob's key.
	carolAsBob, err := envelope.NewIdentity(bob.JID(), carol.PrivateKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envelope.Open(e, carolAsBob, alice.PublicKey(), nil); !errors.Is(err, envelope.ErrNotForMe) {
		t.Errorf("Open(as bob with carol's key) = %v, want ErrNotForMe", err)
	}

	k := envelope.NewContactKey()
	enh, err := envelope.SealEnhanced(alice, bob.JID(), k, header("n"), text("for bob"))
	if err != nil {
		t.Fatal(err)
	}
	// Even holding the key (for alice), carol is not a party.
	if _, err := envelope.Open(enh, carol, alice.PublicKey(), keyMap{alice.JID(): {k}}); !errors.Is(err, envelope.ErrNotForMe) {
		t.Errorf("Open(enhanced, as carol) = %v, want ErrNotForMe", err)
	}
	// Bob holding the key for another contact does not open it.
	if _, err := envelope.Open(enh, bob, alice.PublicKey(), keyMap{carol.JID(): {k}}); !errors.Is(err, envelope.ErrNoContactKey) {
		t.Errorf("Open(enhanced, key held for carol) = %v, want ErrNoContactKey", err)
	}
	// Bob with another key for alice does not open it either.
	if _, err := envelope.Open(enh, bob, alice.PublicKey(), keyMap{alice.JID(): {envelope.NewContactKey()}}); !errors.Is(err, envelope.ErrNoContactKey) {
		t.Errorf("Open(enhanced, other key) = %v, want ErrNoContactKey", err)
	}
}

// lyingKeys breaks the ContactKeys contract: it returns its key whatever the
// id asked for.
type lyingKeys struct{ k envelope.ContactKey }

func (l lyingKeys) ContactKey(string, []byte) (envelope.ContactKey, bool) { return l.k, true }

func TestContactKeysContract(t *testing.T) {
	id := ids(t)
	alice, bob := id["alice"], id["bob"]
	enh, err := envelope.SealEnhanced(alice, bob.JID(), envelope.NewContactKey(), header("n"), text("x"))
	if err != nil {
		t.Fatal(err)
	}
	for _, keys := range []envelope.ContactKeys{lyingKeys{envelope.NewContactKey()}, lyingKeys{}} {
		if _, err := envelope.Open(enh, bob, alice.PublicKey(), keys); !errors.Is(err, envelope.ErrNoContactKey) {
			t.Errorf("Open(with %T returning %v) = %v, want ErrNoContactKey", keys, keys.(lyingKeys).k, err)
		}
	}
}

func TestEqualPlaintextsDiffer(t *testing.T) {
	id := ids(t)
	alice, bob := id["alice"], id["bob"]
	k := envelope.NewContactKey()
	seals := map[string]func() (*envelopexml.Envelope, error){
		"standard": func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("same"), text("same text"))
		},
		"enhanced": func() (*envelopexml.Envelope, error) {
			return envelope.SealEnhanced(alice, bob.JID(), k, header("same"), text("same text"))
		},
	}
	for name, seal := range seals {
		a, err := seal()
		if err != nil {
			t.Fatal(err)
		}
		b, err := seal()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.Nonce, b.Nonce) {
			t.Errorf("%s: two seals gave the same nonce %x", name, a.Nonce)
		}
		if bytes.Equal(a.Payload, b.Payload) {
			t.Errorf("%s: two seals of the same content gave the same payload", name)
		}
		for i := range a.Keys {
			if bytes.Equal(a.Keys[i].Key, b.Keys[i].Key) {
				t.Errorf("%s: two seals gave the same wrapped key %d", name, i)
			}
		}
		if name == "enhanced" && !bytes.Equal(a.KeyID, b.KeyID) {
			t.Errorf("enhanced: KeyID changed between seals under one key")
		}
	}
}

func TestSealArguments(t *testing.T) {
	id := ids(t)
	alice, bob, carol := id["alice"], id["bob"], id["carol"]
	k := envelope.NewContactKey()
	share := envelope.Content{Kind: envelope.KindKeyShare, Key: k}
	many := make([]envelope.Recipient, envelopexml.MaxRecipients+1)
	for i := range many {
		many[i] = envelope.Recipient{JID: fmt.Sprintf("u%d@example.org", i), Key: bob.PublicKey()}
	}
	toBob := []envelope.Recipient{recipient(bob)}
	tests := []struct {
		name string
		seal func() (*envelopexml.Envelope, error)
		want error
	}{
		{"key-share to two", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, []envelope.Recipient{recipient(bob), recipient(carol)}, header("a"), share)
		}, envelope.ErrBadContent},
		{"key-share to self", func() (*envelopexml.Envelope, error) { return envelope.SealStandard(alice, nil, header("a"), share) }, envelope.ErrBadContent},
		{"key-share enhanced", func() (*envelopexml.Envelope, error) {
			return envelope.SealEnhanced(alice, bob.JID(), k, header("a"), share)
		}, envelope.ErrBadContent},
		{"key-share of zero key", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, toBob, header("a"), envelope.Content{Kind: envelope.KindKeyShare})
		}, envelope.ErrBadContent},
		{"text not UTF-8", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, toBob, header("a"), text("\xff"))
		}, envelope.ErrBadContent},
		{"text too large", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, toBob, header("a"), text(strings.Repeat("a", envelope.MaxTextSize+1)))
		}, envelope.ErrTooLarge},
		{"unknown kind", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, toBob, header("a"), envelope.Content{Kind: "poll"})
		}, envelope.ErrUnsupportedContent},
		{"no id", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, toBob, header(""), text("a"))
		}, envelope.ErrInvalid},
		{"no time", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, toBob, envelope.Header{ID: "a"}, text("a"))
		}, envelope.ErrInvalid},
		{"expires before time", func() (*envelopexml.Envelope, error) {
			return envelope.SealEnhanced(alice, bob.JID(), k, envelope.Header{ID: "a", Time: now, Expires: now.Add(-time.Second)}, text("a"))
		}, envelope.ErrInvalid},
		{"full JID recipient", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org/phone", Key: bob.PublicKey()}}, header("a"), text("a"))
		}, envelope.ErrInvalid},
		{"non-canonical recipient", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, []envelope.Recipient{{JID: "Bob@example.org", Key: bob.PublicKey()}}, header("a"), text("a"))
		}, envelope.ErrInvalid},
		{"non-canonical contact", func() (*envelopexml.Envelope, error) {
			return envelope.SealEnhanced(alice, "bob@Example.org", k, header("a"), text("a"))
		}, envelope.ErrInvalid},
		{"expires at time", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, toBob, envelope.Header{ID: "a", Time: now, Expires: now}, text("a"))
		}, envelope.ErrInvalid},
		{"too many recipients", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, many, header("a"), text("a"))
		}, envelope.ErrInvalid},
		{"enhanced to self", func() (*envelopexml.Envelope, error) {
			return envelope.SealEnhanced(alice, alice.JID(), k, header("a"), text("a"))
		}, envelope.ErrInvalid},
		{"small recipient key", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: fakeKey(2048)}}, header("a"), text("a"))
		}, envelope.ErrKeySize},
		{"large recipient key", func() (*envelopexml.Envelope, error) {
			return envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: fakeKey(4097)}}, header("a"), text("a"))
		}, envelope.ErrKeySize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := tt.seal()
			if !errors.Is(err, tt.want) || e != nil {
				t.Fatalf("seal = %v, %v; want nil, %v", e, err, tt.want)
			}
		})
	}

	// Arguments that are not errors of the protocol.
	if _, err := envelope.SealStandard(envelope.Identity{}, toBob, header("a"), text("a")); err == nil {
		t.Error("SealStandard(zero Identity) = nil error")
	}
	if _, err := envelope.SealEnhanced(alice, bob.JID(), envelope.ContactKey{}, header("a"), text("a")); err == nil {
		t.Error("SealEnhanced(zero ContactKey) = nil error")
	}
	if _, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org"}}, header("a"), text("a")); err == nil {
		t.Error("SealStandard(nil recipient key) = nil error")
	}
}

// fakeKey returns a public key whose modulus has the given number of bits.
// It is not a usable key: it only has to fail the size checks.
func fakeKey(bits int) *rsa.PublicKey {
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	return &rsa.PublicKey{N: n.Add(n, big.NewInt(1)), E: 65537}
}

func TestKeySize(t *testing.T) {
	id := ids(t)
	alice, bob := id["alice"], id["bob"]
	small, err := readPEM(filepath.Join("testdata", "keys", "mallory.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envelope.NewIdentity("mallory@example.com", small.(*rsa.PrivateKey)); !errors.Is(err, envelope.ErrKeySize) {
		t.Errorf("NewIdentity(2048-bit key) = %v, want ErrKeySize", err)
	}
	e, err := envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("a"), text("a"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []*rsa.PublicKey{&small.(*rsa.PrivateKey).PublicKey, fakeKey(3071), fakeKey(4097), fakeKey(8192)} {
		_, err := envelope.Open(e, bob, key, nil)
		if !errors.Is(err, envelope.ErrKeySize) {
			t.Errorf("Open(sender key of %d bits) = %v, want ErrKeySize", key.N.BitLen(), err)
		}
		if !strings.Contains(err.Error(), fmt.Sprint(key.N.BitLen())) {
			t.Errorf("Open(sender key of %d bits) = %q, want the size in the message", key.N.BitLen(), err)
		}
	}
	if _, err := envelope.Open(e, bob, nil, nil); err == nil {
		t.Error("Open(nil sender key) = nil error")
	}
	if _, err := envelope.Open(nil, bob, alice.PublicKey(), nil); !errors.Is(err, envelope.ErrInvalid) {
		t.Errorf("Open(nil envelope) = %v, want ErrInvalid", err)
	}
	if _, err := envelope.Open(e, envelope.Identity{}, alice.PublicKey(), nil); err == nil {
		t.Error("Open(zero Identity) = nil error")
	}
}

// TestNoSecretsPrinted formats identities, contact keys and contents with
// every verb and checks that no key material or text shows.
func TestNoSecretsPrinted(t *testing.T) {
	id := ids(t)
	alice := id["alice"]
	k := envelope.NewContactKey()
	c := text("top secret words")
	share := envelope.Content{Kind: envelope.KindKeyShare, Key: k}

	der, err := x509.MarshalPKCS8PrivateKey(alice.PrivateKey())
	if err != nil {
		t.Fatal(err)
	}
	d := alice.PrivateKey().D
	secrets := []string{
		string(k.Bytes()), hex.EncodeToString(k.Bytes()), base64.StdEncoding.EncodeToString(k.Bytes()),
		fmt.Sprint(k.Bytes()), fmt.Sprint(k.Bytes()[:8])[1:20],
		d.String()[:20], d.Text(16)[:20], hex.EncodeToString(der[40:60]), base64.StdEncoding.EncodeToString(der[40:60]),
		"top secret", hex.EncodeToString([]byte("top secret")),
	}
	type hidden struct { // unexported fields: fmt prints them without their methods
		id envelope.Identity
		k  envelope.ContactKey
	}
	for _, v := range []any{alice, &alice, k, &k, c, &c, share, []any{alice, k, c}, struct{ A envelope.Identity }{alice}, hidden{alice, k}, &hidden{alice, k}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
			out := fmt.Sprintf(verb, v)
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("Sprintf(%q, %T) = %q shows a secret", verb, v, out)
				}
			}
		}
	}
	if !strings.Contains(fmt.Sprint(alice), "alice@example.org") {
		t.Errorf("Sprint(identity) = %q, want the JID", fmt.Sprint(alice))
	}
}

func TestContactKey(t *testing.T) {
	k := envelope.NewContactKey()
	if len(k.Bytes()) != envelope.ContactKeySize || len(k.ID()) != envelopexml.KeyIDSize {
		t.Fatalf("len(Bytes(), ID()) = %d, %d; want %d, %d", len(k.Bytes()), len(k.ID()), envelope.ContactKeySize, envelopexml.KeyIDSize)
	}
	back, err := envelope.ParseContactKey(k.Bytes())
	if err != nil || !back.Equal(k) || !bytes.Equal(back.ID(), k.ID()) {
		t.Fatalf("ParseContactKey(Bytes()) = %v, %v; want the same key", back, err)
	}
	if k.Equal(envelope.NewContactKey()) || k.Equal(envelope.ContactKey{}) {
		t.Error("two different keys are Equal")
	}
	b := k.Bytes()
	b[0] ^= 1
	if !bytes.Equal(b[1:], k.Bytes()[1:]) || bytes.Equal(b, k.Bytes()) {
		t.Error("Bytes() does not return a copy")
	}
	for _, bad := range [][]byte{nil, make([]byte, 31), make([]byte, 33), make([]byte, 32)} {
		if _, err := envelope.ParseContactKey(bad); err == nil {
			t.Errorf("ParseContactKey(%d bytes) = nil error", len(bad))
		}
	}
	var zero envelope.ContactKey
	if zero.Bytes() != nil || zero.ID() != nil {
		t.Error("zero ContactKey has bytes or an ID")
	}
	// The ID is HMAC-SHA256(key, label)[:16]: a known answer.
	fixed, err := envelope.ParseContactKey(bytes.Repeat([]byte{0x42}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(fixed.ID()), knownKeyID; got != want {
		t.Errorf("ID(0x42...) = %s, want %s", got, want)
	}
}

// knownKeyID is HMAC-SHA256(32 bytes of 0x42, "urn:clinkme:envelope:0
// contact key id") truncated to 16 bytes, computed independently with
// `printf 'urn:clinkme:envelope:0 contact key id' | openssl dgst -sha256
// -mac HMAC -macopt hexkey:4242...42`.
const knownKeyID = "5bb37f8698e64f3a1d2accfc0b62ca3d"

func TestFingerprint(t *testing.T) {
	alice := ids(t)["alice"]
	fp, err := envelope.Fingerprint(alice.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := base64.StdEncoding.EncodeToString(fp[:]), aliceFingerprint; got != want {
		t.Errorf("Fingerprint(alice) = %s, want %s", got, want)
	}
	for _, bad := range []*rsa.PublicKey{nil, {}, {N: big.NewInt(0), E: 3}} {
		if _, err := envelope.Fingerprint(bad); err == nil {
			t.Errorf("Fingerprint(%v) = nil error", bad)
		}
	}
}

// aliceFingerprint is computed independently with `openssl pkey -in
// testdata/keys/alice.pem -pubout -outform DER | openssl dgst -sha256
// -binary | base64`.
const aliceFingerprint = "49RzB7mI3u2hlNfXKiP/HvXe6TG0kn+QAlmlPVvWqxY="

func TestGenerateIdentity(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"alice@example.org/phone", "Erin@example.org", "erin@example.org."} {
		if _, err := envelope.GenerateIdentity(bad); !errors.Is(err, envelope.ErrInvalid) {
			t.Errorf("GenerateIdentity(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	id, err := envelope.GenerateIdentity("erin@example.org")
	if err != nil {
		t.Fatal(err)
	}
	if id.JID() != "erin@example.org" || id.PublicKey().N.BitLen() != envelope.MinKeyBits {
		t.Fatalf("GenerateIdentity() = %v, want erin@example.org with RSA-%d", id, envelope.MinKeyBits)
	}
	if got, want := fmt.Sprint(id), "envelope.Identity(erin@example.org, RSA-3072)"; got != want {
		t.Errorf("Sprint(identity) = %q, want %q", got, want)
	}
}
