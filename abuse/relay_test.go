package abuse_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestNotAnOpenRelay: an account holder cannot make clinkd send to
// addresses of other servers, ordinary or timed, and nothing is written
// for them (on main before the fix: 300 envelopes to ghost@remote.example
// went out in 31 ms, each writing a receipts_tracked row).
func TestNotAnOpenRelay(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			dbURL := labtest.NewDatabase(t)
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
			})
			comp := d.Component().Domain()
			alice := newUser(t, srv, "alice")
			bob := newUser(t, srv, "bob")
			a := online(t, srv, comp, alice)
			for _, to := range []string{"ghost0@remote.example", "nobody@nowhere.invalid"} {
				for _, validity := range []time.Duration{0, time.Minute} {
					env := seal(t, alice, jid.MustParse(to), bob.id, validity)
					if cond, text := outcome(t, a, comp, jid.MustParse(to), env); cond != string(stanza.Forbidden) || !strings.Contains(text, "relays only to users of") {
						t.Errorf("to %s (validity %v): %q %q, want forbidden naming whom clinkd serves", to, validity, cond, text)
					}
				}
			}
			// The control: to a local user it goes through.
			if cond, text := outcome(t, a, comp, bob.jid, seal(t, alice, bob.jid, bob.id, 0)); cond != "" {
				t.Fatalf("to a local user: %s %q", cond, text)
			}
			if n := trackedRows(t, dbURL, alice.jid.String()); n != 1 {
				t.Errorf("%d receipts_tracked rows for alice, want 1 (the local control only)", n)
			}
			if held, _ := d.Relay().Held(); held != 0 {
				t.Errorf("%d timed messages held for other servers' addresses", held)
			}
		})
	}
}

// trackedRows counts the receipt-state rows of a sender.
func trackedRows(t *testing.T, dbURL, sender string) int {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM receipts_tracked WHERE sender = $1`, sender).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFederatedUsersRefused: users of a domain clinkd does not serve (a
// second domain on the same server stands for another server's users) can
// neither relay through clinkd, nor send receipts, nor announce devices;
// listed in access.federated_domains, they can.
func TestFederatedUsersRefused(t *testing.T) {
	t.Parallel()
	const other = "other.localhost"
	for _, kind := range lab.Kinds() {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: kind, OtherDomains: []string{other}})
			alice := newUser(t, srv, "alice")
			eve := newUserAt(t, srv, other, "carol")
			for _, listed := range []bool{false, true} {
				dbURL := labtest.NewDatabase(t)
				d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
					c.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
					if listed {
						c.Access.FederatedDomains = []string{other}
					}
				})
				comp := d.Component().Domain()
				online(t, srv, comp, alice)
				e := login(t, srv, eve)
				ctx := ctxFor(t, time.Minute)
				// Announcing a device.
				own, _ := address.AtComponent(eve.jid, comp)
				if err := e.Announce(ctx, comp); err != nil {
					t.Fatal(err)
				}
				if err := e.Ping(ctx, own); err != nil {
					t.Fatal(err)
				}
				if got := len(d.Devices().Online(eve.jid)); got != map[bool]int{false: 0, true: 1}[listed] {
					t.Errorf("listed=%v: %d devices of eve registered", listed, got)
				}
				// Relaying, ordinary and timed.
				for _, validity := range []time.Duration{0, time.Minute} {
					cond, text := outcome(t, e, comp, alice.jid, seal(t, eve, alice.jid, alice.id, validity))
					switch {
					case !listed && (cond != string(stanza.Forbidden) || !strings.Contains(text, "serves users of")):
						t.Errorf("unlisted, validity %v: %q %q, want forbidden", validity, cond, text)
					case listed && cond != "":
						t.Errorf("listed, validity %v: %q %q, want accepted", validity, cond, text)
					}
				}
			}
		})
	}
}
