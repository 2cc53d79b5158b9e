package expiry_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/expiry"
)

// TestPinnedChunksAreCompacted plays a sender who tries to make the relay
// keep far more memory than it holds: in every batch of messages one in
// forty has a validity period of hours and the rest seconds, so that once
// the short ones expire each 1 MiB chunk of the relay's slab would stay
// mapped for a few long-lived envelopes. The relay must compact as
// messages expire: the memory it keeps touched stays within 1.25 times the
// envelope bytes it holds plus 3 MiB (two chunks of slack and the one it
// fills), and the long-lived envelopes keep their bytes through the moves.
// Without compaction (Run not compacting) it ends at 40 times.
func TestPinnedChunksAreCompacted(t *testing.T) {
	t.Parallel()
	const (
		rounds   = 10
		perRound = 2000
		pinEvery = 40
	)
	var clock atomic.Int64
	start := time.Unix(1_800_000_000, 0).UTC()
	clock.Store(start.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }

	template, expires := timedTemplate(t, start, enhanced)

	r, router := newRouter(t, expiry.Config{Limits: noQuotas, Now: now}, silent{}, unlimited)
	ctx := running(t, r)

	send := func(id string, period time.Duration) {
		text := forRecipient(template, id, "bob@example.org")
		text = strings.Replace(text, expires, expiresAt(now().Add(period)), 1)
		if err := router.HandleMessage(ctx, timedStanza(t, "bob@example.org", text)); err != nil {
			t.Fatalf("message %s refused: %v", id, err)
		}
	}
	pinned := 0
	var before map[string][]byte // round 0's, as first held
	var pinnedIDs []string       // round 0's long-lived ones
	for round := range rounds {
		// The previous round's short-lived messages are due.
		clock.Add(int64(20 * time.Second))
		expiry.Wake(r)
		for i := range perRound {
			id := fmt.Sprintf("%02d%030x", round, i)
			if i%pinEvery == 0 {
				send(id, 6*time.Hour)
				pinned++
				if round == 0 {
					pinnedIDs = append(pinnedIDs, id)
				}
			} else {
				send(id, 10*time.Second)
			}
		}
		if round == 0 {
			before = expiry.HeldEnvelopes(r)
		}
		// Wait for Run to have dropped the previous round's.
		want := pinned + perRound - perRound/pinEvery
		deadline := time.Now().Add(30 * time.Second)
		for {
			if n, _ := r.Held(); n == want {
				break
			}
			if time.Now().After(deadline) {
				n, _ := r.Held()
				t.Fatalf("round %d: %d held, want %d after the sweep", round, n, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The last round's short ones expire too.
	clock.Add(int64(20 * time.Second))
	expiry.Wake(r)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n, _ := r.Held(); n == pinned {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d held at the end, want %d", func() int { n, _ := r.Held(); return n }(), pinned)
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, held := r.Held()
	used := r.SlabUsed()
	t.Logf("%d messages sent, %d held (%d envelope bytes); the slab keeps %d bytes touched (%.2f×)",
		rounds*perRound, pinned, held, used, float64(used)/float64(held))
	if limit := held + held/4 + 3<<20; used > limit {
		t.Errorf("the slab keeps %d bytes touched for %d held: more than 1.25× + 3 MiB = %d", used, held, limit)
	}
	after := expiry.HeldEnvelopes(r)
	for _, id := range pinnedIDs {
		if !bytes.Equal(after[id], before[id]) {
			t.Fatalf("message %s: held as\n%q\nafter compaction, as\n%q\nbefore", id, after[id], before[id])
		}
	}
}

// noQuotas lifts every quota but the validity period's: the tests here
// hold tens of thousands of messages from one sender to one user.
var noQuotas = expiry.Limits{PerUserMessages: 1 << 20, PerSenderMessages: 1 << 30, PerSenderBytes: 1 << 40, PerPairMessages: 1 << 20, TotalBytes: 1 << 34}

// running runs r's expiry sweeps until the test ends, and returns the
// context they run under.
func running(t testing.TB, r *expiry.Relay) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ctx
}

// rawRecorder is a link that writes envelopes as bytes (expiry.RawSender)
// and checks each one it is handed while it reads it: a whole envelope
// naming the message's id, not one that compaction moved or freed under
// the send.
type rawRecorder struct {
	recorder
	mu        sync.Mutex
	delivered int
	bad       []string
}

func (r *rawRecorder) SendMessageRaw(_ context.Context, m stanza.Message, children ...[]byte) error {
	for _, c := range children {
		if !bytes.HasPrefix(c, []byte("<envelope")) {
			continue
		}
		first := string(c)
		runtime.Gosched() // let the sweep run while the bytes are read
		if string(c) != first || !strings.HasSuffix(first, "</envelope>") || !strings.Contains(first, `id="`+m.ID+`"`) {
			r.mu.Lock()
			r.bad = append(r.bad, fmt.Sprintf("message %s to %s: %.80q", m.ID, m.To, c))
			r.mu.Unlock()
		}
		r.mu.Lock()
		r.delivered++
		r.mu.Unlock()
	}
	return nil
}

// TestCompactionWhileDelivering runs the relay's compaction while
// messages are delivered and their copies held beside them (twins sharing
// an envelope): no send may read an envelope being moved or freed, and
// compaction must have happened meanwhile. Under -race it also checks the
// locking of the entries' fields.
func TestCompactionWhileDelivering(t *testing.T) {
	t.Parallel()
	var clock atomic.Int64
	start := time.Unix(1_800_000_000, 0).UTC()
	clock.Store(start.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	template, expires := timedTemplate(t, start, enhanced)

	link := &rawRecorder{}
	r, router := newRouter(t, expiry.Config{Limits: noQuotas, Now: now}, link, unlimited)
	ctx := running(t, r)

	// One sender, which moves the clock after each message, so that no
	// message's validity shrinks between its writing and its admission;
	// the concurrency is Run's sweeps against the deliveries of the
	// sender's messages, their copies and the new devices' catch-up.
	const senders, perSender = 1, 6000
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for i := range perSender {
				period := 10 * time.Second
				if i%10 == 0 {
					period = time.Hour
				}
				text := forRecipient(template, fmt.Sprintf("%d%031x", g, i), "bob@example.org")
				text = strings.Replace(text, expires, expiresAt(now().Add(period)), 1)
				s, err := component.ParseStanza(timedMessage("bob@example.org", text), 256<<10)
				if err != nil {
					t.Error(err)
					return
				}
				if err := router.HandleMessage(ctx, s); err != nil {
					t.Errorf("message %d/%d refused: %v", g, i, err)
					return
				}
				// What was sent 100 messages ago expires, and Run
				// sweeps and compacts while the next are sent.
				clock.Add(int64(100 * time.Millisecond))
				expiry.Wake(r)
			}
		})
	}
	// And until the sender is done, bob's new devices announce themselves:
	// each gets everything held for bob, most of it long-lived envelopes
	// in the sparse chunks that compaction empties.
	sending := make(chan struct{})
	go func() { wg.Wait(); close(sending) }()
	announced := 0
	for k := 0; ; k++ {
		select {
		case <-sending:
		default:
			r.DeviceOnline(ctx, jid.MustParse("bob@example.org"), jid.MustParse(fmt.Sprintf("bob@example.org/new%d", k)))
			announced++
			continue
		}
		break
	}
	wg.Wait()
	link.mu.Lock()
	defer link.mu.Unlock()
	for _, b := range link.bad {
		t.Error(b)
	}
	n := expiry.Compactions(r)
	t.Logf("%d envelopes sent to devices, %d compactions, %d devices announced", link.delivered, n, announced)
	if n == 0 {
		t.Error("no compaction happened while delivering: the test proves nothing")
	}
	// Each message goes to bob's device and its copy to alice's other
	// device (the recorder has both online).
	if want := senders * perSender; link.delivered < want {
		t.Errorf("%d envelopes sent to devices, want at least %d", link.delivered, want)
	}
}
