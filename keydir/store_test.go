package keydir_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keylog"
)

func mustJID(t testing.TB, s string) jid.JID {
	t.Helper()
	j, err := keylog.ParseBareJID(s)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestConcurrentPublish: 100 publishers race to bind 100 different keys
// to one JID while 50 others each bind a key of their own. Exactly one of
// the 100 wins, every other gets ErrConflict, and the log that results
// (51 entries) passes a full audit.
func TestConcurrentPublish(t *testing.T) {
	t.Parallel()
	l := newTestLog(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	alice := mustJID(t, "alice@lab.localhost")
	const racers, others = 100, 50
	keys := make([][]byte, racers+others)
	for i := range keys {
		keys[i] = fakeRSAKey(t, 3072)
	}
	var (
		wg                  sync.WaitGroup
		mu                  sync.Mutex
		won, lost, failures int
		winner              keydir.Binding
	)
	now := time.Unix(1795636800, 0)
	for i := range racers {
		wg.Go(func() {
			b, created, err := l.store.Publish(ctx, alice, keys[i], now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && created:
				won++
				winner = b
			case errors.Is(err, keydir.ErrConflict):
				lost++
			default:
				failures++
				t.Errorf("Publish(racer %d) = %v, created=%v", i, err, created)
			}
		})
	}
	for i := range others {
		wg.Go(func() {
			if _, _, err := l.store.Publish(ctx, mustJID(t, fmt.Sprintf("user%d@lab.localhost", i)), keys[racers+i], now); err != nil {
				t.Errorf("Publish(other %d) = %v", i, err)
			}
		})
	}
	wg.Wait()
	if won != 1 || lost != racers-1 || failures != 0 {
		t.Fatalf("racers: %d won, %d conflict, %d failed; want 1, %d, 0", won, lost, failures, racers-1)
	}
	if size, _ := l.store.Size(ctx); size != 1+others {
		t.Errorf("Size = %d, want %d", size, 1+others)
	}
	found, _, err := l.store.Lookup(ctx, [][32]byte{keylog.Label(alice)})
	if err != nil || found[keylog.Label(alice)].Fingerprint != winner.Fingerprint {
		t.Errorf("Lookup(alice) = %+v, %v; want the winner's key", found, err)
	}
	// Publishing the winning key again changes nothing.
	again, created, err := l.store.Publish(ctx, alice, winner.Key, now.Add(time.Hour))
	if err != nil || created || again.Index != winner.Index || again.Time != winner.Time {
		t.Errorf("Publish(same key again) = %+v, created=%v, %v; want the first binding unchanged", again, created, err)
	}
	rep, err := l.audit(ctx)
	if err != nil {
		t.Fatalf("Audit = %v", err)
	}
	if rep.Checkpoint.Size != 1+others || rep.Labels != 1+others || rep.Bindings != 1+others || len(rep.Findings) != 0 {
		t.Errorf("Audit = size %d, %d labels, %d bindings, findings %v; want %d, %d, %d, none",
			rep.Checkpoint.Size, rep.Labels, rep.Bindings, rep.Findings, 1+others, 1+others, 1+others)
	}
}

// TestAuditCatchesTampering: one row changed in PostgreSQL, in the
// entries or in the stored hashes, or the whole log rewritten
// consistently by someone with database access, and the next audit fails.
func TestAuditCatchesTampering(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tamper func(ctx context.Context, t *testing.T, l *testLog)
		want   string
	}{
		{"entry row", func(ctx context.Context, t *testing.T, l *testLog) {
			// Point entry 3 at another fingerprint: what a server that
			// swapped a key would have to do.
			mustExec(ctx, t, l, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 3`)
		}, "do not hash to the signed checkpoint"},
		{"leaf hash row", func(ctx context.Context, t *testing.T, l *testLog) {
			mustExec(ctx, t, l, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(0, 5))
		}, "hash tile tile/0/000.p/9 differs"},
		{"inner hash row", func(ctx context.Context, t *testing.T, l *testLog) {
			// Level 3 is in no tile (tiles hold levels 0, 8, 16, ...):
			// the change shows once the hash feeds a new root. The
			// running server then refuses to sign a tree that does not
			// extend the one it signed before.
			mustExec(ctx, t, l, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(3, 0))
			if _, _, err := l.store.Publish(ctx, mustJID(t, "late@lab.localhost"), fakeRSAKey(t, 3072), time.Unix(1795640000, 0)); err != nil {
				t.Fatal(err)
			}
		}, "checkpoint: 500 Internal Server Error"},
		{"entry deleted", func(ctx context.Context, t *testing.T, l *testLog) {
			mustExec(ctx, t, l, `DELETE FROM keydir_events WHERE idx = 8`)
			mustExec(ctx, t, l, `DELETE FROM keydir_bindings WHERE idx = 8`)
			mustExec(ctx, t, l, `DELETE FROM keydir_entries WHERE idx = 8`)
		}, "tile/entries/000.p/9: 500 Internal Server Error"},
		{"history rewritten", func(ctx context.Context, t *testing.T, l *testLog) {
			// Change entry 2, then recompute every hash so that the log
			// is self-consistent again: only the checkpoint the auditor
			// kept shows the rewrite.
			mustExec(ctx, t, l, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 2`)
			recs, err := l.store.ReadRecords(ctx, 0, 9)
			if err != nil {
				t.Fatal(err)
			}
			var mem keylog.Hashes
			for _, rec := range recs {
				mem.Append(rec)
			}
			for i, h := range mem.Stored() {
				mustExec(ctx, t, l, `UPDATE keydir_hashes SET hash = $2 WHERE idx = $1`, i, h[:])
			}
			l.restart(t)
		}, "history was rewritten"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := newTestLog(t, keydir.Config{})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for i := range 9 {
				if _, _, err := l.store.Publish(ctx, mustJID(t, fmt.Sprintf("u%d@lab.localhost", i)), fakeRSAKey(t, 3072), time.Unix(1795636800+int64(i), 0)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := l.audit(ctx); err != nil {
				t.Fatalf("Audit(before tampering) = %v", err)
			}
			tt.tamper(ctx, t, l)
			_, err := l.audit(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Audit(after tampering) = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func mustExec(ctx context.Context, t *testing.T, l *testLog, sql string, args ...any) {
	t.Helper()
	tag, err := l.db.Exec(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if tag.RowsAffected() != 1 {
		t.Fatalf("%s: %d rows changed, want 1", sql, tag.RowsAffected())
	}
}

// TestEndAndRepublish: a reset appends an entry carrying the ended key's
// fingerprint and frees the JID; the audit flags the reset and, once a new
// key is published, the label's two bindings. Ending nothing fails.
func TestEndAndRepublish(t *testing.T) {
	t.Parallel()
	l := newTestLog(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alice := mustJID(t, "alice@lab.localhost")
	k1, k2 := fakeRSAKey(t, 3072), fakeRSAKey(t, 3072)
	now := time.Unix(1795636800, 0)
	b1, _, err := l.store.Publish(ctx, alice, k1, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.store.Publish(ctx, alice, k2, now); !errors.Is(err, keydir.ErrConflict) {
		t.Fatalf("Publish(second key) = %v, want ErrConflict", err)
	}
	if _, err := l.dir.End(ctx, "Alice@lab.localhost", keylog.KindReset, "lost phone"); err != nil {
		t.Fatalf("End(reset) = %v", err)
	}
	if _, err := l.dir.End(ctx, "alice@lab.localhost", keylog.KindReset, "again"); !errors.Is(err, keydir.ErrNoBinding) {
		t.Fatalf("End(no binding) = %v, want ErrNoBinding", err)
	}
	if _, _, err := l.store.Publish(ctx, alice, k2, now); err != nil {
		t.Fatalf("Publish(after reset) = %v", err)
	}
	if _, err := l.dir.End(ctx, "alice@lab.localhost", keylog.KindDelete, "account deleted"); err != nil {
		t.Fatalf("End(delete) = %v", err)
	}
	hist, _, err := l.store.History(ctx, keylog.Label(alice), 100)
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
	evs, err := l.store.Events(ctx, alice)
	if err != nil || len(evs) != 4 || evs[1].Reason != "lost phone" || evs[3].Kind != keylog.KindDelete {
		t.Errorf("Events = %+v, %v; want 4 with the reset's reason", evs, err)
	}
	rep, err := l.audit(ctx)
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
	mon, err := keydir.Monitor(ctx, keydir.AuditConfig{URL: l.url, Verifier: l.verify}, "alice@lab.localhost", nil)
	if err != nil || len(mon.History) != 4 || mon.Current != nil {
		t.Errorf("Monitor = %+v, %v; want 4 entries and no key in force", mon, err)
	}
}

// TestAuditPolicyViolation: a server that appends a second publish for a
// label whose binding is still in force (breaking first-key-wins) is
// caught, even though its log is otherwise intact.
func TestAuditPolicyViolation(t *testing.T) {
	t.Parallel()
	l := newTestLog(t, keydir.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alice := mustJID(t, "alice@lab.localhost")
	if _, _, err := l.store.Publish(ctx, alice, fakeRSAKey(t, 3072), time.Unix(1795636800, 0)); err != nil {
		t.Fatal(err)
	}
	// The dishonest server: drop the binding row without a log entry,
	// then publish its own key.
	mustExec(ctx, t, l, `DELETE FROM keydir_bindings WHERE idx = 0`)
	if _, _, err := l.store.Publish(ctx, alice, fakeRSAKey(t, 3072), time.Unix(1795636900, 0)); err != nil {
		t.Fatal(err)
	}
	_, err := l.audit(ctx)
	if !errors.Is(err, keydir.ErrAuditFailed) || !strings.Contains(err.Error(), "second key") {
		t.Fatalf("Audit = %v, want a policy violation", err)
	}
}
