package envelope_test

import (
	"crypto/rsa"
	"encoding/xml"
	"fmt"
	"log"
	"path/filepath"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// exampleIdentity loads a test identity. A device makes its own once with
// GenerateIdentity and keeps it in its key store.
func exampleIdentity(name, jid string) envelope.Identity {
	k, err := readPEM(filepath.Join("testdata", "keys", name+".pem"))
	if err != nil {
		log.Fatal(err)
	}
	id, err := envelope.NewIdentity(jid, k.(*rsa.PrivateKey))
	if err != nil {
		log.Fatal(err)
	}
	return id
}

// Alice sends Bob a standard envelope, then shares a contact key with him
// and sends an enhanced one under it.
func Example() {
	alice := exampleIdentity("alice", "alice@example.org")
	bob := exampleIdentity("bob", "bob@example.org")
	now := time.Date(2025, 11, 25, 19, 44, 0, 0, time.UTC)

	// Alice's device: Bob's key comes from the key directory.
	toBob := []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}}
	e, err := envelope.SealStandard(alice, toBob, envelope.Header{ID: "m1", Time: now},
		envelope.Content{Kind: envelope.KindText, Text: "Hello, Bob"})
	if err != nil {
		log.Fatal(err)
	}
	wire, err := xml.Marshal(e)
	if err != nil {
		log.Fatal(err)
	}

	// Bob's device: parse, look up the key of the envelope's From, open.
	var got envelopexml.Envelope
	if err := xml.Unmarshal(wire, &got); err != nil {
		log.Fatal(err)
	}
	c, err := envelope.Open(&got, bob, alice.PublicKey(), nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s from %s: %q\n", got.ID, got.From, c.Text)

	// ClinkMe Secure: a contact key, shared once in a standard envelope.
	k := envelope.NewContactKey()
	share, err := envelope.SealStandard(alice, toBob, envelope.Header{ID: "m2", Time: now},
		envelope.Content{Kind: envelope.KindKeyShare, Key: k})
	if err != nil {
		log.Fatal(err)
	}
	c, err = envelope.Open(share, bob, alice.PublicKey(), nil)
	if err != nil {
		log.Fatal(err)
	}
	bobKeys := contactKeys{{contact: share.From, key: c.Key}} // Bob's key store
	fmt.Println(c.Kind, c.Key.Equal(k))

	e, err = envelope.SealEnhanced(alice, "bob@example.org", k, envelope.Header{ID: "m3", Time: now},
		envelope.Content{Kind: envelope.KindText, Text: "Now in secure mode"})
	if err != nil {
		log.Fatal(err)
	}
	c, err = envelope.Open(e, bob, alice.PublicKey(), bobKeys)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %s: %q\n", e.Kind, e.ID, c.Text)
	// Output:
	// m1 from alice@example.org: "Hello, Bob"
	// key-share true
	// enhanced m3: "Now in secure mode"
}
