package logdb_test

import (
	"context"
	"log/slog"
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
// trip.
type queryCounter struct{ n atomic.Int64 }

func (c *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (*queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

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
	cfg, err := pgxpool.ParseConfig(l.DB.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = &count
	db, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler), VRF: l.VRF})
	if err != nil {
		t.Fatal(err)
	}
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
}
