package logdb_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

// queryCounter counts the statements sent on a pool: each is one round
// trip. With slow set, a read of the size row alone is held that long
// after PostgreSQL answered it, before its caller gets the row: what it
// read grows old meanwhile.
type queryCounter struct{ n, slow atomic.Int64 }

type sqlKey struct{}

func (c *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return context.WithValue(ctx, sqlKey{}, d.SQL)
}

func (c *queryCounter) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if sql, _ := ctx.Value(sqlKey{}).(string); strings.HasSuffix(sql, "FROM keydir_tree") {
		time.Sleep(time.Duration(c.slow.Load()))
	}
}

// TestLookupRoundTrips: a lookup reads PostgreSQL once, the size row
// with what it has not kept (a record, a key, proof hashes), and then
// its inclusion proofs need no read at all; yet each lookup reads the
// size row, so that an append by another store over the same database
// (another clinkd) shows in the next answer, ended bindings included,
// at the cost of two more statements (the map rows changed, then the
// answer), and every inclusion proof checks against the tree of the
// answer's size as the database computes it.
func TestLookupRoundTrips(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var count queryCounter
	b := countedStore(ctx, t, l, &count)
	a := l.Store // the other clinkd
	users := keydirtest.PublishMany(ctx, t, a, 20, "lab.localhost")
	nobody := keydirtest.MustJID(t, "nobody@lab.localhost")

	// lookup looks js up at b and returns the statements it took, the
	// inclusion proofs made and checked against the database's tree
	// included.
	lookup := func(js ...jid.JID) (*logdb.Snapshot, int64) {
		t.Helper()
		before := count.n.Load()
		snap, err := b.Lookup(ctx, js)
		if err != nil {
			t.Fatalf("Lookup(%v) = %v", js, err)
		}
		root, err := keylog.TreeHash(snap.Size, l.Store.HashReader(ctx))
		if err != nil {
			t.Fatal(err)
		}
		prove := func(idx int64, rec []byte) {
			t.Helper()
			p, err := tlog.ProveRecord(snap.Size, idx, b.ProofHashReader(ctx))
			if err == nil {
				err = tlog.CheckRecord(p, snap.Size, root, idx, tlog.RecordHash(rec))
			}
			if err != nil {
				t.Fatalf("proof of leaf %d in %d: %v", idx, snap.Size, err)
			}
		}
		n := count.n.Load() - before
		prove(snap.Size-1, snap.Head)
		for _, e := range snap.Entries {
			if e.Value != nil {
				prove(e.Value.Entry, e.Record)
			}
		}
		return snap, n
	}
	statements := func(js ...jid.JID) int64 {
		t.Helper()
		before := count.n.Load()
		lookup(js...)
		return count.n.Load() - before
	}
	lookup(users[0]) // the map loaded
	for i, tt := range []struct {
		name string
		jids []jid.JID
	}{
		{"a JID seen before", []jid.JID{users[0]}},
		{"a JID not seen before", []jid.JID{users[1]}},
		{"a batch, partly seen", []jid.JID{users[0], users[2], users[3], nobody}},
		{"the same batch again", []jid.JID{users[0], users[2], users[3], nobody}},
	} {
		if n := statements(tt.jids...); n != 1 {
			t.Errorf("%d: %s: %d statements, want 1", i, tt.name, n)
		}
	}

	// Another clinkd appends: the next lookup at b shows it.
	alice := users[4]
	lookup(alice)
	if _, err := a.End(ctx, alice.String(), keylog.KindReset, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	if snap, _ := lookup(alice); snap.Entries[0].Value == nil || !snap.Entries[0].Value.Ended || snap.Entries[0].Key != nil {
		t.Fatalf("Lookup(alice) after a reset elsewhere = %+v, want ended", snap.Entries[0])
	}
	k := keydirtest.FakeRSAKey(t, 3072)
	if _, _, err := a.Publish(ctx, alice, k, time.Now()); err != nil {
		t.Fatal(err)
	}
	before := count.n.Load()
	snap, _ := lookup(alice)
	if n := count.n.Load() - before; n != 3 {
		t.Errorf("right after an append elsewhere: %d statements, want 3 (the size row, the map rows changed with it, the answer)", n)
	}
	if v := snap.Entries[0].Value; v == nil || v.Ended || v.Version != 3 || string(snap.Entries[0].Key) != string(k) {
		t.Fatalf("Lookup(alice) after a publish elsewhere = %+v, want her new key at version 3", snap.Entries[0])
	}
	if n := statements(alice); n != 1 {
		t.Errorf("a JID seen before, after the appends: %d statements, want 1", n)
	}
	// A JID whose proof had every hash kept at an older size needs others
	// now (the appends' subtrees): they come with the size row, not in a
	// statement more when its proof is made.
	if n := statements(users[0]); n != 1 {
		t.Errorf("a JID seen at an older size: %d statements, want 1", n)
	}
}

// countedStore is a second store over l's database whose statements
// count counts.
func countedStore(ctx context.Context, t *testing.T, l *keydirtest.Log, count *queryCounter) *logdb.Store {
	t.Helper()
	return storeWithLease(ctx, t, l, count, 0)
}

// storeWithLease is countedStore with a size lease of ttl (0: none),
// which it does not hold (HoldLease).
func storeWithLease(ctx context.Context, t *testing.T, l *keydirtest.Log, count *queryCounter, ttl time.Duration) *logdb.Store {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(l.DB.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = count
	db, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	s, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler), VRF: l.VRF, SizeLease: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestLookupsShareSizeReads: lookups that need nothing but the size row
// and arrive while it is being read share the next read, and yet each
// answer is at least at the size of every append, by another store, that
// ended before the lookup began.
func TestLookupsShareSizeReads(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var count queryCounter
	b := countedStore(ctx, t, l, &count)
	a := l.Store // the other clinkd
	users := keydirtest.PublishMany(ctx, t, a, 10, "lab.localhost")
	if _, err := b.Lookup(ctx, users); err != nil { // everything kept
		t.Fatal(err)
	}
	size, err := a.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Each read of the size row takes 20 ms more: lookups pile up behind
	// it.
	count.slow.Store(int64(20 * time.Millisecond))
	const n = 40
	before := count.n.Load()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			snap, err := b.Lookup(ctx, []jid.JID{users[i%len(users)]})
			if err != nil || snap.Size != size || snap.Entries[0].Key == nil {
				t.Errorf("Lookup(%s) = %+v, %v; want its key at size %d", users[i%len(users)], snap, err, size)
			}
		})
	}
	wg.Wait()
	if got := count.n.Load() - before; got > n/4 {
		t.Errorf("%d lookups at once took %d statements, want at most %d", n, got, n/4)
	}

	// Appends elsewhere while lookups run, each read of the size row
	// still held 20 ms: a lookup that joined a read begun before it would
	// miss the append that ended in between.
	lookupsSeeAppends(ctx, t, a, b, users[0], size)
}

