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
	"path/filepath"
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
	DB        *pgxpool.Pool
	Store     *logdb.Store
	Dir       *keydir.Directory
	URL       string // the log's base URL: URL/checkpoint, URL/tile/...
	Verifier  note.Verifier
	VKey      string // the verifier key, as devices, auditors and witnesses get it
	Signer    note.Signer
	VRF       *keylog.VRFSigner
	VRFKey    string // the VRF public key, as devices get it
	StateFile string // the signer's state file
	cfg       keydir.Config
}

// New makes a Log: a fresh database with the schema, a new signing key
// and VRF key (cfg.Signer, cfg.Verifier and cfg.StateFile are set), and
// a started Directory configured by cfg over a new v1 log (its genesis
// record is leaf 0). Its store logs nowhere.
func New(t testing.TB, cfg keydir.Config) *Log {
	t.Helper()
	l := NewUnstarted(t, cfg)
	l.Restart(t)
	return l
}

// NewUnstarted is New without the Directory: the database, the keys and
// the store, for a test that fills the log first (a v0 log to migrate).
func NewUnstarted(t testing.TB, cfg keydir.Config) *Log {
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
	cfg.Verifier = verifier
	cfg.StateFile = filepath.Join(t.TempDir(), "keydir.signer.state")
	seed := make([]byte, 32)
	rand.Read(seed)
	vrf, err := keylog.NewVRFSigner(Origin, seed)
	if err != nil {
		t.Fatal(err)
	}
	store, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler), VRF: vrf})
	if err != nil {
		t.Fatal(err)
	}
	return &Log{DB: db, Store: store, Verifier: verifier, VKey: vkey, Signer: cfg.Signer, VRF: vrf, VRFKey: vrf.Public().String(), StateFile: cfg.StateFile, cfg: cfg}
}

// Restart serves the log from a new Directory over the same database and
// state file, as a restarted clinkd would: nothing cached, the state
// checked again at start.
func (l *Log) Restart(t testing.TB) {
	t.Helper()
	store, err := logdb.New(logdb.Config{DB: l.DB, Log: slog.New(slog.DiscardHandler), VRF: l.VRF})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := keydir.New(l.cfg, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := dir.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dir.LogHandler())
	t.Cleanup(srv.Close)
	l.Store, l.Dir, l.URL = store, dir, srv.URL
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

// A V0Entry is one entry of a v0 log written by WriteV0Log.
type V0Entry struct {
	JID  string // bare JID
	Kind keylog.Kind
	Key  []byte // DER of the key published or ended
	Time int64
}

// WriteV0Log fills an empty, unmigrated database with a v0 log, as
// clinkd before key directory v1 wrote it: the entries, their hashes,
// their events, the bindings in force and the size. It returns the v0
// records' texts.
func WriteV0Log(ctx context.Context, t testing.TB, db *pgxpool.Pool, entries []V0Entry) [][]byte {
	t.Helper()
	var mem keylog.Hashes
	var texts [][]byte
	bound := map[string]int{}
	for i, e := range entries {
		j := MustJID(t, e.JID)
		r := keylog.Record{Label: keylog.Label(j), Kind: e.Kind, Fingerprint: keylog.Fingerprint(e.Key), Time: e.Time}
		text := r.Marshal()
		texts = append(texts, text)
		mem.Append(text)
		if _, err := db.Exec(ctx, `INSERT INTO keydir_entries (idx, label, record) VALUES ($1, $2, $3)`, i, r.Label[:], text); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `INSERT INTO keydir_events (idx, jid, kind, reason) VALUES ($1, $2, $3, '')`, i, j.String(), string(e.Kind)); err != nil {
			t.Fatal(err)
		}
		if e.Kind == keylog.KindPublish {
			bound[j.String()] = i
		} else {
			delete(bound, j.String())
		}
	}
	for i, h := range mem.Stored() {
		if _, err := db.Exec(ctx, `INSERT INTO keydir_hashes (idx, hash) VALUES ($1, $2)`, i, h[:]); err != nil {
			t.Fatal(err)
		}
	}
	for who, i := range bound {
		j := MustJID(t, who)
		l := keylog.Label(j)
		e := entries[i]
		fp := keylog.Fingerprint(e.Key)
		if _, err := db.Exec(ctx, `INSERT INTO keydir_bindings (label, jid, public_key, fingerprint, idx, time) VALUES ($1, $2, $3, $4, $5, $6)`,
			l[:], j.String(), e.Key, fp[:], i, e.Time); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(ctx, `UPDATE keydir_tree SET size = $1`, len(entries)); err != nil {
		t.Fatal(err)
	}
	return texts
}
