package dispatch_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
)

// BenchmarkRouteLimits measures what the abuse limits cost on the relay's
// hot path: routing the same envelopes (from 1,000 senders, so the
// buckets' map is exercised) with the access check and each sender's
// token bucket in force, against the router with the bucket off, in the
// same run. The ratio is routes per second with limits over without; the
// features are recorders, so the figure is the router's own work
// (decoding, checking, the limits).
//
//	go test -run '^$' -bench RouteLimits ./component/dispatch/
func BenchmarkRouteLimits(b *testing.B) {
	const senders = 1000
	stanzas := make([]*component.Stanza, senders)
	for i := range stanzas {
		from := fmt.Sprintf("u%d@example.org", i)
		e := envelopeXML(b, "o1", time.Time{})
		s, err := component.ParseStanza(`<message type='chat' from='`+from+`/d' to='`+bobAddr+`'>`+
			replaceFrom(e, from)+`</message>`, 256<<10)
		if err != nil {
			b.Fatal(err)
		}
		stanzas[i] = s
	}
	route := func(b *testing.B, perMinute float64) float64 {
		f := &features{}
		r, err := dispatch.New(dispatch.Config{
			Component: jid.MustParse("clink.example.org"), Devices: dispatch.NewDevices(dispatch.DevicesConfig{}),
			Timed: f, Ordinary: discard{}, Access: dispatch.Access{Local: "example.org", PerMinute: perMinute, Burst: 1 << 30},
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		start := time.Now()
		for i := range b.N {
			if err := r.HandleMessage(ctx, stanzas[i%senders]); err != nil {
				b.Fatal(err)
			}
		}
		return float64(b.N) / time.Since(start).Seconds()
	}
	// b.N routes each way, alternating halves so that neither side gets
	// the machine's quieter moment.
	off1 := route(b, -1)
	on1 := route(b, 1e12)
	on2 := route(b, 1e12)
	off2 := route(b, -1)
	on, off := (on1+on2)/2, (off1+off2)/2
	b.ReportMetric(on, "limits-on-routes/s")
	b.ReportMetric(off, "limits-off-routes/s")
	b.ReportMetric(on/off, "on/off")
}

// discard is an Ordinary that keeps nothing, so the benchmark measures the
// router alone.
type discard struct{}

func (discard) HandleOrdinary(context.Context, *dispatch.Envelope) error { return nil }
func (discard) HandleReceipt(context.Context, *dispatch.Receipt) error   { return nil }

func replaceFrom(envelope, from string) string {
	return strings.Replace(envelope, `from="alice@example.org"`, `from="`+from+`"`, 1)
}
