package expiry_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/expiry"
	"github.com/clinkme/clinkd/extensions/expiryxml"
)

// TestMassExpiryLetsGoOfTheLock plays a sender who makes thousands of
// timed messages expire in the same second, so that the relay's sweep
// would hold its lock (which every delivery, hold and receipt takes) for
// all of them at once and stall everyone else's messages meanwhile. The
// sweep must work in batches and let go of the lock between them: when the
// first expiry notice goes out (after the first batch), most of the
// expired messages are still held, and the relay answers. Before, the
// sweep dropped all of them in one hold of the lock and sent the first
// notice after the last drop (held count 0 at that moment).
func TestMassExpiryLetsGoOfTheLock(t *testing.T) {
	t.Parallel()
	const n = 5 * 1024 // five sweep batches, and their copies
	var clock atomic.Int64
	start := time.Unix(1_800_000_000, 0).UTC()
	clock.Store(start.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	template, expires := timedTemplate(t, start, enhanced)
	template = strings.Replace(template, expires, expiresAt(start.Add(time.Minute)), 1)
	link := &noticeLink{}
	link.heldAtFirstNotice.Store(-1)
	r, router := newRouter(t, expiry.Config{Limits: noQuotas, Now: now}, link, unlimited)
	link.firstNotice = func() {
		held, _ := r.Held()
		link.heldAtFirstNotice.Store(int64(held))
	}
	ctx := running(t, r)
	for i := range n {
		text := forRecipient(template, fmt.Sprintf("%032x", i), "bob@example.org")
		if err := router.HandleMessage(ctx, timedStanza(t, "bob@example.org", text)); err != nil {
			t.Fatalf("message %d refused: %v", i, err)
		}
	}
	held, _ := r.Held()
	if held < n {
		t.Fatalf("held %d, want at least the %d messages", held, n)
	}
	clock.Add(int64(2 * time.Minute))
	expiry.Wake(r)
	deadline := time.Now().Add(time.Minute)
	for held > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		held, _ = r.Held()
	}
	if held != 0 {
		t.Fatalf("a minute after the expiry, %d still held", held)
	}
	got := link.heldAtFirstNotice.Load()
	if got < 0 {
		t.Fatal("no expiry notice was sent")
	}
	// Four of the five batches (and the copies) were still to drop.
	if got < n/2 {
		t.Fatalf("when the first expiry notice went out, %d messages were held: the sweep dropped (nearly) all %d before letting go of the lock", got, n)
	}
}

// noticeLink is a link on which every user has one device online, which
// gets every message; firstNotice runs when the first expiry notice is
// sent, without the relay's lock.
type noticeLink struct {
	once              sync.Once
	firstNotice       func()
	heldAtFirstNotice atomic.Int64
}

func (l *noticeLink) SendMessage(_ context.Context, _ stanza.Message, payload ...any) error {
	for _, p := range payload {
		if _, ok := p.(expiryxml.Expired); ok {
			l.once.Do(l.firstNotice)
		}
	}
	return nil
}

func (l *noticeLink) Online(user jid.JID) []jid.JID {
	d, err := user.WithResource("phone")
	if err != nil {
		return nil
	}
	return []jid.JID{d}
}

func (l *noticeLink) Key(d jid.JID) string { return d.String() }

func (l *noticeLink) Resolve(_ jid.JID, key string) (jid.JID, bool) {
	d, err := jid.Parse(key)
	return d, err == nil
}
