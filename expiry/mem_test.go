package expiry_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/expiry"
)

// BenchmarkHeldMemory measures what holding timed messages costs in
// memory, at 100,000 held messages (10,000 users, ten each), with
// envelopes of about 1 KB (an enhanced envelope, text of 96 bytes) and of
// about 2.3 KB (a standard one, the same text), and at 100,000 held 1 KB
// messages for 1,000 users, a hundred each. Per case it reports the
// envelope bytes held (the baseline, measured in the same run), the memory
// each held message costs beyond its envelope (Go's heap after holding
// them, minus the heap before, plus the memory the relay's slab touched
// outside the heap, minus the envelope bytes, per message), and the
// process's resident memory (VmRSS, after a garbage collection and
// debug.FreeOSMemory): per held message, the growth while holding them
// divided by the bytes held, and all of it divided by the bytes held; and
// its peak (VmHWM) over the bytes held: run one case alone (-bench
// HeldMemory/100k-1KB) for a peak of that case only, with GOGC or
// GOMEMLIMIT set as clinkd would run.
//
//	go test -run '^$' -bench HeldMemory -benchtime 1x ./expiry/
//
// -held1m adds a case of 1,000,000 held messages of about 1 KB (100,000
// users), which needs about 1.5 GB:
//
//	go test -run '^$' -bench HeldMemory -benchtime 1x ./expiry/ -held1m
//
// Each case builds its stanzas one at a time and lets go of them, so what
// stays resident is the relay's.
func BenchmarkHeldMemory(b *testing.B) {
	cases := []struct {
		name           string
		users, perUser int
		enhanced       bool
	}{
		{"100k-1KB", 10_000, 10, true},
		{"100k-2.3KB", 10_000, 10, false},
		// A hundred per user: each user's messages are in a map
		// rather than a short list (heldSet).
		{"100k-1KB-100each", 1_000, 100, true},
	}
	if *held1M {
		cases = append(cases, struct {
			name           string
			users, perUser int
			enhanced       bool
		}{"1M-1KB", 100_000, 10, true})
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { heldMemory(b, c.users, c.perUser, c.enhanced) })
	}
}

var held1M = flag.Bool("held1m", false, "BenchmarkHeldMemory: also hold 1,000,000 messages of about 1 KB (about 1.5 GB)")

func heldMemory(b *testing.B, users, perUser int, enhancedEnvelope bool) {
	now := time.Unix(1_800_000_000, 0).UTC()
	how := standard
	if enhancedEnvelope {
		how = enhanced
	}
	template, _ := timedTemplate(b, now, how)
	// One stanza per (user, message), made when it is handled; the relay
	// does not check signatures, so only the id and the recipient change.
	stanza := func(u, m int) *component.Stanza {
		to := fmt.Sprintf("u%d@example.org", u)
		// Ids as long as the SDK's (32 hex digits), which the relay keeps.
		return timedStanza(b, to, forRecipient(template, fmt.Sprintf("%032x", m), to))
	}
	for range b.N {
		r, router := newRouter(b, expiry.Config{
			Limits: expiry.Limits{PerUserMessages: perUser, PerSenderMessages: 1 << 30, PerSenderBytes: 1 << 40, PerPairMessages: perUser, TotalBytes: 1 << 34},
			Now:    func() time.Time { return now }}, silent{}, unlimited)
		before, rssBefore := heap(), status(b, "VmRSS")
		for u := range users {
			for m := range perUser {
				if err := router.HandleMessage(context.Background(), stanza(u, m)); err != nil {
					b.Fatal(err)
				}
			}
		}
		after, rssAfter := heap(), status(b, "VmRSS")
		peak := status(b, "VmHWM")
		n, payload := r.Held()
		// Held counts the sender's copies too, but those go through the
		// server and are never made here (silent drops them).
		if n != users*perUser {
			b.Fatalf("held %d, want %d", n, users*perUser)
		}
		// The envelopes lie outside Go's heap (internal/slab): what the
		// slab touched counts with the heap.
		slabUsed := r.SlabUsed()
		overhead := float64(int64(after-before)+slabUsed-payload) / float64(n)
		b.ReportMetric(float64(payload)/float64(n), "envelope-B/msg")
		b.ReportMetric(overhead, "overhead-B/msg")
		b.ReportMetric(overhead/(float64(payload)/float64(n)), "overhead/envelope")
		b.ReportMetric(float64(rssAfter-rssBefore)/float64(n), "rss-growth-B/msg")
		b.ReportMetric(float64(rssAfter-rssBefore)/float64(payload), "rss-growth/held")
		b.ReportMetric(float64(rssAfter)/float64(payload), "rss/held")
		b.ReportMetric(float64(rssAfter)/(1<<20), "rss-MiB")
		b.ReportMetric(float64(peak)/float64(payload), "peak-rss/held")
		runtime.KeepAlive(router)
		expiry.ReleaseSlab(r)
	}
}

// status reads a size from /proc/self/status (VmRSS, the resident
// memory now; VmHWM, its peak since the process started), after a garbage
// collection has freed what it can and debug.FreeOSMemory has returned it
// to the kernel: what an operator sees of the memory clinkd holds.
func status(b *testing.B, field string) int64 {
	debug.FreeOSMemory()
	text, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skipf("resident memory unknown: %v", err)
	}
	for line := range strings.Lines(string(text)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("%s %q: %v", field, v, err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// silent is a link and registry with no devices online and nothing sent.
type silent struct{}

func (silent) SendMessage(context.Context, stanza.Message, ...any) error { return nil }
func (silent) Online(jid.JID) []jid.JID                                  { return nil }
func (silent) Key(d jid.JID) string                                      { return d.String() }
func (silent) Resolve(jid.JID, string) (jid.JID, bool)                   { return jid.JID{}, false }
