package clinkid_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/clinkid"
)

func TestSourceOf(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, addr, net string }{
		{"198.51.100.7", "198.51.100.7", "198.51.100.0/24"},
		{"::ffff:198.51.100.7", "198.51.100.7", "198.51.100.0/24"}, // IPv4-mapped is IPv4
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:DB8:1:2::9", "2001:db8:1:2::9", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::1", "fe80::/64"}, // the zone says nothing of the sender
		{"::1", "::1", "::/64"},
		{"", "", ""},
		{"unknown", "", ""},
		{"198.51.100.7:1234", "", ""},
		{"198.51.100.0/24", "", ""},
	}
	for _, tt := range tests {
		addr, network := clinkid.SourceOf(tt.in)
		if addr != tt.addr || network != tt.net {
			t.Errorf("SourceOf(%q) = %q, %q, want %q, %q", tt.in, addr, network, tt.addr, tt.net)
		}
	}
}

// FuzzSourceOf reads arbitrary client addresses (the Prosody bridge's
// "address", X-Forwarded-For): an address always lies in its network, of
// the documented size, and anything else counts as no address.
func FuzzSourceOf(f *testing.F) {
	for _, s := range []string{"198.51.100.7", "::ffff:10.0.0.1", "2001:db8::1", "fe80::1%eth0", "", "1.2.3.4.5", "::", "[::1]:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addr, network := clinkid.SourceOf(s)
		if addr == "" {
			if network != "" {
				t.Fatalf("SourceOf(%q) = no address but network %q", s, network)
			}
			return
		}
		a, err := netip.ParseAddr(addr)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			t.Fatalf("SourceOf(%q) = address %q, not canonical", s, addr)
		}
		p, err := netip.ParsePrefix(network)
		if err != nil || !p.Contains(a) || p.Masked() != p {
			t.Fatalf("SourceOf(%q) = %q in %q", s, addr, network)
		}
		if want := map[bool]int{true: 24, false: 64}[a.Is4()]; p.Bits() != want {
			t.Fatalf("SourceOf(%q) network %q, want a /%d", s, network, want)
		}
	})
}

// TestScopes: strangers' failures delay the name for strangers only; the
// owner's known network and the owner's token are scopes of their own.
func TestScopes(t *testing.T) {
	t.Parallel()
	svc, _ := newService(t, func(c *clinkid.Config) { c.LockoutThreshold = 3 })
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, "203.0.113.5"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		svc.Login(ctx, "alice", "guess", fmt.Sprintf("198.51.%d.1", i), "", 0)
	}
	var locked *clinkid.LockedError
	if _, err := svc.Login(ctx, "alice", alicePass, "198.51.200.1", "", 0); !errors.As(err, &locked) {
		t.Errorf("the password from an unknown network after 3 strangers' failures = %v, want a LockedError", err)
	}
	if _, err := svc.Login(ctx, "alice", alicePass, "", "", 0); !errors.As(err, &locked) {
		t.Errorf("the password with no address (extauth) = %v, want a LockedError", err)
	}
	// The network alice registered from is hers.
	sess, err := svc.Login(ctx, "alice", alicePass, "203.0.113.99", "", 0)
	if err != nil {
		t.Fatalf("the password from the registration's network = %v, want a session", err)
	}
	// Its guesses are counted apart, and delay only it.
	for range 3 {
		svc.Login(ctx, "alice", "guess", "203.0.113.66", "", 0)
	}
	if _, err := svc.Login(ctx, "alice", alicePass, "203.0.113.5", "", 0); !errors.As(err, &locked) {
		t.Errorf("the password from the known network after 3 failures from it = %v, want a LockedError", err)
	}
	// A password change re-authenticates with the token's own scope.
	if err := svc.ChangePassword(ctx, sess.Token, alicePass, "a new long password", "198.51.201.1"); err != nil {
		t.Errorf("ChangePassword with a token while strangers and the home network are delayed = %v", err)
	}
	// And a success in one scope does not lift another's delay.
	if _, err := svc.Login(ctx, "alice", "a new long password", "198.51.202.1", "", 0); !errors.As(err, &locked) {
		t.Errorf("strangers after the owner's success elsewhere = %v, want still delayed", err)
	}
	// Unlock lifts all.
	if err := svc.Unlock(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Login(ctx, "alice", "a new long password", "198.51.203.1", "", 0); err != nil {
		t.Errorf("after Unlock = %v", err)
	}
}

