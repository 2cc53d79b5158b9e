package clinkid_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clinkme/clinkd/clinkid"
)

// extauthPoolSize is ejabberd's default extauth_pool_size: one program per
// logical processor. CLINKD_BENCH_POOL overrides it.
func extauthPoolSize() int {
	if n, err := strconv.Atoi(os.Getenv("CLINKD_BENCH_POOL")); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// benchParams are the configured argon2id parameters: the defaults, or
// CLINKD_BENCH_ARGON2 as m,t,p (KiB, passes, lanes).
func benchParams(b *testing.B) clinkid.Params {
	p := clinkid.DefaultParams()
	if s := os.Getenv("CLINKD_BENCH_ARGON2"); s != "" {
		var m, t, l int
		if _, err := fmt.Sscanf(s, "%d,%d,%d", &m, &t, &l); err != nil {
			b.Fatalf("CLINKD_BENCH_ARGON2=%q: want m,t,p", s)
		}
		p = clinkid.Params{Memory: uint32(m), Iterations: uint32(t), Parallelism: uint8(l)}
	}
	return p
}

// extauthProc is one `clinkd extauth` of ejabberd's pool: its own Service
// (one argon2id at a time, as daemon.Extauth builds it) serving the
// protocol over a pipe, driven the way ejabberd drives it: one request,
// then wait for the answer.
type extauthProc struct {
	w    *io.PipeWriter
	r    *io.PipeReader
	done chan error
}

func startExtauthProc(b *testing.B, svc *clinkid.Service) *extauthProc {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	p := &extauthProc{w: inW, r: outR, done: make(chan error, 1)}
	e := &clinkid.Extauth{Checker: svc, Domain: testDomain, Timeout: time.Minute}
	go func() { p.done <- e.Serve(context.Background(), inR, outW); outW.Close() }()
	b.Cleanup(func() { inW.Close(); <-p.done })
	return p
}

func (p *extauthProc) ask(req []byte) (bool, error) {
	if _, err := p.w.Write(req); err != nil {
		return false, err
	}
	var reply [4]byte
	if _, err := io.ReadFull(p.r, reply[:]); err != nil {
		return false, err
	}
	return reply[3] == 1, nil
}

// runPool sends n copies of req through the pool, each process one at a
// time, and returns the per-check latencies and the wall time.
func runPool(b *testing.B, procs []*extauthProc, req []byte, n int) ([]time.Duration, time.Duration) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, p := range procs {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				ok, err := p.ask(req)
				lat[i] = time.Since(t0)
				if err != nil || !ok {
					b.Errorf("check %d = %v, %v, want accepted", i, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	return lat, time.Since(start)
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// BenchmarkExtauthPool measures ejabberd's bridge as ejabberd uses it: a
// pool of extauth_pool_size processes, each answering one request at a
// time, on a real PostgreSQL. b.N is the number of password checks with
// the configured argon2id parameters; in the same run, as the baseline,
// the pool answers tokenFactor × b.N app token checks. Reported:
// password and token checks per second, their p99 latency, the ratio, and
// the pool's argon2id memory bound (pool size × m).
func BenchmarkExtauthPool(b *testing.B) {
	const tokenFactor = 20
	params := benchParams(b)
	pool := extauthPoolSize()
	db := newDB(b)
	setup := newServiceOn(b, db, func(c *clinkid.Config) { c.Params = params })
	ctx := context.Background()
	if _, err := setup.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		b.Fatal(err)
	}
	sess, err := setup.Login(ctx, "alice", alicePass, "", "", 0)
	if err != nil {
		b.Fatal(err)
	}
	procs := make([]*extauthProc, pool)
	for i := range procs {
		svc := newServiceOn(b, db, func(c *clinkid.Config) {
			c.Params = params
			c.HashConcurrency, c.HashQueue = 1, 1
		})
		procs[i] = startExtauthProc(b, svc)
	}
	pwReq := frame("auth:alice:" + testDomain + ":" + alicePass)
	tokReq := frame("auth:alice:" + testDomain + ":" + sess.Token)
	runPool(b, procs, pwReq, pool) // warm the connections
	runPool(b, procs, tokReq, pool)

	b.ResetTimer()
	pwLat, pwWall := runPool(b, procs, pwReq, b.N)
	b.StopTimer()
	tokLat, tokWall := runPool(b, procs, tokReq, tokenFactor*b.N)

	pwRate := float64(b.N) / pwWall.Seconds()
	tokRate := float64(tokenFactor*b.N) / tokWall.Seconds()
	b.ReportMetric(pwRate, "pw-checks/s")
	b.ReportMetric(float64(percentile(pwLat, 0.99).Microseconds())/1000, "pw-p99-ms")
	b.ReportMetric(tokRate, "token-checks/s")
	b.ReportMetric(float64(percentile(tokLat, 0.99).Microseconds())/1000, "token-p99-ms")
	b.ReportMetric(tokRate/pwRate, "token/pw")
	b.ReportMetric(float64(pool), "pool")
	b.ReportMetric(float64(pool)*float64(params.Memory)/1024, "argon2-bound-MiB")
	b.Logf("argon2id %v, pool %d: %.1f password checks/s (p50 %v, p99 %v); %.0f token checks/s (p50 %v, p99 %v)",
		params, pool, pwRate, percentile(pwLat, 0.5).Round(time.Millisecond), percentile(pwLat, 0.99).Round(time.Millisecond),
		tokRate, percentile(tokLat, 0.5).Round(time.Microsecond), percentile(tokLat, 0.99).Round(time.Microsecond))
}

// memSampler records the peak of the Go heap (live and unswept objects)
// and of the process's resident set while it runs.
type memSampler struct {
	stop     chan struct{}
	done     chan struct{}
	peakHeap uint64
	peakRSS  uint64
}

func startMemSampler() *memSampler {
	s := &memSampler{stop: make(chan struct{}), done: make(chan struct{})}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	pageSize := uint64(os.Getpagesize())
	go func() {
		defer close(s.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			s.peakHeap = max(s.peakHeap, sample[0].Value.Uint64())
			if b, err := os.ReadFile("/proc/self/statm"); err == nil {
				if f := strings.Fields(string(b)); len(f) > 1 {
					if pages, err := strconv.ParseUint(f[1], 10, 64); err == nil {
						s.peakRSS = max(s.peakRSS, pages*pageSize)
					}
				}
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *memSampler) finish() { close(s.stop); <-s.done }

// BenchmarkLoginStorm throws a storm of concurrent HTTP logins (every
// one a password check, each from its own address, for its own name) at
// clinkd's handler with the configured argon2id parameters, and reports
// the peak Go heap and resident set against the semaphore's bound,
// hash_concurrency × m, for several hash_concurrency values. The storm is
// larger than the bound by far: memory follows the bound, not the storm.
// The baseline is the heap before the storm, in the same run.
func BenchmarkLoginStorm(b *testing.B) {
	params := benchParams(b)
	const storm = 64
	for _, conc := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("hash_concurrency=%d", conc), func(b *testing.B) {
			svc, _ := newService(b, func(c *clinkid.Config) {
				c.Params = params
				c.HashConcurrency = conc
				c.HashQueue = storm // all wait; none is shed, so each is hashed
				c.LockoutThreshold = 1 << 20
			})
			h := svc.Handler()
			runtime.GC()
			base := startMemSampler()
			time.Sleep(20 * time.Millisecond)
			base.finish()
			var busy atomic.Int64
			b.ResetTimer()
			s := startMemSampler()
			start := time.Now()
			for i := range b.N {
				var wg sync.WaitGroup
				for j := range storm {
					wg.Go(func() {
						r := httptest.NewRequest("POST", clinkid.PathPrefix+"login",
							strings.NewReader(fmt.Sprintf(`{"name":"storm%d-%d","password":"wrong password"}`, i, j)))
						r.Header.Set("Content-Type", "application/json")
						r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:1", i%250, j/250, j%250)
						w := httptest.NewRecorder()
						h.ServeHTTP(w, r)
						if w.Code == 503 {
							busy.Add(1)
						} else if w.Code != 401 {
							b.Errorf("login = %d %s, want 401", w.Code, bytes.TrimSpace(w.Body.Bytes()))
						}
					})
				}
				wg.Wait()
			}
			elapsed := time.Since(start)
			b.StopTimer()
			s.finish()
			bound := float64(conc) * float64(params.Memory) / 1024
			mib := func(n uint64) float64 { return float64(n) / (1 << 20) }
			b.ReportMetric(float64(storm*b.N)/elapsed.Seconds(), "logins/s")
			b.ReportMetric(bound, "bound-MiB")
			b.ReportMetric(mib(s.peakHeap), "peak-heap-MiB")
			b.ReportMetric(mib(s.peakHeap)-mib(base.peakHeap), "storm-heap-MiB")
			b.ReportMetric(mib(s.peakRSS), "peak-rss-MiB")
			b.ReportMetric(float64(busy.Load()), "busy")
			b.Logf("argon2id %v, %d concurrent logins, hash_concurrency %d: bound %.0f MiB; heap before %.1f MiB, peak %.1f MiB; peak RSS %.1f MiB (GOGC=%s GOMEMLIMIT=%s)",
				params, storm, conc, bound, mib(base.peakHeap), mib(s.peakHeap), mib(s.peakRSS), os.Getenv("GOGC"), os.Getenv("GOMEMLIMIT"))
		})
	}
}
