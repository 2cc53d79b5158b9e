package clinkid_test

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/internal/migrate"
	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Fuzzing a target that needs no server (FuzzExtauth,
	// FuzzNormalizeName) starts none: every fuzz worker is a process that
	// runs TestMain, and the engine restarts workers.
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		if ok, _ := regexp.MatchString(f.Value.String(), "FuzzHTTP"); !ok {
			os.Exit(m.Run())
		}
	}
	code := labtest.Main(m, labtest.Need{Postgres: true})
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// testDomain is the accounts' domain in tests that need no XMPP server.
const testDomain = "lab.localhost"

// fastParams make argon2id cheap for tests that are not about its cost.
var fastParams = clinkid.Params{Memory: 256, Iterations: 1, Parallelism: 1}

// newDB makes a fresh database with the clinkid schema.
func newDB(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := labtest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := migrate.Apply(ctx, db, slog.New(slog.DiscardHandler), clinkid.Migrations()); err != nil {
		t.Fatal(err)
	}
	return db
}

// newService returns a service on a fresh database with fast argon2id and
// generous rate limits; tune adjusts the config first.
func newService(t testing.TB, tune func(*clinkid.Config)) (*clinkid.Service, *pgxpool.Pool) {
	t.Helper()
	db := newDB(t)
	return newServiceOn(t, db, tune), db
}

func newServiceOn(t testing.TB, db *pgxpool.Pool, tune func(*clinkid.Config)) *clinkid.Service {
	t.Helper()
	cfg := clinkid.Config{
		Domain:         testDomain,
		Params:         fastParams,
		LoginPerMinute: 1e6,
		LoginBurst:     1e6,
		// Generous network and global budgets too: the tests that are
		// about them say so.
		LoginNetworkPerMinute:   1e6,
		LoginNetworkBurst:       1e6,
		RegisterNetworkPerHour:  1e6,
		RegisterNetworkBurst:    1e6,
		GlobalFailuresPerMinute: 1e6,
		RegisterPerHour:         1e6,
		RegisterBurst:           1e6,
		// Registration is closed by default; most tests register over
		// HTTPS.
		Registration: clinkid.RegistrationOpen,
		Sessions:     clinkid.PulledOnly{},
	}
	if tune != nil {
		tune(&cfg)
	}
	svc, err := clinkid.New(db, cfg, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	// A fuzz target must not log through f, which outlives its inputs.
	if _, isF := t.(*testing.F); isF || !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