// TestGlobalBudget: past the server-wide budget of failures from unknown
// networks, such attempts are refused unchecked; known networks and tokens
// keep working, and their failures do not count.
func TestGlobalBudget(t *testing.T) {
	t.Parallel()
	svc, db := newService(t, func(c *clinkid.Config) { c.GlobalFailuresPerMinute = 4 })
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, "203.0.113.5"); err != nil {
		t.Fatal(err)
	}
	tok, err := svc.Login(ctx, "alice", alicePass, "203.0.113.5", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	// Failures from the owner's network are not strangers'.
	for range 3 {
		svc.Login(ctx, "alice", "typo", "203.0.113.5", "", 0)
	}
	for i := range 4 {
		if _, err := svc.Login(ctx, fmt.Sprint("user", i), "guess", fmt.Sprintf("198.51.%d.1", i), "", 0); !errors.Is(err, clinkid.ErrInvalidCredentials) {
			t.Fatalf("failure %d within the budget = %v", i, err)
		}
	}
	before := svc.HashCount()
	if _, err := svc.Login(ctx, "bob", "guess", "198.51.100.1", "", 0); !errors.Is(err, clinkid.ErrThrottled) {
		t.Errorf("an attempt from an unknown network past the budget = %v, want ErrThrottled", err)
	}
	if ok, err := svc.CheckLogin(ctx, "alice", alicePass, ""); ok || err != nil {
		t.Errorf("extauth (no address) past the budget = %v, %v, want false", ok, err)
	}
	if n := svc.HashCount() - before; n != 0 {
		t.Errorf("%d argon2id computations past the budget, want 0", n)
	}
	if _, err := svc.Login(ctx, "alice", alicePass, "203.0.113.77", "", 0); err != nil {
		t.Errorf("the owner's known network past the budget = %v, want a session", err)
	}
	if ok, _ := svc.CheckLogin(ctx, "alice", tok.Token, ""); !ok {
		t.Error("the owner's token past the budget was refused")
	}
	// The budget is a rate: once the minutes it counts are old, it refills.
	if _, err := db.Exec(ctx, `UPDATE clinkid_failure_budget SET minute = minute - interval '5 minutes'`); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Login(ctx, "bob", "guess", "198.51.100.1", "", 0); !errors.Is(err, clinkid.ErrInvalidCredentials) {
		t.Errorf("after the window = %v, want a checked (wrong) password", err)
	}
}

// TestHashLanes: with every slot taken, the owner's checks (known network,
// token) are served before strangers' queued earlier, and strangers past
// their queue's bound are shed while the owner's queue still has room.
func TestHashLanes(t *testing.T) {
	t.Parallel()
	svc, _ := newService(t, func(c *clinkid.Config) { c.HashConcurrency, c.HashQueue = 1, 2 })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	release, err := svc.AcquireSlot(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	enqueue := func(name string, trusted bool) {
		want := svc.HashWaiting() + 1
		wg.Go(func() {
			rel, err := svc.AcquireSlot(ctx, trusted)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			rel()
		})
		for deadline := time.Now().Add(30 * time.Second); svc.HashWaiting() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never queued", name)
			}
		}
	}
	enqueue("stranger 1", false)
	enqueue("stranger 2", false)
	if _, err := svc.AcquireSlot(ctx, false); !errors.Is(err, clinkid.ErrBusy) {
		t.Errorf("a third stranger with the queue full = %v, want ErrBusy", err)
	}
	enqueue("owner", true)
	release()
	wg.Wait()
	if got := strings.Join(order, ", "); got != "owner, stranger 1, stranger 2" {
		t.Errorf("slots went to %s, want the owner first, then strangers in order", got)
	}
	// A check that gives up while waiting leaves the queue.
	release, _ = svc.AcquireSlot(ctx, false)
	short, cancelShort := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancelShort()
	if _, err := svc.AcquireSlot(short, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting past the context = %v", err)
	}
	if n := svc.HashWaiting(); n != 0 {
		t.Errorf("%d still waiting after giving up", n)
	}
	release()
	if rel, err := svc.AcquireSlot(ctx, false); err != nil {
		t.Errorf("the slot after all that = %v", err)
	} else {
		rel()
	}
}

// TestEvents: registrations, password changes and deletions are events in
// order; a cursor reads what follows it, and a cursor older than what is
// kept, or not of this database, is a gap.
func TestEvents(t *testing.T) {
	t.Parallel()
	svc, db := newService(t, nil)
	ctx := t.Context()
	head, err := svc.Events(ctx, 0, false)
	if err != nil || head.Last != 0 || len(head.Events) != 0 {
		t.Fatalf("Events from now on an empty database = %+v, %v", head, err)
	}
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	sess, _ := svc.Login(ctx, "alice", alicePass, "", "", 0)
	if err := svc.ChangePassword(ctx, sess.Token, alicePass, "a new long password", ""); err != nil {
		t.Fatal(err)
	}
	if err := svc.DeleteAccount(ctx, sess.Token, "a new long password", ""); err != nil {
		t.Fatal(err)
	}
	b, err := svc.Events(ctx, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range b.Events {
		got = append(got, e.Name+" "+e.Kind)
	}
	if strings.Join(got, ", ") != "alice registered, alice password_changed, alice deleted" || b.Gap || b.Last != b.Events[2].Seq {
		t.Errorf("Events(0) = %+v", b)
	}
	if b2, _ := svc.Events(ctx, b.Events[1].Seq, true); len(b2.Events) != 1 || b2.Events[0].Kind != "deleted" {
		t.Errorf("Events after the second = %+v", b2)
	}
	if b2, _ := svc.Events(ctx, b.Last+100, true); !b2.Gap || b2.Last != b.Last || len(b2.Events) != 0 {
		t.Errorf("Events after a cursor from elsewhere = %+v, want a gap and the head", b2)
	}
	if _, err := db.Exec(ctx, `DELETE FROM clinkid_events WHERE seq <= $1`, b.Events[1].Seq); err != nil {
		t.Fatal(err)
	}
	if b2, _ := svc.Events(ctx, 0, true); !b2.Gap || len(b2.Events) != 1 {
		t.Errorf("Events after swept ones = %+v, want a gap and what is kept", b2)
	}
}
