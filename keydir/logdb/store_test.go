package logdb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

// TestConcurrentPublish: 100 publishers race to bind 100 different keys
// to one JID while 50 others each bind a key of their own. Exactly one of
// the 100 wins, every other gets ErrConflict, and the log that results
// (genesis and 51 entries) passes a full audit, map roots included.
func TestConcurrentPublish(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	alice := keydirtest.MustJID(t, "alice@lab.localhost")
	const racers, others = 100, 50
	keys := make([][]byte, racers+others)
	for i := range keys {
		keys[i] = keydirtest.FakeRSAKey(t, 3072)
	}
	var (
		wg                  sync.WaitGroup
		mu                  sync.Mutex
		won, lost, failures int
		winner              logdb.Binding
	)
	now := time.Unix(1795636800, 0)
	for i := range racers {
		wg.Go(func() {
			b, created, err := l.Store.Publish(ctx, alice, keys[i], now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && created:
				won++
				winner = b
			case errors.Is(err, logdb.ErrConflict):
				lost++
			default:
				failures++
				t.Errorf("Publish(racer %d) = %v, created=%v", i, err, created)
			}
		})
	}
	for i := range others {
		wg.Go(func() {
			if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, fmt.Sprintf("user%d@lab.localhost", i)), keys[racers+i], now); err != nil {
				t.Errorf("Publish(other %d) = %v", i, err)
			}
		})
	}
	wg.Wait()
	if won != 1 || lost != racers-1 || failures != 0 {
		t.Fatalf("racers: %d won, %d conflict, %d failed; want 1, %d, 0", won, lost, failures, racers-1)
	}
	if size, _ := l.Store.Size(ctx); size != 2+others {
		t.Errorf("Size = %d, want %d (genesis and the entries)", size, 2+others)
	}
	snap, err := l.Store.Lookup(ctx, []jid.JID{alice})
	if err != nil || snap.Entries[0].Value == nil || snap.Entries[0].Value.Fingerprint != winner.Value.Fingerprint {
		t.Fatalf("Lookup(alice) = %+v, %v; want the winner's key", snap, err)
	}
	e := snap.Entries[0]
	if err := keylog.VerifyMap(snap.MapRoot, e.Index, e.Value, e.MapProof); err != nil || !bytes.Equal(e.Key, winner.Key) {
		t.Errorf("Lookup(alice): map proof %v, key equal %v", err, bytes.Equal(e.Key, winner.Key))
	}
	// Publishing the winning key again changes nothing.
	again, created, err := l.Store.Publish(ctx, alice, winner.Key, now.Add(time.Hour))
	if err != nil || created || again.Value != winner.Value {
		t.Errorf("Publish(same key again) = %+v, created=%v, %v; want the first binding unchanged", again, created, err)
	}
	rep, err := auditLog(ctx, t, l)
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	if rep.Checkpoint.Size != 2+others || rep.Labels != 1+others || rep.Bindings != 1+others || len(rep.Findings) != 0 || !rep.Migrated || rep.MapRoot != snap.MapRoot {
		t.Errorf("Audit = size %d, %d labels, %d bindings, findings %v, map %x; want %d, %d, %d, none, %x",
			rep.Checkpoint.Size, rep.Labels, rep.Bindings, rep.Findings, rep.MapRoot, 2+others, 1+others, 1+others, snap.MapRoot)
	}
}

