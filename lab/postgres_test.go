package lab_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// checkCreateDrop proves that CreateDatabase returns a usable, empty,
// uniquely named database and that DropDatabase removes it even while a
// session is still connected.
func checkCreateDrop(t *testing.T, pg *lab.Postgres) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	u1, err := pg.CreateDatabase(ctx, "Lab Test/Create")
	if err != nil {
		t.Fatal(err)
	}
	u2, err := pg.CreateDatabase(ctx, "Lab Test/Create")
	if err != nil {
		t.Fatal(err)
	}
	if u1 == u2 {
		t.Fatalf("CreateDatabase twice = %s both times, want distinct databases", u1)
	}
	conn, err := pgx.Connect(ctx, u1)
	if err != nil {
		t.Fatalf("connect to %s: %v", u1, err)
	}
	defer conn.Close(context.Background())
	var name string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "lab_test_create_") {
		t.Errorf("current_database() = %q, want lab_test_create_<random>", name)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
		t.Fatal(err)
	}
	// conn stays open: DropDatabase must not hang on it.
	for _, u := range []string{u1, u2} {
		if err := pg.DropDatabase(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	admin, err := pgx.Connect(ctx, pg.AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database %s still exists after DropDatabase", name)
	}
	if err := pg.DropDatabase(ctx, strings.Replace(pg.AdminURL, "/postgres?", "/template1?", 1)); err == nil {
		t.Error("DropDatabase(template1) = nil error, want a refusal")
	}
}

// TestPostgresThrowaway proves the initdb mode: a private cluster starts,
// serves databases, and Close stops every postgres process.
func TestPostgresThrowaway(t *testing.T) {
	if testing.Short() {
		t.Skip("real server")
	}
	if os.Getenv(lab.DatabaseURLEnv) != "" {
		t.Setenv(lab.DatabaseURLEnv, "") // force the throwaway mode
	} else {
		t.Parallel()
	}
	pg, err := lab.StartPostgres(t.Context(), lab.PostgresOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	if pg.Dir == "" {
		t.Fatal("StartPostgres without an admin URL started no cluster")
	}
	checkCreateDrop(t, pg)
	pid := pg.PostmasterPID()
	if pid == 0 {
		t.Fatal("PostmasterPID() = 0 for a running cluster")
	}
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	assertNoProcesses(t, pid, pg.Dir)
}

// TestPostgresEnvURL proves the CLINK_TEST_DATABASE_URL mode: the lab uses
// the server the variable names, starts nothing and stops nothing. The
// server is labtest's shared one (itself a throwaway cluster unless the
// variable was set for the whole run).
func TestPostgresEnvURL(t *testing.T) {
	shared := labtest.Postgres(t)
	t.Setenv(lab.DatabaseURLEnv, shared.AdminURL)
	pg, err := lab.StartPostgres(t.Context(), lab.PostgresOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if pg.AdminURL != shared.AdminURL || pg.Dir != "" {
		t.Errorf("StartPostgres with %s set = %s in %q, want that server and no dir", lab.DatabaseURLEnv, pg.AdminURL, pg.Dir)
	}
	checkCreateDrop(t, pg)
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	// Close must not have stopped the server it did not start.
	conn, err := pgx.Connect(t.Context(), shared.AdminURL)
	if err != nil {
		t.Fatalf("after Close of the env-URL Postgres the server is gone: %v", err)
	}
	conn.Close(context.Background())

	t.Setenv(lab.DatabaseURLEnv, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	if _, err := lab.StartPostgres(t.Context(), lab.PostgresOptions{}); err == nil {
		t.Error("StartPostgres with an unreachable URL = nil error, want an error")
	}
}

// TestNewDatabase proves labtest's per-test database on the shared server.
func TestNewDatabase(t *testing.T) {
	t.Parallel()
	url := labtest.NewDatabase(t)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
}
