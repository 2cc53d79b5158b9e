package daemon_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestPostgresRunbook runs docs/operators.md's PostgreSQL block as the
// superuser, with fresh names, and then clinkd as that role alone: the
// migrations apply and clinkd serves with the key directory, ClinkID and
// the relay's receipts, so the runbook grants exactly enough.
func TestPostgresRunbook(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/operators.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- postgres-setup -->\\s*```sql\\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/operators.md has no <!-- postgres-setup --> SQL block")
	}
	b := make([]byte, 6)
	rand.Read(b)
	suffix := hex.EncodeToString(b)
	role, db, password := "clinkd_rb_"+suffix, "clinkd_rb_"+suffix, "pw-"+suffix
	sql := strings.NewReplacer("ROLE clinkd ", "ROLE "+role+" ", "DATABASE clinkd ", "DATABASE "+db+" ",
		"OWNER clinkd;", "OWNER "+role+";", "'a long random password'", "'"+password+"'").Replace(string(m[1]))
	admin := labtest.Postgres(t).AdminURL
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, stmt := range strings.Split(sql, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("runbook statement %q: %v", strings.TrimSpace(stmt), err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
		conn.Exec(ctx, "DROP ROLE IF EXISTS "+role)
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, password)
	u.Path = "/" + db

	srv := labtest.Server(t, lab.Prosody)
	keys := clinkdtest.NewKeyDirKeys(t)
	clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Database = daemon.DatabaseConfig{URL: u.String(), Migrate: true}
		keys.Configure(c)
		c.ClinkID.Enabled = true
	})
}
