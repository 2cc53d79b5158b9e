package daemon_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestDatabaseOutage freezes clinkd's PostgreSQL (SIGSTOP of every
// process of a private cluster, as a database host that stops answering)
// under a running clinkd on each server: /readyz reports the database
// within seconds; requests that need it are answered with an error of
// type wait (try again), not cancel, and logged once per interval, not
// once each; pings, which need no database, are answered throughout; and
// once the database is back, so is everything. On main before the fix the
// errors told clients not to retry and every failed request logged a line.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			pg := labtest.NewPostgres(t)
			dbURL, err := pg.CreateDatabase(t.Context(), "outage")
			if err != nil {
				t.Fatal(err)
			}
			logger, logs := clinkdtest.CaptureLog()
			cfg := clinkdtest.Config(t, srv)
			cfg.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true, ConnectTimeout: time.Second}
			cfg.Link.HandlerTimeout = 3 * time.Second
			d := clinkdtest.StartConfig(t, cfg, logger)
			comp := d.Component().Domain()
			dev := clinkdtest.NewDevice(t, srv)
			own, _ := address.AtComponent(dev.JID().Bare(), comp)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			status := func(id string) *client.Stanza {
				t.Helper()
				iq := fmt.Sprintf(`<iq type='get' id='%s' to='%s'><status xmlns='urn:clinkme:receipts:0' since='2020-01-01T00:00:00Z'/></iq>`, id, own)
				if err := dev.SendRaw(ctx, xml.NewDecoder(strings.NewReader(iq))); err != nil {
					t.Fatal(err)
				}
				s, err := dev.Next(ctx, func(s *client.Stanza) bool { return s.ID == id })
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			if s := status("before"); s.Type != "result" {
				t.Fatalf("status query before the outage: %s", s.Raw)
			}

			if err := pg.Freeze(); err != nil {
				t.Fatal(err)
			}
			thawed := false
			thaw := func() {
				if !thawed {
					thawed = true
					pg.Thaw()
				}
			}
			t.Cleanup(thaw)
			readyDeadline := time.Now().Add(15 * time.Second)
			for {
				code, checks := ready(t, d)
				if code == http.StatusServiceUnavailable && checks["database"] != "ok" {
					break
				}
				if time.Now().After(readyDeadline) {
					t.Fatalf("/readyz with the database frozen = %d %v, want 503 naming the database", code, checks)
				}
				time.Sleep(200 * time.Millisecond)
			}
			const n = 6
			for i := range n {
				s := status(fmt.Sprintf("during-%d", i))
				var e stanza.Error
				if err := s.Decode(xml.Name{Space: "jabber:client", Local: "error"}, &e); err != nil || s.Type != "error" {
					t.Fatalf("status query during the outage: %s", s.Raw)
				}
				if e.Type != stanza.Wait || e.Condition != stanza.InternalServerError {
					t.Errorf("status query during the outage: %s %s, want internal-server-error of type wait", e.Type, e.Condition)
				}
				if err := dev.Ping(ctx, comp); err != nil {
					t.Fatalf("ping during the outage: %v", err)
				}
			}
			if lines := strings.Count(logs.String(), `msg="handler failed"`); lines >= n {
				t.Errorf("%d log lines for %d failed requests, want them bounded (one per interval)", lines, n)
			}

			thaw()
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				if code, _ := ready(t, d); code == http.StatusOK {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("/readyz did not come back after the database did")
				}
			}
			if s := status("after"); s.Type != "result" {
				t.Errorf("status query after the outage: %s", s.Raw)
			}
		})
	}
}

// ready returns /readyz's status and checks.
func ready(t *testing.T, d *daemon.Daemon) (int, map[string]string) {
	t.Helper()
	resp, err := http.Get("http://" + d.AdminAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var checks map[string]string
	json.NewDecoder(resp.Body).Decode(&checks)
	return resp.StatusCode, checks
}
