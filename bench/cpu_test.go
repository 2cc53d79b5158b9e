package bench_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// inFlight is how many messages the CPU benchmark keeps on their way at
// once: enough that no process waits for another, few enough that the
// servers' queues stay short.
const inFlight = 64

// cpuSample is what the CPU benchmark reads at each end of a phase.
type cpuSample struct {
	at          time.Time
	self        time.Duration         // this process: the devices
	clinkd      time.Duration         // the clinkd process, before the scrapes
	clinkdAfter time.Duration         // and after them
	server      map[int]time.Duration // the XMPP server's processes
	postgres    map[int]time.Duration // the private PostgreSQL's, if any
	clinkdAlloc float64               // bytes clinkd allocated so far (its go_memstats_alloc_bytes_total)
	scrapeAlloc float64               // what one scrape of its metrics allocates
}

// phase is what a measured phase cost.
type phase struct {
	n                              int
	wall                           time.Duration
	self, clinkd, server, postgres time.Duration
	clinkdAlloc                    float64
}

func (p phase) perOp(d time.Duration) float64 { return float64(d.Microseconds()) / float64(p.n) }

func sampleCPU(tb testing.TB, proc *clinkdtest.Process, srv *lab.XMPPServer, pg *lab.Postgres) cpuSample {
	tb.Helper()
	// Whatever the phase left for this process's collector is collected
	// in the phase: its garbage is its cost. (clinkd's collector runs on
	// its own schedule; over thousands of messages the cycles it carries
	// across a phase's ends are a small part.)
	runtime.GC()
	self, err := lab.CPUTime(0)
	if err != nil {
		tb.Fatal(err)
	}
	clinkd, err := lab.CPUTime(proc.PID())
	if err != nil {
		tb.Fatal(err)
	}
	// Reading clinkd's allocations costs clinkd a scrape of its metrics
	// (about 25 ms of CPU, with the Go collector's): a phase counts
	// clinkd's CPU from after its first sample's scrapes to before its
	// last's, and takes the scrapes' allocations out (two scrapes'
	// worth lie between two first reads: see phase).
	alloc, err := proc.Metric(context.Background(), "go_memstats_alloc_bytes_total")
	if err != nil {
		tb.Fatal(err)
	}
	again, err := proc.Metric(context.Background(), "go_memstats_alloc_bytes_total")
	if err != nil {
		tb.Fatal(err)
	}
	clinkdAfter, err := lab.CPUTime(proc.PID())
	if err != nil {
		tb.Fatal(err)
	}
	s := cpuSample{at: time.Now(), self: self, clinkd: clinkd, clinkdAfter: clinkdAfter, server: lab.CPUTimes(srv.PIDs()), clinkdAlloc: alloc, scrapeAlloc: again - alloc}
	if pg != nil {
		s.postgres = lab.CPUTimes(pg.PIDs())
	}
	return s
}

func measurePhase(tb testing.TB, proc *clinkdtest.Process, srv *lab.XMPPServer, pg *lab.Postgres, n int, do func()) phase {
	tb.Helper()
	a := sampleCPU(tb, proc, srv, pg)
	do()
	z := sampleCPU(tb, proc, srv, pg)
	return phase{
		n: n, wall: z.at.Sub(a.at),
		self: z.self - a.self, clinkd: z.clinkd - a.clinkdAfter,
		server: lab.CPUSince(a.server, z.server), postgres: lab.CPUSince(a.postgres, z.postgres),
		// From a's first read to z's first: the rest of a's first scrape,
		// a's second and the start of z's first, two scrapes in all.
		clinkdAlloc: z.clinkdAlloc - a.clinkdAlloc - 2*a.scrapeAlloc,
	}
}

