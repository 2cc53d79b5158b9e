package envelope_test

import (
	"encoding/xml"
	"errors"
	"testing"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// FuzzOpen parses and opens arbitrary envelopes as bob, with alice's key as
// the sender's and a contact key held for alice. Open must not panic, must
// fail with one of its sentinels, and may only succeed on an envelope that
// alice signed. The seed corpus is the test vectors' envelopes. Run it with
//
//	go test ./client/envelope -run '^$' -fuzz '^FuzzOpen$' -fuzztime 60s -fuzzminimizetime 10s
//
// (the default minimization budget, 60 s, can spend a whole short run on
// one large input).
func FuzzOpen(f *testing.F) {
	id := ids(f)
	alice, bob := id["alice"], id["bob"]
	k := envelope.NewContactKey()
	keys := keyMap{alice.JID(): {k}}
	e, err := envelope.SealEnhanced(alice, bob.JID(), k, header("seed"), text("seed"))
	if err != nil {
		f.Fatal(err)
	}
	seed, err := xml.Marshal(e)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	sentinels := []error{
		envelope.ErrInvalid, envelope.ErrUnsupportedVersion, envelope.ErrKeySize,
		envelope.ErrBadSignature, envelope.ErrNotForMe, envelope.ErrNoContactKey,
		envelope.ErrTampered, envelope.ErrBadContent, envelope.ErrUnsupportedContent,
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var e envelopexml.Envelope
		if err := xml.Unmarshal(data, &e); err != nil {
			return
		}
		c, err := envelope.Open(&e, bob, alice.PublicKey(), keys)
		if err == nil {
			if e.From != alice.JID() {
				t.Fatalf("Open succeeded for an envelope from %q", e.From)
			}
			_ = c.String()
			return
		}
		n := 0
		for _, s := range sentinels {
			if errors.Is(err, s) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("Open() = %v, which matches %d sentinels, want 1", err, n)
		}
	})
}
