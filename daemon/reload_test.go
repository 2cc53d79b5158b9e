package daemon_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestReloadRotatesSecrets rotates every secret clinkd shares with
// another program through Reload (what SIGHUP calls), against a real XMPP
// server and a PostgreSQL that asks for passwords, and checks that each
// takes effect where docs/operators.md ("Rotate a secret") says, without
// a restart and without dropping the link:
//
//   - the admin token and the bridge secret: two values are accepted
//     while rotating, then only the new one;
//   - the database password: connections opened after the reload use it
//     (those open before are PostgreSQL's to keep);
//   - the link secret: the link that is up stays up, and the next
//     handshake uses the new secret.
func TestReloadRotatesSecrets(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			testReloadRotatesSecrets(t, srv)
		})
	}
}

func testReloadRotatesSecrets(t *testing.T, srv *lab.XMPPServer) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// A database whose role logs in with a password over TCP.
	pg := labtest.NewPostgres(t, func(o *lab.PostgresOptions) { o.PasswordAuth = true })
	admin := func(sql string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, pg.AdminURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	oldPassword, newPassword := "first password, rotated away", "second password, after rotation"
	admin(fmt.Sprintf("CREATE ROLE clinkd LOGIN PASSWORD '%s'", oldPassword))
	admin("CREATE DATABASE clinkd OWNER clinkd")
	dbURL := "postgres://clinkd@" + pg.TCPAddr + "/clinkd?sslmode=disable"

	ca := labtest.CA(t)
	cert, key, err := ca.Issue(t.TempDir(), "public", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	oldAdmin, newAdmin := strings.Repeat("a1", 20), strings.Repeat("A2", 20)
	oldBridge, newBridge := strings.Repeat("b1", 20), strings.Repeat("B2", 20)

	cfg := clinkdtest.Config(t, srv)
	proxy := clinkdtest.NewProxy(t, cfg.Link.Addr)
	cfg.Link.Addr = proxy.Addr()
	cfg.Database = daemon.DatabaseConfig{URL: dbURL, Password: oldPassword, Migrate: true, MaxConns: 2}
	cfg.Public = daemon.PublicConfig{Listen: "127.0.0.1:0", CertFile: cert, KeyFile: key}
	cfg.ClinkID.Enabled = true
	cfg.ClinkID.Argon2MemoryKiB, cfg.ClinkID.Argon2Iterations = 8<<10, 1
	cfg.ClinkID.AdminToken, cfg.ClinkID.BridgeSecret = oldAdmin, oldBridge
	d := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
	reload := func(tune func(*daemon.Config)) {
		t.Helper()
		tune(&cfg)
		restart, err := d.Reload(cfg, nil)
		if err != nil || len(restart) != 0 {
			t.Fatalf("Reload = %v, needs restart %q; want applied live", err, restart)
		}
	}

	// The admin API (on the admin listener) and the bridge (on the public
	// one), each asked something that reads the database.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}, Timeout: 30 * time.Second}
	call := func(url, body, secret string) (int, string) {
		t.Helper()
		method := http.MethodGet
		if body != "" {
			method = http.MethodPost
		}
		req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	adminURL := "http://" + d.AdminAddr() + "/clinkid/v1/admin/accounts/nobody"
	bridgeURL := d.PublicURL() + "/clinkid/v1/bridge/exists"
	type want struct {
		secret string
		code   int
	}
	expect := func(step string, admins, bridges []want) {
		t.Helper()
		for _, w := range admins {
			if code, body := call(adminURL, "", w.secret); code != w.code {
				t.Errorf("%s: admin API with %.4s… = %d %s, want %d", step, w.secret, code, body, w.code)
			}
		}
		for _, w := range bridges {
			if code, body := call(bridgeURL, `{"name":"nobody"}`, w.secret); code != w.code {
				t.Errorf("%s: bridge with %.4s… = %d %s, want %d", step, w.secret, code, body, w.code)
			}
		}
	}
	const ok, notFound, refused = http.StatusOK, http.StatusNotFound, http.StatusUnauthorized
	// The admin API answers no_such_account (404) for a good token: it
	// looked in the database.
	expect("before", []want{{oldAdmin, notFound}, {newAdmin, refused}}, []want{{oldBridge, ok}, {newBridge, refused}})
	reload(func(c *daemon.Config) {
		c.ClinkID.AdminToken = newAdmin + "\n" + oldAdmin
		c.ClinkID.BridgeSecret = newBridge + "\n" + oldBridge
	})
	expect("while rotating", []want{{oldAdmin, notFound}, {newAdmin, notFound}}, []want{{oldBridge, ok}, {newBridge, ok}})
	reload(func(c *daemon.Config) { c.ClinkID.AdminToken, c.ClinkID.BridgeSecret = newAdmin, newBridge })
	expect("after", []want{{oldAdmin, refused}, {newAdmin, notFound}}, []want{{oldBridge, refused}, {newBridge, ok}})

	// The database password: once PostgreSQL has the new one, new
	// connections with the old fail (the open ones are ended here, as a
	// restart of PostgreSQL or a network blip would), until the reload.
	admin(fmt.Sprintf("ALTER ROLE clinkd PASSWORD '%s'", newPassword))
	admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'clinkd'")
	// Each request fails, first on a connection PostgreSQL ended (the
	// pool then drops it), then on a new one the old password does not
	// open: PostgreSQL's log says so, and from then on the pool holds
	// no connection from before.
	const refusedLogin = `password authentication failed for user "clinkd"`
	for i := 0; ; i++ {
		if code, body := call(adminURL, "", newAdmin); code != http.StatusInternalServerError {
			t.Fatalf("admin API with the old database password = %d %s, want 500", code, body)
		}
		if b, _ := os.ReadFile(pg.LogFile()); strings.Contains(string(b), refusedLogin) {
			break
		}
		if i == 10 {
			t.Fatalf("PostgreSQL's log never says %q: the old password was not tried", refusedLogin)
		}
	}
	reload(func(c *daemon.Config) { c.Database.Password = newPassword })
	expect("new database password", []want{{newAdmin, notFound}}, nil)

	// The link secret: a reload leaves the link up; the next handshake
	// uses the new secret. A wrong one shows it: after a cut the server
	// refuses the handshake, until the right one is reloaded.
	right := cfg.Link.Secret
	reload(func(c *daemon.Config) { c.Link.Secret = "a valid secret the server does not know" })
	pingThrough(t, srv, d)
	failures := metric(t, d, `clinkd_link_failures_total{stage="handshake"}`)
	proxy.Cut()
	waitMetric(t, d, `clinkd_link_failures_total{stage="handshake"}`, failures+1, time.Minute)
	reload(func(c *daemon.Config) { c.Link.Secret = right })
	waitMetric(t, d, "clinkd_link_reconnects_total", 1, time.Minute)
	pingThrough(t, srv, d)
}