// loadAverage is the first three fields of /proc/loadavg, for the log.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// BenchmarkRelayCPU splits the CPU time of relaying timed messages between
// the processes that spend it, in the same run on each server: b.N
// timed messages alice -> clinkd -> bob (the relayed phase) against the
// same number of the same envelopes alice -> bob directly through the same
// server (the direct phase), inflight (64) on their way at once.
//
// CPU time is utime+stime from /proc/<pid>/stat: of the XMPP server's
// processes (its process group), of the lab's PostgreSQL when it is a
// private one (unset CLINK_TEST_DATABASE_URL; the relay reads nothing from
// it without ClinkID, so this is ~0), of clinkd, which runs in a process
// of its own (the cmd/clinkd binary, clinkdtest.StartProcess), and of this
// process, which runs both devices. clinkd's allocated bytes are its
// go_memstats_alloc_bytes_total, read from its metrics.
//
// Reported per message: clinkd-cpu-µs/msg, server-cpu-µs/relayed-msg,
// server-cpu-µs/direct-msg, their ratio clinkd/server-direct (issue 15's
// target: ≤ 0.5 on Prosody, ≤ 1.0 on ejabberd), pg-cpu-µs/msg, clinkd
// allocated B/msg and its ratio to the envelope's size (target ≤ 3), the
// relayed/direct throughput ratio, and the ratio the devices' and the
// server's CPU alone would allow (throughput-cap-without-clinkd: a relayed
// message crosses the server twice and its stanza is larger).
//
//	go test -run '^$' -bench RelayCPU -benchtime 5000x ./bench/
func BenchmarkRelayCPU(b *testing.B) {
	for _, srv := range labtest.Servers(b) {
		b.Run(string(srv.Kind), func(b *testing.B) {
			var pg *lab.Postgres
			if os.Getenv("CLINK_TEST_DATABASE_URL") == "" {
				pg = labtest.Postgres(b)
			}
			c := clinkdtest.Config(b, srv)
			liftLimits(&c)
			c.Log.Level = "warn"
			proc := clinkdtest.StartProcess(b, c)
			comp := jid.MustParse(c.Link.Domain)
			aj, ap := labtest.NewUser(b, srv)
			bj, bp := labtest.NewUser(b, srv)
			alice, bob := clinkdtest.Identity(b, "alice", aj), clinkdtest.Identity(b, "bob", bj)
			a := clinkdtest.Login(b, srv, aj, ap)
			bd := clinkdtest.Login(b, srv, bj, bp)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			// Both devices announce themselves, as every device of the SDK
			// does: the sender's too, so that clinkd knows where the
			// sender's devices are.
			for _, dev := range []*client.Client{a, bd} {
				if err := dev.Announce(ctx, comp); err != nil {
					b.Fatal(err)
				}
				own, _ := address.AtComponent(dev.JID().Bare(), comp)
				if err := dev.Ping(ctx, own); err != nil {
					b.Fatal(err)
				}
			}
			n := max(b.N, 200)
			sealN := func(tag string, n int) []*envelopexml.Envelope {
				envs := make([]*envelopexml.Envelope, n)
				now := time.Now().UTC().Truncate(time.Second)
				for i := range envs {
					e, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: bj, Key: bob.PublicKey()}},
						envelope.Header{ID: fmt.Sprintf("%s-%d", tag, i), Time: now, Expires: now.Add(20 * time.Minute)},
						envelope.Content{Kind: envelope.KindText, Text: "benchmark message"})
					if err != nil {
						b.Fatal(err)
					}
					envs[i] = e
				}
				return envs
			}
			via := func(ctx context.Context, e *envelopexml.Envelope) error {
				return a.SendEnvelope(ctx, comp, jid.MustParse(bj), e)
			}
			direct := func(ctx context.Context, e *envelopexml.Envelope) error {
				return a.SendMessage(ctx, stanza.Message{ID: e.ID, To: bd.JID(), Type: stanza.HeadlineMessage}, e, hints.NoStore{}, hints.NoPermanentStore{})
			}
			// window sends envs with at most inFlight on their way, and
			// returns when the last has arrived.
			window := func(envs []*envelopexml.Envelope, send func(context.Context, *envelopexml.Envelope) error) {
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				slots := make(chan struct{}, inFlight)
				sent := make(chan error, 1)
				go func() {
					for _, e := range envs {
						select {
						case slots <- struct{}{}:
						case <-ctx.Done():
							sent <- ctx.Err()
							return
						}
						if err := send(ctx, e); err != nil {
							cancel()
							sent <- fmt.Errorf("send %s: %w", e.ID, err)
							return
						}
					}
					sent <- nil
				}()
				for _, e := range envs {
					// A message clinkd refuses never arrives (the refusal
					// goes to the sender): fail within a minute.
					wait, stop := context.WithTimeout(ctx, time.Minute)
					_, err := bd.Next(wait, func(s *client.Stanza) bool { return s.ID == e.ID && s.Has(client.EnvelopeName) })
					stop()
					if err != nil {
						cancel()
						if serr := <-sent; serr != nil {
							b.Fatal(serr)
						}
						b.Fatalf("waiting for %s: %v", e.ID, err)
					}
					<-slots
				}
				if err := <-sent; err != nil {
					b.Fatal(err)
				}
			}
			// Warm both paths: connections, pools, the JIT of neither.
			window(sealN("wd", 100), direct)
			window(sealN("wv", 100), via)
			dEnvs, vEnvs := sealN("d", n), sealN("v", n)
			raw, err := xml.Marshal(vEnvs[0])
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			base := measurePhase(b, proc, srv, pg, n, func() { window(dEnvs, direct) })
			got := measurePhase(b, proc, srv, pg, n, func() { window(vEnvs, via) })
			b.StopTimer()

			clinkd, clinkdAlloc := got.clinkd, got.clinkdAlloc
			b.ReportMetric(got.perOp(clinkd), "clinkd-cpu-µs/msg")
			b.ReportMetric(got.perOp(got.server), "server-cpu-µs/relayed-msg")
			b.ReportMetric(base.perOp(base.server), "server-cpu-µs/direct-msg")
			b.ReportMetric(float64(clinkd)/float64(base.server), "clinkd/server-direct")
			b.ReportMetric(float64(got.server)/float64(base.server), "server-relayed/direct")
			if pg != nil {
				b.ReportMetric(got.perOp(got.postgres), "pg-cpu-µs/msg")
			}
			b.ReportMetric(clinkdAlloc/float64(n), "clinkd-alloc-B/msg")
			b.ReportMetric(clinkdAlloc/float64(n)/float64(len(raw)), "alloc/envelope")
			b.ReportMetric(base.wall.Seconds()/got.wall.Seconds(), "throughput-ratio")
			// On cores the phases keep busy, throughput follows CPU per
			// message: the devices' and the server's alone bound the
			// relayed/direct ratio, whatever clinkd costs.
			b.ReportMetric(float64(base.self+base.server)/float64(got.self+got.server), "throughput-cap-without-clinkd")
			b.Logf("%s, %d messages, %d in flight, envelope %d B, load average %s", srv.Kind, n, inFlight, len(raw), loadAverage())
			b.Logf("direct:  %6.0f msg/s; CPU µs/msg: devices %.0f, server %.0f, postgres %.0f, clinkd (idle) %.0f",
				float64(n)/base.wall.Seconds(), base.perOp(base.self), base.perOp(base.server), base.perOp(base.postgres), base.perOp(base.clinkd))
			b.Logf("relayed: %6.0f msg/s; CPU µs/msg: devices %.0f, clinkd %.0f, server %.0f, postgres %.0f; clinkd alloc %.0f B/msg",
				float64(n)/got.wall.Seconds(), got.perOp(got.self), got.perOp(clinkd), got.perOp(got.server), got.perOp(got.postgres), clinkdAlloc/float64(n))
		})
	}
}
