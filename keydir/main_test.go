package keydir_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"log/slog"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"

	"github.com/clinkme/clinkd/internal/migrate"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true, Prosody: true, Ejabberd: true}))
}

// testLog is a directory over a fresh database of its own, its log served
// by an in-process HTTP server (the daemon mounts the same handler).
type testLog struct {
	db     *pgxpool.Pool
	store  *keydir.Store
	dir    *keydir.Directory
	url    string
	vkey   string
	verify note.Verifier
	state  string // an audit state file path, not yet written
	cfg    keydir.Config
}

// restart serves the log from a new Directory over the same database, as
// a restarted clinkd would: nothing cached.
func (l *testLog) restart(t *testing.T) {
	t.Helper()
	dir, err := keydir.New(l.cfg, l.store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dir.LogHandler())
	t.Cleanup(srv.Close)
	l.dir, l.url = dir, srv.URL
}

const testOrigin = "clink.lab.localhost/keydir"

func newTestLog(t *testing.T, cfg keydir.Config) *testLog {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db, err := pgxpool.New(ctx, labtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := migrate.Apply(ctx, db, slog.New(slog.DiscardHandler), keydir.Migrations()); err != nil {
		t.Fatal(err)
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, testOrigin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Signer, _ = note.NewSigner(skey)
	verifier, _ := note.NewVerifier(vkey)
	store := keydir.NewStore(db)
	dir, err := keydir.New(cfg, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dir.LogHandler())
	t.Cleanup(srv.Close)
	return &testLog{db: db, store: store, dir: dir, url: srv.URL, vkey: vkey, verify: verifier,
		state: filepath.Join(t.TempDir(), "audit.checkpoint"), cfg: cfg}
}

func (l *testLog) audit(ctx context.Context) (*keydir.AuditReport, error) {
	return keydir.Audit(ctx, keydir.AuditConfig{URL: l.url, Verifier: l.verify, StateFile: l.state})
}

// fakeRSAKey returns the SubjectPublicKeyInfo DER of an RSA public key
// with a random odd modulus of exactly bits bits. It is no usable key (no
// one knows its factors), but the directory never computes with keys: it
// checks their form and size. Generating real 3072-bit keys takes seconds
// each; these take microseconds.
func fakeRSAKey(t testing.TB, bits int) []byte {
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
