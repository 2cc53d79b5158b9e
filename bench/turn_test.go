package bench_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/extdisco"
	"github.com/clinkme/clinkd/internal/turnprobe"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
	"github.com/clinkme/clinkd/turncred"
)

// turnConfig points clinkd at the shared coturn and lifts the per-user
// rate limit, which would otherwise be what is measured.
func turnConfig(turn *lab.Coturn) func(*daemon.Config) {
	return func(c *daemon.Config) {
		c.TURN.Services = []string{
			"stun:" + turn.UDPAddr,
			"turn:" + turn.UDPAddr + "?transport=udp",
			"turn:" + turn.TCPAddr + "?transport=tcp",
			"turns:" + turn.TLSAddr + "?transport=tcp",
		}
		c.TURN.Secret = turn.Secret
		c.TURN.PerMinute = 1e9
		c.TURN.Burst = 1 << 30
	}
}

// BenchmarkTURNCredentials measures XEP-0215 requests from devices through
// the real server to clinkd, each answered with three fresh TURN
// credentials (turn/udp, turn/tcp, turns), against the same devices
// pinging clinkd in the same run: the ping is the ceiling of any request
// over the link, so the ratio is what issuing credentials costs.
//
// b.N is the number of requests per phase, shared by 8 devices.
func BenchmarkTURNCredentials(b *testing.B) {
	const devices = 8
	turn := labtest.Coturn(b)
	for _, srv := range labtest.Servers(b) {
		b.Run(string(srv.Kind), func(b *testing.B) {
			d := clinkdtest.Start(b, srv, turnConfig(turn))
			devs := make([]*client.Client, devices)
			for i := range devs {
				devs[i] = clinkdtest.NewDevice(b, srv)
			}
			comp := d.Component().Domain()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			ping := func(ctx context.Context, w int) error { return devs[w].Ping(ctx, comp) }
			credentials := func(ctx context.Context, w int) error {
				svcs, err := devs[w].ExternalServices(ctx, comp)
				if err != nil {
					return fmt.Errorf("XEP-0215: %w", err)
				}
				if n := countTURN(svcs); n != 3 {
					return fmt.Errorf("XEP-0215 answer with %d TURN credentials, want 3", n)
				}
				return nil
			}
			run(ctx, b, devices, 4*devices, ping)
			run(ctx, b, devices, 4*devices, credentials)
			b.ResetTimer()
			base := run(ctx, b, devices, b.N, ping)
			got := run(ctx, b, devices, b.N, credentials)
			b.StopTimer()
			report(b, "xep0215", got, "clinkd-ping", base)
			b.ReportMetric(3*got.perSecond(), "credentials/s")
		})
	}
}

func countTURN(svcs []extdisco.Service) int {
	n := 0
	for _, s := range svcs {
		if s.Type != "stun" && s.Password != "" {
			n++
		}
	}
	return n
}

// BenchmarkTURNAllocate measures TURN allocations on the real coturn over
// UDP (each: the 401 challenge, the authenticated Allocate, and its
// release) against STUN Binding requests to the same coturn in the same
// run: a Binding is coturn's cheapest round trip.
//
// The credentials come from a turncred.Service, the code behind clinkd's
// XEP-0215 answer, with coturn's secret: one user per allocation. coturn
// allows 12 allocations per username (user-quota) and frees a released
// one only about a second later, so allocating again and again as one
// user would measure the quota, not coturn. The XMPP path of the
// credentials is BenchmarkTURNCredentials'.
//
// coturn also frees a released allocation only about a second later, and
// counts it against total-quota (1200) meanwhile: more than about 1100
// allocations at full speed hit that quota (486), which would then be what
// is measured. So allocations run in chunks of 1000 with an uncounted
// 2-second pause between them; the figure is coturn's speed in bursts,
// and its sustained rate with churn is bounded by total-quota per second.
//
// b.N is the number of operations per phase, shared by 8 workers.
func BenchmarkTURNAllocate(b *testing.B) {
	const workers = 8
	turn := labtest.Coturn(b)
	svc, err := turncred.New(turncred.Config{
		Secret: []byte(turn.Secret), LocalDomain: labtest.Domain, Services: []string{"turn:" + turn.UDPAddr},
	}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var seq atomic.Int64
	// Every allocation gets a socket of its own, kept open to the end: see
	// turnprobe.AllocateOn.
	var mu sync.Mutex
	var conns []net.PacketConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	binding := func(ctx context.Context, w int) error {
		_, err := turnprobe.Binding(ctx, turn.UDPAddr)
		return err
	}
	allocate := func(ctx context.Context, w int) error {
		user, pass, _ := svc.Issue(fmt.Sprintf("bench-%d@%s", seq.Add(1), labtest.Domain))
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		mu.Lock()
		conns = append(conns, conn)
		mu.Unlock()
		a, err := turnprobe.AllocateOn(ctx, conn, turn.UDPAddr, user, pass)
		if err != nil {
			return err
		}
		return a.Close()
	}
	// Let coturn free what an earlier run released, then what the warm-up
	// does.
	time.Sleep(2 * time.Second)
	run(ctx, b, workers, 4*workers, binding)
	run(ctx, b, workers, 4*workers, allocate)
	time.Sleep(2 * time.Second)
	b.ResetTimer()
	base := run(ctx, b, workers, b.N, binding)
	got := runChunked(ctx, b, workers, b.N, 1000, 2*time.Second, allocate)
	b.StopTimer()
	report(b, "turn-allocate", got, "stun-binding", base)
}