// lookupsSeeAppends has a publish 10 keys while 4 goroutines look who up
// at b: a lookup that begins after an append returned must be at least
// at the size it made, and so must one made right after it, while the
// others are under way. size is the log's size to begin with.
func lookupsSeeAppends(ctx context.Context, t *testing.T, a, b *logdb.Store, who jid.JID, size int64) {
	t.Helper()
	var (
		wg       sync.WaitGroup
		appended atomic.Int64 // the size after the last append that returned
		stop     = make(chan struct{})
	)
	appended.Store(size)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				least := appended.Load()
				snap, err := b.Lookup(ctx, []jid.JID{who})
				if err != nil {
					t.Errorf("Lookup = %v", err)
					return
				}
				if snap.Size < least {
					t.Errorf("Lookup began after an append made the log %d long, answered at size %d", least, snap.Size)
					return
				}
			}
		})
	}
	for i := range 10 {
		start := time.Now()
		bind, _, err := a.Publish(ctx, keydirtest.MustJID(t, fmt.Sprintf("late%d@lab.localhost", i)), keydirtest.FakeRSAKey(t, 3072), time.Now())
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		appended.Store(bind.Value.Entry + 1)
		t.Logf("append %d took %v", i, time.Since(start))
		snap, err := b.Lookup(ctx, []jid.JID{who})
		if err != nil || snap.Size <= bind.Value.Entry {
			t.Errorf("Lookup right after an append elsewhere made the log %d long = size %d, %v", bind.Value.Entry+1, snap.Size, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
}

// TestLookupWhileKeptIsCleared: what a Store keeps (records, keys,
// hashes) may be cleared at any moment by another lookup (a full memo
// starts over) or by Forget; a lookup that found a record or key kept
// when it planned its statement still answers with it, rather than
// reporting the log corrupt because it is gone when the answer is built.
func TestLookupWhileKeptIsCleared(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	users := keydirtest.PublishMany(ctx, t, l.Store, 20, "lab.localhost")
	stop := make(chan struct{})
	var clearer sync.WaitGroup
	clearer.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				l.Store.Forget()
				time.Sleep(50 * time.Microsecond)
			}
		}
	})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 150 {
				if _, err := l.Store.Lookup(ctx, []jid.JID{users[(g*7+i)%len(users)]}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	clearer.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a lookup while what is kept is cleared: %v", err)
	}
}
