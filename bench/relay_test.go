package bench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/lab/labtest"
)

// liftLimits lifts the limits a benchmark's one sender of thousands of
// timed messages would meet: measurement, not abuse.
func liftLimits(c *daemon.Config) {
	c.Expiry.PerUserMessages, c.Expiry.PerUserBytes = 1<<20, 1<<40
	c.Expiry.PerSenderMessages, c.Expiry.PerSenderBytes, c.Expiry.PerPairMessages = 1<<20, 1<<40, 1<<20
	c.Expiry.TotalBytes = 1 << 40
	c.Relay.PerMinute, c.Relay.Burst = 1e9, 1<<20
	c.Link.QueueDepth = 1 << 16
	c.Expiry.MinPeriod = time.Second
}

// BenchmarkRelay measures timed messages alice -> clinkd -> bob against
// the same envelopes sent alice -> bob directly through the same server,
// in the same run, on each server: the added latency (p50, p99, sending
// one and waiting for it) and the throughput (a burst of b.N, timed until
// the last arrives). b.N envelopes are sealed beforehand for each path.
//
//	go test -run '^$' -bench Relay -benchtime 300x ./bench/
func BenchmarkRelay(b *testing.B) {
	for _, srv := range labtest.Servers(b) {
		b.Run(string(srv.Kind), func(b *testing.B) {
			d := clinkdtest.Start(b, srv, liftLimits)
			comp := d.Component().Domain()
			aj, ap := labtest.NewUser(b, srv)
			bj, bp := labtest.NewUser(b, srv)
			alice, bob := clinkdtest.Identity(b, "alice", aj), clinkdtest.Identity(b, "bob", bj)
			a := clinkdtest.Login(b, srv, aj, ap)
			bd := clinkdtest.Login(b, srv, bj, bp)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			if err := bd.Announce(ctx, comp); err != nil {
				b.Fatal(err)
			}
			own, _ := address.AtComponent(jid.MustParse(bj), comp)
			if err := bd.Ping(ctx, own); err != nil {
				b.Fatal(err)
			}
			n := max(b.N, 20)
			sealN := func(tag string) []*envelopexml.Envelope {
				envs := make([]*envelopexml.Envelope, n)
				now := time.Now().UTC().Truncate(time.Second)
				for i := range envs {
					e, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: bj, Key: bob.PublicKey()}},
						envelope.Header{ID: fmt.Sprintf("%s-%d", tag, i), Time: now, Expires: now.Add(10 * time.Minute)},
						envelope.Content{Kind: envelope.KindText, Text: "benchmark message"})
					if err != nil {
						b.Fatal(err)
					}
					envs[i] = e
				}
				return envs
			}
			via := func(e *envelopexml.Envelope) error { return a.SendEnvelope(ctx, comp, jid.MustParse(bj), e) }
			direct := func(e *envelopexml.Envelope) error {
				return a.SendMessage(ctx, stanza.Message{ID: e.ID, To: bd.JID(), Type: stanza.HeadlineMessage}, e, hints.NoStore{}, hints.NoPermanentStore{})
			}
			// A message clinkd refuses never arrives (the refusal goes to
			// the sender): a benchmark that outgrows its limits fails
			// within a minute instead of waiting for its deadline.
			arrived := func(id string) error {
				ctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				if _, err := bd.Next(ctx, func(s *client.Stanza) bool { return s.ID == id && s.Has(client.EnvelopeName) }); err != nil {
					return fmt.Errorf("%s did not arrive within a minute (refused?): %w", id, err)
				}
				return nil
			}
			oneByOne := func(envs []*envelopexml.Envelope, send func(*envelopexml.Envelope) error) stats {
				return run(ctx, b, 1, len(envs), func(ctx context.Context, _ int) error {
					e := envs[0]
					envs = envs[1:]
					if err := send(e); err != nil {
						return err
					}
					return arrived(e.ID)
				})
			}
			burst := func(envs []*envelopexml.Envelope, send func(*envelopexml.Envelope) error) time.Duration {
				t0 := time.Now()
				for _, e := range envs {
					if err := send(e); err != nil {
						b.Fatal(err)
					}
				}
				for _, e := range envs {
					if err := arrived(e.ID); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(t0)
			}
			d1, d2, v1, v2 := sealN("d1"), sealN("d2"), sealN("v1"), sealN("v2")
			b.ResetTimer()
			base := oneByOne(d1, direct)
			got := oneByOne(v1, via)
			baseBurst := burst(d2, direct)
			gotBurst := burst(v2, via)
			b.StopTimer()
			report(b, "relayed", got, "direct", base)
			b.ReportMetric(float64(n)/gotBurst.Seconds(), "relayed-burst-msg/s")
			b.ReportMetric(float64(n)/baseBurst.Seconds(), "direct-burst-msg/s")
			b.ReportMetric(baseBurst.Seconds()/gotBurst.Seconds(), "burst-throughput-ratio")
			b.Logf("burst of %d: relayed %.0f msg/s, direct %.0f msg/s", n, float64(n)/gotBurst.Seconds(), float64(n)/baseBurst.Seconds())
		})
	}
}
