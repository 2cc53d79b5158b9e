package expiry_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/expiry"
)

// BenchmarkHold measures what the relay spends to take a timed message
// of 2.3 KB (a standard envelope) from a parsed stanza to held, for a
// recipient with no device online, through the envelope router as clinkd
// wires it; the baseline, in the same run, is parsing that stanza
// (component.ParseStanza), which clinkd does for every stanza it reads.
// ParseStanza reads with the link's reader but makes a reader and a
// buffer per call, which the link makes once: it allocates more than the
// link does per stanza (component.BenchmarkReadStanzas measures that).
// Report hold/parse, not the timings:
//
//	go test -run '^$' -bench Hold -count 5 ./expiry/
func BenchmarkHold(b *testing.B) {
	now := time.Unix(1_800_000_000, 0).UTC()
	template, _ := timedTemplate(b, now, standard)
	const users = 200 // ten messages per user in a batch
	text := func(i int) string {
		to := fmt.Sprintf("u%d@example.org", i%users)
		return timedMessage(to, forRecipient(template, fmt.Sprintf("%032x", i), to))
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
