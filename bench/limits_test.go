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

// BenchmarkFloodLatency measures how far one sender's flood moves another
// user's message latency: one user sends timed messages to another one at
// a time (p50, p99), first quiet, then while a third floods clinkd with
// envelopes as fast as its connection takes them, in the same run, on each
// server, twice:
//
//   - "limited": clinkd's defaults, so the flood is refused by the
//     flooder's token bucket (relay.per_minute) at the router; the quiet
//     user sends at most 50 messages per phase, within its own burst;
//   - "unlimited": the sender's rate and quotas lifted for everyone (a
//     deployment that raised them for bots), so the flood is relayed and
//     only the queues' fairness protects the quiet user: the worst case.
//
// The ratio is p99 under the flood over quiet.
//
//	go test -run '^$' -bench FloodLatency -benchtime 50x ./bench/
func BenchmarkFloodLatency(b *testing.B) {
	for _, srv := range labtest.Servers(b) {
		for _, limited := range []bool{true, false} {
			name := string(srv.Kind) + "/unlimited"
			if limited {
				name = string(srv.Kind) + "/limited"
			}
			b.Run(name, func(b *testing.B) { floodLatency(b, srv, limited) })
		}
	}
}

func floodLatency(b *testing.B, srv *lab.XMPPServer, limited bool) {
	d := clinkdtest.Start(b, srv, func(c *daemon.Config) {
		c.Expiry.MinPeriod = time.Second
		if !limited {
			liftQuotas(c)
			c.Relay.PerMinute, c.Relay.Burst = 1e9, 1<<30 // never reached
		}
	})
	comp := d.Component().Domain()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// One quiet pair per phase, so that with the limits in force neither
	// phase spends the other's token bucket.
	calmPair, stormyPair, flooder := newPair(b, ctx, srv, comp), newPair(b, ctx, srv, comp), newPair(b, ctx, srv, comp)
	n := max(b.N, 20)
	if limited {
		n = min(n, 50) // within the quiet user's own burst of 60 a minute
	}
	q, f := calmPair.seal(b, n, "quiet"), stormyPair.seal(b, n, "flooded")
	junk := flooder.seal(b, 2000, "junk")
	oneByOne := func(p pair, envs []*envelopexml.Envelope) stats {
		return run(ctx, b, 1, len(envs), func(ctx context.Context, _ int) error {
			e := envs[0]
			envs = envs[1:]
			if err := p.from.SendEnvelope(ctx, comp, p.toJID, e); err != nil {
				return err
			}
			return p.delivered(ctx, e.ID)
		})
	}
	b.ResetTimer()
	calm := oneByOne(calmPair, q)
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
	stormy := oneByOne(stormyPair, f)
	close(stop)
	wg.Wait()
	b.StopTimer()
	report(b, "flooded", stormy, "quiet", calm)
}
