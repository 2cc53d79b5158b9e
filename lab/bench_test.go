package lab_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// BenchmarkStartStop measures how long each server takes from start to
// ready and from stop to every process gone, as start-s/op and stop-s/op:
//
//	go test -run '^$' -bench StartStop -benchtime 3x ./lab/
func BenchmarkStartStop(b *testing.B) {
	ca := labtest.CA(b)
	measure := func(b *testing.B, start func(ctx context.Context, dir string) (interface{ Close() error }, error)) {
		var up, down time.Duration
		for b.Loop() {
			dir := b.TempDir()
			t0 := time.Now()
			s, err := start(b.Context(), dir)
			if err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			up += t1.Sub(t0)
			down += time.Since(t1)
		}
		b.ReportMetric(up.Seconds()/float64(b.N), "start-s/op")
		b.ReportMetric(down.Seconds()/float64(b.N), "stop-s/op")
	}
	for _, kind := range lab.Kinds() {
		b.Run(string(kind), func(b *testing.B) {
			measure(b, func(ctx context.Context, dir string) (interface{ Close() error }, error) {
				return lab.StartXMPP(ctx, lab.XMPPOptions{Kind: kind, Dir: dir, Domain: labtest.Domain, CA: ca, Components: labtest.NewComponents(16)})
			})
		})
	}
	b.Run("coturn", func(b *testing.B) {
		measure(b, func(ctx context.Context, dir string) (interface{ Close() error }, error) {
			return lab.StartCoturn(ctx, lab.CoturnOptions{Dir: dir, Realm: labtest.TURNRealm, Secret: "s", CA: ca})
		})
	})
	b.Run("postgres-initdb", func(b *testing.B) {
		b.Setenv(lab.DatabaseURLEnv, "")
		measure(b, func(ctx context.Context, dir string) (interface{ Close() error }, error) {
			return lab.StartPostgres(ctx, lab.PostgresOptions{Dir: dir})
		})
	})
}

// BenchmarkRegister measures how long registering one account takes on a
// running server (Prosody through prosodyctl, ejabberd through its HTTP
// API), as ns/op:
//
//	go test -run '^$' -bench Register -benchtime 50x ./lab/
func BenchmarkRegister(b *testing.B) {
	ca := labtest.CA(b)
	for _, kind := range lab.Kinds() {
		b.Run(string(kind), func(b *testing.B) {
			s, err := lab.StartXMPP(b.Context(), lab.XMPPOptions{Kind: kind, Dir: b.TempDir(), Domain: labtest.Domain, CA: ca})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			n := 0
			for b.Loop() {
				n++
				if err := s.Register(b.Context(), fmt.Sprintf("user%d", n), "correct horse battery staple"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
