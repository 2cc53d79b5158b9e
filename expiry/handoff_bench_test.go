package expiry_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/expiry"
)

// BenchmarkHandoff measures a handoff of n held messages (n/10 users, ten
// each, with a 2.3 KB envelope like BenchmarkHeldMemory's) and as many
// online devices as users, from a giver to a taker over a Unix socket, as
// clinkd does: the giver sends the state, the taker takes it (quotas,
// expiry heap, registry) and confirms. The baseline, measured in the same
// run, copies as many bytes through the same kind of socket; the ratio
// is what the protocol's work costs beyond moving the bytes.
//
//	go test -run '^$' -bench Handoff -benchtime 3x ./expiry/
func BenchmarkHandoff(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("messages=%d", n), func(b *testing.B) { benchmarkHandoff(b, n) })
	}
}

func benchmarkHandoff(b *testing.B, n int) {
	now := time.Unix(1_800_000_000, 0).UTC()
	lim := expiry.Limits{PerUserMessages: 10, PerSenderMessages: 1 << 30, PerSenderBytes: 1 << 40, PerPairMessages: 10, TotalBytes: 1 << 34}
	giver := newBenchSide(b, now, lim)
	template, _ := timedTemplate(b, now, standard)
	for u := range n / 10 {
		to := fmt.Sprintf("u%d@example.org", u)
		giver.announce(b, to+"/phone")
		for m := range 10 {
			text := forRecipient(template, fmt.Sprintf("m%d", m), to)
			s, err := component.ParseStanza(`<message type='headline' from='alice@example.org/laptop' to='`+strings.Replace(to, "@", `\40`, 1)+
				`@`+handoffDomain+`'>`+text+storeless+`</message>`, 256<<10)
			if err != nil {
				b.Fatal(err)
			}
			if err := giver.router.HandleMessage(context.Background(), s); err != nil {
				b.Fatal(err)
			}
		}
	}
	if held, _ := giver.relay.Held(); held != n {
		b.Fatalf("held %d, want %d", held, n)
	}
	dir := b.TempDir()
	var size int64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		taker := newBenchSide(b, now, lim)
		a, c := unixPair(b, filepath.Join(dir, "s"))
		b.StartTimer()
		done := make(chan error, 1)
		counted := &countingWriter{w: a}
		go func() {
			g := expiry.NewHandoffConn(struct {
				io.Reader
				io.Writer
			}{a, counted})
			if _, err := g.SendState(giver.relay, giver.devs); err != nil {
				done <- err
				return
			}
			_, err := g.ReceiveDone()
			done <- err
		}()
		tc := expiry.NewHandoffConn(c)
		took, err := tc.ReceiveState(taker.relay, taker.devs)
		if err != nil {
			b.Fatal(err)
		}
		if err := tc.SendDone(took); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if took.Messages != n {
			b.Fatalf("took %d, want %d", took.Messages, n)
		}
		size = counted.n
		a.Close()
		c.Close()
		b.StartTimer()
	}
	b.StopTimer()
	handoff := b.Elapsed() / time.Duration(b.N)

	// The baseline: the same bytes through the same kind of socket.
	a, c := unixPair(b, filepath.Join(dir, "baseline"))
	buf := make([]byte, 64<<10)
	start := time.Now()
	go func() {
		for sent := int64(0); sent < size; sent += int64(len(buf)) {
			a.Write(buf[:min(int64(len(buf)), size-sent)])
		}
		a.Close()
	}()
	io.Copy(io.Discard, c)
	baseline := time.Since(start)
	c.Close()
	b.ReportMetric(float64(handoff.Microseconds())/1000, "ms/handoff")
	b.ReportMetric(float64(size)/(1<<20), "MiB")
	b.ReportMetric(float64(handoff)/float64(baseline), "x-raw-copy")
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func newBenchSide(b *testing.B, now time.Time, lim expiry.Limits) *handoffSide {
	b.Helper()
	s := &handoffSide{link: &link{}, devs: dispatch.NewDevices(dispatch.DevicesConfig{})}
	comp := jid.MustParse(handoffDomain)
	var err error
	s.relay, err = expiry.New(expiry.Config{Component: comp, Send: silent{}, Devices: s.devs, Entitlements: expiry.NoEntitlementCheck{},
		Limits: lim, Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	s.router, err = dispatch.New(dispatch.Config{Component: comp, Devices: s.devs, Timed: s.relay, Ordinary: dispatch.Unavailable{Text: "off"},
		Watchers: []dispatch.Watcher{s.relay}, Access: dispatch.Access{Local: "example.org", PerMinute: -1}})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// unixPair returns both ends of a Unix stream socket at path.
func unixPair(b *testing.B, path string) (*net.UnixConn, *net.UnixConn) {
	b.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	a, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	c, err := ln.AcceptUnix()
	if err != nil {
		b.Fatal(err)
	}
	return a, c
}
