package bench_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab/labtest"
)

// BenchmarkPing measures XEP-0199 ping round trips from devices through
// the server to clinkd, against the same devices pinging the server itself
// in the same run: the server's own ping is the ceiling of any component
// request, so the ratio is what clinkd's link and routing cost.
//
// b.N is the number of pings per phase, shared by 8 devices.
func BenchmarkPing(b *testing.B) {
	const devices = 8
	for _, srv := range labtest.Servers(b) {
		b.Run(string(srv.Kind), func(b *testing.B) {
			d := clinkdtest.Start(b, srv, nil)
			devs := make([]*client.Client, devices)
			for i := range devs {
				devs[i] = clinkdtest.NewDevice(b, srv)
			}
			comp := d.Component().Domain()
			server := jid.MustParse(srv.Domain)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			ping := func(to jid.JID) func(context.Context, int) error {
				return func(ctx context.Context, w int) error {
					if err := devs[w].Ping(ctx, to); err != nil {
						return fmt.Errorf("ping %s: %w", to, err)
					}
					return nil
				}
			}
			// Warm both paths.
			run(ctx, b, devices, 4*devices, ping(server))
			run(ctx, b, devices, 4*devices, ping(comp))
			b.ResetTimer()
			base := run(ctx, b, devices, b.N, ping(server))
			got := run(ctx, b, devices, b.N, ping(comp))
			b.StopTimer()
			report(b, "clinkd-ping", got, "server-ping", base)
		})
	}
}
