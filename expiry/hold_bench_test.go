package expiry_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/expiry"
)

// BenchmarkHold measures what the relay spends to take a timed message
// of 2.3 KB (a standard envelope) from a parsed stanza to held, for a
// recipient with no device online, through the envelope router as clinkd
// wires it; the baseline, in the same run, is parsing that stanza
// (component.ParseStanza), which clinkd does for every stanza it reads.
// Report hold/parse, not the timings:
//
//	go test -run '^$' -bench Hold -count 5 ./expiry/
func BenchmarkHold(b *testing.B) {
	now := time.Unix(1_800_000_000, 0).UTC()
	alice := clinkdtest.Identity(b, "alice", "alice@example.org")
	bob := clinkdtest.Identity(b, "bob", "bob@example.org")
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}},
		envelope.Header{ID: "ID-PLACEHOLDER", Time: now, Expires: now.Add(time.Hour)},
		envelope.Content{Kind: envelope.KindText, Text: strings.Repeat("a typical short message ", 4)})
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := xml.Marshal(env)
	const users = 200 // ten messages per user in a batch
	text := func(i int) string {
		to := fmt.Sprintf("u%d@example.org", i%users)
		t := strings.ReplaceAll(string(raw), "ID-PLACEHOLDER", fmt.Sprintf("%032x", i))
		t = strings.Replace(t, `jid="bob@example.org"`, `jid="`+to+`"`, 1)
		return `<message type='headline' from='alice@example.org/laptop' to='` + strings.Replace(to, "@", `\40`, 1) +
			`@clink.example.org'>` + t + `<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`
	}
	const batch = 2_000
	texts := make([]string, batch)
	for i := range texts {
		texts[i] = text(i)
	}
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		for i := range b.N {
			if _, err := component.ParseStanza(texts[i%batch], 256<<10); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("hold", func(b *testing.B) {
		b.ReportAllocs()
		var r *expiry.Relay
		var router *dispatch.Router
		stanzas := make([]*component.Stanza, 0, batch)
		for i := range b.N {
			if i%batch == 0 {
				// A fresh relay per batch, so that every message is new,
				// and the batch's stanzas parsed outside the timer.
				b.StopTimer()
				if r != nil {
					expiry.ReleaseSlab(r)
				}
				r, router = newRouter(b, expiry.Config{Limits: noQuotas, Now: func() time.Time { return now }}, silent{}, unlimited)
				stanzas = stanzas[:0]
				for j := range min(batch, b.N-i) {
					s, err := component.ParseStanza(texts[j], 256<<10)
					if err != nil {
						b.Fatal(err)
					}
					stanzas = append(stanzas, s)
				}
				b.StartTimer()
			}
			if err := router.HandleMessage(context.Background(), stanzas[i%batch]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if r != nil {
			expiry.ReleaseSlab(r)
		}
	})
}
