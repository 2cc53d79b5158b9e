package logdb_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

// leasedStore is a second store over l's database, whose statements count
// counts, holding a size lease of ttl until the test ends; it returns once
// the lease is held.
func leasedStore(ctx context.Context, t *testing.T, l *keydirtest.Log, count *queryCounter, ttl time.Duration) *logdb.Store {
	t.Helper()
	s := storeWithLease(ctx, t, l, count, ttl)
	hold, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.HoldLease(hold) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("HoldLease = %v", err)
		}
	})
	// The map is loaded by a first lookup; the lease is trusted once a
	// renewal finds the map at the size it read.
	if _, err := s.Lookup(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for !s.Leased() {
		select {
		case <-ctx.Done():
			t.Fatal("the size lease was never held")
		case <-time.After(10 * time.Millisecond):
		}
	}
	return s
}

// TestLeasedLookupsReadNothing: with its size lease held, a store answers
// a lookup of what it keeps without a statement, with the answer a store
// without a lease gives; its own appends show at once.
func TestLeasedLookupsReadNothing(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	users := keydirtest.PublishMany(ctx, t, l.Store, 5, "lab.localhost")
	var count queryCounter
	b := leasedStore(ctx, t, l, &count, time.Minute)
	if _, err := b.Lookup(ctx, users); err != nil { // records, keys and hashes kept
		t.Fatal(err)
	}
	before := count.n.Load()
	got, err := b.Lookup(ctx, users[:2])
	if err != nil {
		t.Fatal(err)
	}
	if n := count.n.Load() - before; n != 0 || !b.Leased() {
		t.Errorf("a lookup of JIDs kept, the lease held (%v): %d statements, want 0", b.Leased(), n)
	}
	want, err := l.Store.Lookup(ctx, users[:2])
	if err != nil {
		t.Fatal(err)
	}
	if got.Size != want.Size || got.MapRoot != want.MapRoot || string(got.Head) != string(want.Head) {
		t.Fatalf("leased answer at %d (%x), want %d (%x)", got.Size, got.MapRoot, want.Size, want.MapRoot)
	}
	for i := range got.Entries {
		if g, w := got.Entries[i], want.Entries[i]; *g.Value != *w.Value || string(g.Key) != string(w.Key) || string(g.Record) != string(w.Record) {
			t.Errorf("entry %d: leased %+v, want %+v", i, g, w)
		}
	}

	// Its own append: no wait for itself, and the next lookup shows it.
	k := keydirtest.FakeRSAKey(t, 3072)
	carol := keydirtest.MustJID(t, "carol@lab.localhost")
	bind, _, err := b.Publish(ctx, carol, k, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	snap, err := b.Lookup(ctx, []jid.JID{carol})
	if err != nil || snap.Size != bind.Value.Entry+1 || string(snap.Entries[0].Key) != string(k) {
		t.Fatalf("Lookup(carol) after her publish here = %+v, %v; want her key at size %d", snap, err, bind.Value.Entry+1)
	}
	if !b.Leased() {
		t.Error("the lease was given up for the store's own append")
	}
}

// TestLeasedLookupsSeeEveryAppend is TestLookupsShareSizeReads for a
// store that holds a size lease, here of a minute: every lookup that
// begins after another store's append returned is at least at its size,
// so that append waited for the lease to be given up (the notice) and the
// holder stopped trusting it first. An append that did not wait would
// show as a lookup at the old size, from memory.
func TestLeasedLookupsSeeEveryAppend(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := l.Store // the other clinkd, without a lease
	users := keydirtest.PublishMany(ctx, t, a, 10, "lab.localhost")
	var count queryCounter
	b := leasedStore(ctx, t, l, &count, time.Minute)
	if _, err := b.Lookup(ctx, users); err != nil {
		t.Fatal(err)
	}
	size, err := a.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lookupsSeeAppends(ctx, t, a, b, users[0], size)
}

// TestLeaseHoldsBackEveryWriter: a writer that knows nothing of leases
// (an older clinkd, an operator's UPDATE) gives no notice, yet its change
// to the size row does not commit while a lease runs: the database's
// trigger makes it wait at the gate. Here it corrupts the map root; the
// holder's next lookup must see that (ErrCorrupt), not answer from the
// map in memory as if nothing had happened.
func TestLeaseHoldsBackEveryWriter(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	users := keydirtest.PublishMany(ctx, t, l.Store, 3, "lab.localhost")
	var count queryCounter
	b := leasedStore(ctx, t, l, &count, time.Second)
	if _, err := b.Lookup(ctx, users); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := l.DB.Exec(ctx, `UPDATE keydir_tree SET map_root = '\x0000000000000000000000000000000000000000000000000000000000000000'`); err != nil {
		t.Fatal(err)
	}
	waited := time.Since(start)
	_, err := b.Lookup(ctx, users[:1])
	if !errors.Is(err, logdb.ErrCorrupt) {
		t.Fatalf("Lookup right after the size row changed elsewhere = %v, want ErrCorrupt (the root no longer matches)", err)
	}
	t.Logf("the UPDATE waited %v for the lease", waited)
}

// TestLeaseGateWantsReadCommitted: a change to the size row under
// REPEATABLE READ would not see a lease granted after its snapshot, so
// the gate refuses it.
func TestLeaseGateWantsReadCommitted(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := pgx.BeginTxFunc(ctx, l.DB, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE keydir_tree SET v1_time = v1_time`)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "READ COMMITTED") {
		t.Fatalf("UPDATE keydir_tree under REPEATABLE READ = %v, want refused", err)
	}
	// Under READ COMMITTED, with no lease, it passes at once.
	if _, err := l.DB.Exec(ctx, `UPDATE keydir_tree SET v1_time = v1_time`); err != nil {
		t.Fatal(err)
	}
}

// TestLeaseBounds: a lease runs 10 ms to a minute.
func TestLeaseBounds(t *testing.T) {
	t.Parallel()
	vrf, err := keylog.NewVRFSigner("clink.example.org/keydir", make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, ttl := range []time.Duration{-time.Second, time.Millisecond, 2 * time.Minute} {
		_, err := logdb.New(logdb.Config{DB: &pgxpool.Pool{}, Log: slog.New(slog.DiscardHandler), VRF: vrf, SizeLease: ttl})
		if err == nil || !strings.Contains(err.Error(), "size lease") {
			t.Errorf("SizeLease %v: %v, want refused", ttl, err)
		}
	}
}