// TestEndAndRepublish: a reset appends an entry carrying the ended key's
// fingerprint, leaves a tombstone in the map and frees the JID; the audit
// flags the reset and, once a new key is published, the JID's two
// bindings; the monitor, given the JID's VRF proof, finds its four
// versions complete. Ending nothing fails, and
// so do a JID that is not a bare user JID and a kind that ends nothing.
// Every binding ended, and only those, makes a log line with its kind and
// index.
func TestEndAndRepublish(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	store, err := logdb.New(logdb.Config{DB: l.DB, VRF: l.VRF, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))})
	if err != nil {
		t.Fatal(err)
	}
	alice := keydirtest.MustJID(t, "alice@lab.localhost")
	k1, k2 := keydirtest.FakeRSAKey(t, 3072), keydirtest.FakeRSAKey(t, 3072)
	now := time.Unix(1795636800, 0)
	b1, _, err := l.Store.Publish(ctx, alice, k1, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Store.Publish(ctx, alice, k2, now); !errors.Is(err, logdb.ErrConflict) {
		t.Fatalf("Publish(second key) = %v, want ErrConflict", err)
	}
	if _, err := store.End(ctx, "alice@lab.localhost/phone", keylog.KindReset, "a resource", now); !errors.Is(err, keylog.ErrBadJID) {
		t.Fatalf("End(full JID) = %v, want ErrBadJID", err)
	}
	if _, err := store.End(ctx, "alice@lab.localhost", keylog.KindPublish, "not an end", now); err == nil {
		t.Fatalf("End(kind publish) = nil, want an error")
	}
	if _, err := store.End(ctx, "Alice@lab.localhost", keylog.KindReset, "lost phone", now); err != nil {
		t.Fatalf("End(reset) = %v", err)
	}
	if _, err := store.End(ctx, "alice@lab.localhost", keylog.KindReset, "again", now); !errors.Is(err, logdb.ErrNoBinding) {
		t.Fatalf("End(no binding) = %v, want ErrNoBinding", err)
	}
	if _, _, err := l.Store.Publish(ctx, alice, k2, now); err != nil {
		t.Fatalf("Publish(after reset) = %v", err)
	}
	if _, err := store.End(ctx, "alice@lab.localhost", keylog.KindDelete, "account deleted", now); err != nil {
		t.Fatalf("End(delete) = %v", err)
	}
	wantLogs := `level=INFO msg="keydir: binding ended" kind=reset index=2
level=INFO msg="keydir: binding ended" kind=delete index=4
`
	if logs.String() != wantLogs {
		t.Errorf("End logged\n%s\nwant\n%s", logs.String(), wantLogs)
	}
	snap, err := l.Store.History(ctx, alice, 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := ""
	var resetFP [32]byte
	for i, h := range snap.History {
		r, err := keylog.ParseRecordV1(h.Record)
		if err != nil || r.Version != h.Version || h.Version != int64(i+1) {
			t.Fatalf("History[%d] = %+v, %v", i, r, err)
		}
		kinds += string(r.Kind) + " "
		if i == 1 {
			resetFP = r.Fingerprint
		}
	}
	if kinds != "publish reset publish delete " || resetFP != b1.Value.Fingerprint {
		t.Errorf("History = %s(reset of %x), want publish reset publish delete, reset of %x", kinds, resetFP, b1.Value.Fingerprint)
	}
	if v := snap.Entries[0].Value; v == nil || !v.Ended || v.Version != 4 {
		t.Errorf("History's entry = %+v, want ended at version 4", v)
	}
	evs, err := l.Store.Events(ctx, alice)
	if err != nil || len(evs) != 4 || evs[1].Reason != "lost phone" || evs[3].Kind != keylog.KindDelete {
		t.Errorf("Events = %+v, %v; want 4 with the reset's reason", evs, err)
	}
	rep, err := auditLog(ctx, t, l)
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	x, proof := l.Store.Index(alice)
	var what []string
	for _, f := range rep.Findings {
		if f.Label != x {
			t.Errorf("finding for another label: %v", f)
		}
		what = append(what, f.What)
	}
	if strings.Join(what, ",") != "reset,rebound" || rep.Bindings != 0 || rep.Counts[keylog.KindDelete] != 1 {
		t.Errorf("Audit findings = %v, %d bindings, counts %v; want reset,rebound, 0 bindings, 1 delete", rep.Findings, rep.Bindings, rep.Counts)
	}
	vk := l.VRF.Public()
	mon, err := audit.Monitor(ctx, audit.Config{URL: l.URL, Verifier: l.Verifier, VRFKey: &vk}, "alice@lab.localhost", proof, nil)
	if err != nil || len(mon.History) != 4 || mon.Current != nil {
		t.Errorf("Monitor = %+v, %v; want 4 entries and no key in force", mon, err)
	}
}

// TestNewWantsEverything: a Store is refused without a pool, a logger or
// a VRF key; no nil stands for "log nowhere".
func TestNewWantsEverything(t *testing.T) {
	t.Parallel()
	// The pool never dials: it connects on first use.
	db, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	discard := slog.New(slog.DiscardHandler)
	vrf, err := keylog.NewVRFSigner("clink.lab.localhost/keydir", make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cfg  logdb.Config
		ok   bool
	}{
		{"pool, logger and VRF key", logdb.Config{DB: db, Log: discard, VRF: vrf}, true},
		{"no pool", logdb.Config{Log: discard, VRF: vrf}, false},
		{"no logger", logdb.Config{DB: db, VRF: vrf}, false},
		{"no VRF key", logdb.Config{DB: db, Log: discard}, false},
	} {
		s, err := logdb.New(tt.cfg)
		if (err == nil) != tt.ok || (s != nil) != tt.ok {
			t.Errorf("New(%s) = %v, %v; want ok=%v", tt.name, s, err, tt.ok)
		}
	}
}

// TestTick: a tick is appended only when the last v1 record is older than
// the interval; it changes no value and names the same map root; a clock
// that went back does not make times go back; the audit accepts it all.
func TestTick(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now().Add(time.Hour) // after the genesis record's time
	if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, "alice@lab.localhost"), keydirtest.FakeRSAKey(t, 3072), t0); err != nil {
		t.Fatal(err)
	}
	before, _ := l.Store.Tree(ctx)
	if ok, err := l.Store.Tick(ctx, t0.Add(30*time.Minute), time.Hour); ok || err != nil {
		t.Fatalf("Tick(30 min after) = %v, %v; want nothing appended", ok, err)
	}
	if ok, err := l.Store.Tick(ctx, t0.Add(2*time.Hour), time.Hour); !ok || err != nil {
		t.Fatalf("Tick(2 h after) = %v, %v; want a tick", ok, err)
	}
	after, _ := l.Store.Tree(ctx)
	recs, err := l.Store.ReadRecords(ctx, after.Size-1, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := keylog.ParseRecordV1(recs[0])
	if err != nil || r.Kind != keylog.KindTick || r.Map != before.MapRoot || after.MapRoot != before.MapRoot || after.Size != before.Size+1 {
		t.Fatalf("tick record %+v, %v; tree %+v after %+v", r, err, after, before)
	}
	// The clock goes back a day: the next entry keeps the last time.
	b, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, "bob@lab.localhost"), keydirtest.FakeRSAKey(t, 3072), t0.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	recs, _ = l.Store.ReadRecords(ctx, b.Value.Entry, 1)
	if p, _ := keylog.ParseRecordV1(recs[0]); p.Time != r.Time {
		t.Errorf("publish after the clock went back has time %d, want %d", p.Time, r.Time)
	}
	if _, err := auditLog(ctx, t, l); err != nil {
		t.Errorf("Audit = %v", err)
	}
}
