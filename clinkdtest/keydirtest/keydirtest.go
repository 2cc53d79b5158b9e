// Package keydirtest gives the key directory's tests a log of their own:
// a Directory over a fresh PostgreSQL database (from lab/labtest, so the
// test binary's TestMain must start PostgreSQL with labtest.Main), its log
// served over HTTP by the handler the daemon mounts. keydir, keydir/logdb
// and keydir/audit test through it.
package keydirtest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/big"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/internal/migrate"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// Origin is the origin line of every test log.
const Origin = "clink.lab.localhost/keydir"

// A Log is a directory over a database of its own, its log served by an
// in-process HTTP server.
type Log struct {
	DB       *pgxpool.Pool
	Store    *logdb.Store
	Dir      *keydir.Directory
	URL      string // the log's base URL: URL/checkpoint, URL/tile/...
	Verifier note.Verifier
	cfg      keydir.Config
}

// New makes a Log: a fresh database with the schema, a new signing key
// (cfg.Signer is set to it) and a Directory configured by cfg. Its store
// logs nowhere.
func New(t testing.TB, cfg keydir.Config) *Log {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db, err := pgxpool.New(ctx, labtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := migrate.Apply(ctx, db, slog.New(slog.DiscardHandler), logdb.Migrations()); err != nil {
		t.Fatal(err)
	}
	if cfg.LocalDomain == "" {
		cfg.LocalDomain = "lab.localhost"
	}
	if cfg.Accounts == nil {
		cfg.Accounts = keydir.ServerAccounts{}
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, Origin)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Signer, err = note.NewSigner(skey); err != nil {
		t.Fatal(err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	store, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	l := &Log{DB: db, Store: store, Verifier: verifier, cfg: cfg}
	l.Restart(t)
	return l
}

// Restart serves the log from a new Directory over the same database, as
// a restarted clinkd would: nothing cached.
func (l *Log) Restart(t testing.TB) {
	t.Helper()
	dir, err := keydir.New(l.cfg, l.Store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dir.LogHandler())
	t.Cleanup(srv.Close)
	l.Dir, l.URL = dir, srv.URL
}

// MustExec runs one SQL statement on the log's database (a test playing
// someone with database access) and fails t unless it changed exactly
// one row.
func (l *Log) MustExec(ctx context.Context, t testing.TB, sql string, args ...any) {
	t.Helper()
	tag, err := l.DB.Exec(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if tag.RowsAffected() != 1 {
		t.Fatalf("%s: %d rows changed, want 1", sql, tag.RowsAffected())
	}
}

// FakeRSAKey returns the SubjectPublicKeyInfo DER of an RSA public key
// with a random odd modulus of exactly bits bits. It is no usable key (no
// one knows its factors), but the directory never computes with keys: it
// checks their form and size. Generating real 3072-bit keys takes seconds
// each; these take microseconds.
func FakeRSAKey(t testing.TB, bits int) []byte {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits-1)))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, bits-1, 1)
	n.SetBit(n, 0, 1)
	der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// MustJID parses s with keylog.ParseBareJID, failing t if it is not a
// bare user JID.
func MustJID(t testing.TB, s string) jid.JID {
	t.Helper()
	j, err := keylog.ParseBareJID(s)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// PublishMany binds n fake users' keys (bench0@domain, bench1@domain,
// ...) straight through the store, four at a time, and returns the
// users' JIDs.
func PublishMany(ctx context.Context, t testing.TB, store *logdb.Store, n int, domain string) []jid.JID {
	t.Helper()
	users := make([]jid.JID, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 4 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				users[i] = MustJID(t, fmt.Sprintf("bench%d@%s", i, domain))
				if _, _, err := store.Publish(ctx, users[i], FakeRSAKey(t, 3072), time.Now()); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return users
}
