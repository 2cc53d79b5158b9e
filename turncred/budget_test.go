package turncred_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/internal/turnprobe"
	"github.com/clinkme/clinkd/lab/labtest"
	"github.com/clinkme/clinkd/turncred"
)

// TestUserAllocationBudget plays a user who wants more of the relay than
// its share: it asks clinkd for credentials as fast as it may, and holds
// credentials issued at many different seconds (so with as many
// different TURN REST usernames, "EXPIRY:bare-jid"), then allocates with
// every one of them over UDP, TCP and TLS. coturn counts a REST username
// under the part after "EXPIRY:", so all of them share one budget: the
// user gets exactly user-quota allocations and every further one is
// refused with 486 Allocation Quota Reached, not by a timeout. Meanwhile
// another user still allocates (the refusals are the user's budget, not
// the relay's total-quota), a released allocation frees a place (the
// budget is concurrent, not spent), and clinkd's per-user XEP-0215 rate
// limit answers resource-constraint past its burst.
func TestUserAllocationBudget(t *testing.T) {
	t.Parallel()
	turn := labtest.Coturn(t)
	quota := turn.UserQuota
	if quota < 3 {
		t.Fatalf("coturn's user-quota is %d; the test needs at least 3", quota)
	}
	tlsCfg := &tls.Config{RootCAs: labtest.CA(t).Pool, ServerName: turn.Realm}
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			const burst = 4
			d := startClinkd(t, srv, func(c *daemon.Config) { c.TURN.Burst = burst; c.TURN.PerMinute = 1 })
			dev := clinkdtest.NewDevice(t, srv)
			user := dev.JID().Bare().String()

			// The rate limit: the burst is served, then resource-constraint
			// (within one more request: a token may have come back).
			var fromClinkd []string // "username\x00password" of turn/udp
			refused := false
			for i := 0; i < burst+2 && !refused; i++ {
				svcs, err := dev.ExternalServices(ctx, d.Component().Domain())
				switch {
				case err == nil:
					s := byType(t, svcs, "turn", "udp")
					fromClinkd = append(fromClinkd, s.Username+"\x00"+s.Password)
				case errors.Is(err, stanza.Error{Condition: stanza.ResourceConstraint}):
					refused = true
				default:
					t.Fatalf("XEP-0215 request %d: %v", i+1, err)
				}
			}
			if len(fromClinkd) < burst || !refused {
				t.Fatalf("XEP-0215 requests: %d served before a refusal (refused: %v), want %d served, then resource-constraint", len(fromClinkd), refused, burst)
			}

			// Credentials of the same user issued at 2×quota different
			// seconds, by the code clinkd runs, with coturn's secret: what
			// the user collects by asking once a second for a while.
			now := time.Now()
			var mu sync.Mutex
			svc, err := turncred.New(turncred.Config{
				Secret: []byte(turn.Secret), Lifetime: time.Hour, LocalDomain: srv.Domain,
				Services: []string{"turn:" + turn.UDPAddr},
				Now: func() time.Time {
					mu.Lock()
					defer mu.Unlock()
					now = now.Add(time.Second)
					return now
				},
			}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			usernames := map[string]bool{}
			type cred struct{ via, addr, user, pass string }
			var creds []cred
			first := strings.SplitN(fromClinkd[0], "\x00", 2)
			// clinkd's own credential first, on each transport.
			creds = append(creds,
				cred{"udp", turn.UDPAddr, first[0], first[1]},
				cred{"tcp", turn.TCPAddr, first[0], first[1]},
				cred{"tls", turn.TLSAddr, first[0], first[1]})
			usernames[first[0]] = true
			for i := range 2 * quota {
				u, p, _ := svc.Issue(user)
				usernames[u] = true
				via, addr := "udp", turn.UDPAddr
				if i%3 == 1 {
					via, addr = "tcp", turn.TCPAddr
				}
				creds = append(creds, cred{via, addr, u, p})
			}
			if len(usernames) < 2*quota {
				t.Fatalf("%d distinct usernames, want at least %d", len(usernames), 2*quota)
			}

			var held []*turnprobe.Allocation
			t.Cleanup(func() {
				for _, a := range held {
					a.Close()
				}
			})
			granted := 0
			for i, c := range creds {
				a, err := turnprobe.Allocate(ctx, c.via, c.addr, tlsCfg, c.user, c.pass)
				if err == nil {
					held = append(held, a)
					granted++
					continue
				}
				if ctx.Err() != nil || !strings.Contains(err.Error(), "486") {
					t.Fatalf("allocation %d (%s, username %d of %d) = %v, want a grant or 486 Allocation Quota Reached", i+1, c.via, i+1, len(creds), err)
				}
			}
			if granted != quota {
				t.Errorf("one user, %d distinct credentials: %d allocations granted, want exactly user-quota = %d", len(usernames), granted, quota)
			}

			// Another user is not affected.
			ou, op := turn.Credentials("other-"+user, time.Hour)
			a, err := turnprobe.Allocate(ctx, "udp", turn.UDPAddr, nil, ou, op)
			if err != nil {
				t.Fatalf("another user's allocation while this one is at its quota = %v, want a grant", err)
			}
			a.Close()

			// Releasing one frees a place: coturn frees a released
			// allocation about a second later, so try until it does.
			held[len(held)-1].Close()
			held = held[:len(held)-1]
			u, p, _ := svc.Issue(user)
			for {
				a, err := turnprobe.Allocate(ctx, "udp", turn.UDPAddr, nil, u, p)
				if err == nil {
					held = append(held, a)
					break
				}
				if ctx.Err() != nil || !strings.Contains(err.Error(), "486") {
					t.Fatalf("allocation after a release = %v, want a grant once coturn frees the released one", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			// And the budget is full again.
			u, p, _ = svc.Issue(user)
			if a, err := turnprobe.Allocate(ctx, "udp", turn.UDPAddr, nil, u, p); err == nil {
				a.Close()
				t.Error("an allocation beyond user-quota after the release was granted")
			} else if !strings.Contains(err.Error(), "486") {
				t.Errorf("an allocation beyond user-quota = %v, want 486", err)
			}
		})
	}
}
