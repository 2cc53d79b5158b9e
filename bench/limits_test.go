package bench_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// liftQuotas sets the relay's per-user and per-sender quotas out of reach:
// the benchmarks below measure checks and fairness, not refusals.
func liftQuotas(c *daemon.Config) {
	c.Expiry.PerUserMessages, c.Expiry.PerUserBytes = 1<<20, 1<<40
	c.Expiry.PerSenderMessages, c.Expiry.PerSenderBytes, c.Expiry.PerPairMessages = 1<<20, 1<<40, 1<<20
	c.Link.QueueDepth = 1 << 16
	c.Expiry.MinPeriod = time.Second
}

// pair is a sender and an announced recipient at one clinkd.
type pair struct {
	comp      jid.JID
	from      *client.Client
	to        *client.Client
	fromID    envelope.Identity
	toJID     jid.JID
	toID      envelope.Identity
	delivered func(ctx context.Context, id string) error
}

func newPair(b *testing.B, ctx context.Context, srv *lab.XMPPServer, comp jid.JID) pair {
	b.Helper()
	aj, ap := labtest.NewUser(b, srv)
	bj, bp := labtest.NewUser(b, srv)
	p := pair{comp: comp, fromID: clinkdtest.Identity(b, "alice", aj), toJID: jid.MustParse(bj), toID: clinkdtest.Identity(b, "bob", bj)}
	p.from, p.to = clinkdtest.Login(b, srv, aj, ap), clinkdtest.Login(b, srv, bj, bp)
	if err := p.to.Announce(ctx, comp); err != nil {
		b.Fatal(err)
	}
	own, _ := address.AtComponent(p.toJID, comp)
	if err := p.to.Ping(ctx, own); err != nil {
		b.Fatal(err)
	}
	p.delivered = func(ctx context.Context, id string) error {
		_, err := p.to.Next(ctx, func(s *client.Stanza) bool { return s.ID == id && s.Has(client.EnvelopeName) })
		return err
	}
	return p
}

func (p pair) seal(b *testing.B, n int, tag string) []*envelopexml.Envelope {
	b.Helper()
	envs := make([]*envelopexml.Envelope, n)
	now := time.Now().UTC().Truncate(time.Second)
	for i := range envs {
		e, err := envelope.SealStandard(p.fromID, []envelope.Recipient{{JID: p.toJID.String(), Key: p.toID.PublicKey()}},
			envelope.Header{ID: fmt.Sprintf("%s-%d", tag, i), Time: now, Expires: now.Add(10 * time.Minute)},
			envelope.Content{Kind: envelope.KindText, Text: "benchmark message"})
		if err != nil {
			b.Fatal(err)
		}
		envs[i] = e
	}
	return envs
}

// burst sends envs and waits until the last has arrived.
func (p pair) burst(b *testing.B, ctx context.Context, envs []*envelopexml.Envelope) time.Duration {
	b.Helper()
	t0 := time.Now()
	for _, e := range envs {
		if err := p.from.SendEnvelope(ctx, p.comp, p.toJID, e); err != nil {
			b.Fatal(err)
		}
	}
	for _, e := range envs {
		if err := p.delivered(ctx, e.ID); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(t0)
}

// BenchmarkLimits measures what the abuse limits cost on the relay's hot
// path: the same burst of timed messages through two clinkd instances on
// the same server, in the same run, one with every per-sender check in
// force (bounds set high enough not to trip) and one with the sender's
// token bucket off. The ratio is relay throughput with limits over without.
//
//	go test -run '^$' -bench Limits -benchtime 300x ./bench/
func BenchmarkLimits(b *testing.B) {
	for _, srv := range labtest.Servers(b) {
		b.Run(string(srv.Kind), func(b *testing.B) {
			on := clinkdtest.Start(b, srv, func(c *daemon.Config) {
				liftQuotas(c)
				c.Relay.PerMinute, c.Relay.Burst = 1e9, 1<<30 // evaluated, never reached
			})
			off := clinkdtest.Start(b, srv, func(c *daemon.Config) {
				liftQuotas(c)
				c.Relay.PerMinute = -1 // the bucket is not consulted
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			pOn, pOff := newPair(b, ctx, srv, on.Component().Domain()), newPair(b, ctx, srv, off.Component().Domain())
			n := max(b.N, 20)
			on1, on2, off1, off2 := pOn.seal(b, n, "on1"), pOn.seal(b, n, "on2"), pOff.seal(b, n, "off1"), pOff.seal(b, n, "off2")
			b.ResetTimer()
			// Alternate, so that neither side gets the machine's quieter
			// moment.
			dOff1 := pOff.burst(b, ctx, off1)
			dOn1 := pOn.burst(b, ctx, on1)
			dOn2 := pOn.burst(b, ctx, on2)
			dOff2 := pOff.burst(b, ctx, off2)
			b.StopTimer()
			withLimits := float64(2*n) / (dOn1 + dOn2).Seconds()
			without := float64(2*n) / (dOff1 + dOff2).Seconds()
			b.ReportMetric(withLimits, "limits-on-msg/s")
			b.ReportMetric(without, "limits-off-msg/s")
			b.ReportMetric(withLimits/without, "on/off-throughput")
		})
	}
}

// BenchmarkFloodLatency measures how far one sender's flood moves another
// user's message latency: one user sends timed messages to another one at
// a time (p50, p99), first quiet, then while a third floods clinkd with
// envelopes as fast as its connection takes them, in the same run, on each
// server. The sender's rate and quotas are lifted for everyone (a user may
// legitimately send in bursts, and the quiet user's own messages must not
// be limited), so what protects the quiet user here is the queues'
// fairness alone: the worst case. The ratio is p99 under the flood over
// quiet.
//
//	go test -run '^$' -bench FloodLatency -benchtime 200x ./bench/
func BenchmarkFloodLatency(b *testing.B) {
	for _, srv := range labtest.Servers(b) {
		b.Run(string(srv.Kind), func(b *testing.B) {
			d := clinkdtest.Start(b, srv, func(c *daemon.Config) {
				liftQuotas(c)
				c.Relay.PerMinute = -1
			})
			comp := d.Component().Domain()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			quiet, flooder := newPair(b, ctx, srv, comp), newPair(b, ctx, srv, comp)
			n := max(b.N, 20)
			q, f := quiet.seal(b, n, "quiet"), quiet.seal(b, n, "flooded")
			junk := flooder.seal(b, 2000, "junk")
			oneByOne := func(envs []*envelopexml.Envelope) stats {
				return run(ctx, b, 1, len(envs), func(ctx context.Context, _ int) error {
					e := envs[0]
					envs = envs[1:]
					if err := quiet.from.SendEnvelope(ctx, comp, quiet.toJID, e); err != nil {
						return err
					}
					return quiet.delivered(ctx, e.ID)
				})
			}
			b.ResetTimer()
			calm := oneByOne(q)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := 0; ; i = (i + 1) % len(junk) {
					select {
					case <-stop:
						return
					default:
					}
					if err := flooder.from.SendEnvelope(ctx, comp, flooder.toJID, junk[i]); err != nil {
						return
					}
				}
			})
			stormy := oneByOne(f)
			close(stop)
			wg.Wait()
			b.StopTimer()
			report(b, "flooded", stormy, "quiet", calm)
		})
	}
}
