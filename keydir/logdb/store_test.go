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

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

// TestConcurrentPublish: 100 publishers race to bind 100 different keys
// to one JID while 50 others each bind a key of their own. Exactly one of
// the 100 wins, every other gets ErrConflict, and the log that results
// (51 entries) passes a full audit.
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
	if size, _ := l.Store.Size(ctx); size != 1+others {
		t.Errorf("Size = %d, want %d", size, 1+others)
	}
	found, _, err := l.Store.Lookup(ctx, [][32]byte{keylog.Label(alice)})
	if err != nil || found[keylog.Label(alice)].Fingerprint != winner.Fingerprint {
		t.Errorf("Lookup(alice) = %+v, %v; want the winner's key", found, err)
	}
	// Publishing the winning key again changes nothing.
	again, created, err := l.Store.Publish(ctx, alice, winner.Key, now.Add(time.Hour))
	if err != nil || created || again.Index != winner.Index || again.Time != winner.Time {
		t.Errorf("Publish(same key again) = %+v, created=%v, %v; want the first binding unchanged", again, created, err)
	}
	rep, err := auditLog(ctx, t, l)
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	if rep.Checkpoint.Size != 1+others || rep.Labels != 1+others || rep.Bindings != 1+others || len(rep.Findings) != 0 {
		t.Errorf("Audit = size %d, %d labels, %d bindings, findings %v; want %d, %d, %d, none",
			rep.Checkpoint.Size, rep.Labels, rep.Bindings, rep.Findings, 1+others, 1+others, 1+others)
	}
}

// TestEndAndRepublish: a reset appends an entry carrying the ended key's
// fingerprint and frees the JID; the audit flags the reset and, once a new
// key is published, the label's two bindings. Ending nothing fails, and
// so do a JID that is not a bare user JID and a kind that ends nothing.
// Every binding ended, and only those, makes a log line with its kind and
// index.
func TestEndAndRepublish(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	store, err := logdb.New(logdb.Config{DB: l.DB, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
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
	wantLogs := `level=INFO msg="keydir: binding ended" kind=reset index=1
level=INFO msg="keydir: binding ended" kind=delete index=3
`
	if logs.String() != wantLogs {
		t.Errorf("End logged\n%s\nwant\n%s", logs.String(), wantLogs)
	}
	hist, _, err := l.Store.History(ctx, keylog.Label(alice), 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := ""
	for _, e := range hist {
		kinds += string(e.Record.Kind) + " "
	}
	if kinds != "publish reset publish delete " || hist[1].Record.Fingerprint != b1.Fingerprint {
		t.Errorf("History = %s(reset of %x), want publish reset publish delete, reset of %x", kinds, hist[1].Record.Fingerprint, b1.Fingerprint)
	}
	evs, err := l.Store.Events(ctx, alice)
	if err != nil || len(evs) != 4 || evs[1].Reason != "lost phone" || evs[3].Kind != keylog.KindDelete {
		t.Errorf("Events = %+v, %v; want 4 with the reset's reason", evs, err)
	}
	rep, err := auditLog(ctx, t, l)
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	var what []string
	for _, f := range rep.Findings {
		if f.Label != keylog.Label(alice) {
			t.Errorf("finding for another label: %v", f)
		}
		what = append(what, f.What)
	}
	if strings.Join(what, ",") != "reset,rebound" || rep.Bindings != 0 || rep.Counts[keylog.KindDelete] != 1 {
		t.Errorf("Audit findings = %v, %d bindings, counts %v; want reset,rebound, 0 bindings, 1 delete", rep.Findings, rep.Bindings, rep.Counts)
	}
	mon, err := audit.Monitor(ctx, audit.Config{URL: l.URL, Verifier: l.Verifier}, "alice@lab.localhost", nil)
	if err != nil || len(mon.History) != 4 || mon.Current != nil {
		t.Errorf("Monitor = %+v, %v; want 4 entries and no key in force", mon, err)
	}
}

// TestNewWantsEverything: a Store is refused without a pool or without a
// logger; no nil stands for "log nowhere".
func TestNewWantsEverything(t *testing.T) {
	t.Parallel()
	// The pool never dials: it connects on first use.
	db, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	discard := slog.New(slog.DiscardHandler)
	for _, tt := range []struct {
		name string
		cfg  logdb.Config
		ok   bool
	}{
		{"pool and logger", logdb.Config{DB: db, Log: discard}, true},
		{"no pool", logdb.Config{Log: discard}, false},
		{"no logger", logdb.Config{DB: db}, false},
	} {
		s, err := logdb.New(tt.cfg)
		if (err == nil) != tt.ok || (s != nil) != tt.ok {
			t.Errorf("New(%s) = %v, %v; want ok=%v", tt.name, s, err, tt.ok)
		}
	}
}
