package audit_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keylog"
)

// auditor audits l again and again, as a cron job would, keeping one
// state file.
func auditor(t testing.TB, l *keydirtest.Log) func(context.Context) (*audit.Report, error) {
	state := filepath.Join(t.TempDir(), "audit.checkpoint")
	return func(ctx context.Context) (*audit.Report, error) {
		return audit.Run(ctx, audit.Config{URL: l.URL, Verifier: l.Verifier, StateFile: state})
	}
}

// TestAuditCatchesTampering: one row changed in PostgreSQL, in the
// entries or in the stored hashes, or the whole log rewritten
// consistently by someone with database access, and the next audit fails.
func TestAuditCatchesTampering(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tamper func(ctx context.Context, t *testing.T, l *keydirtest.Log)
		want   string
	}{
		{"entry row", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			// Point entry 3 at another fingerprint: what a server that
			// swapped a key would have to do.
			l.MustExec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 3`)
		}, "do not hash to the signed checkpoint"},
		{"leaf hash row", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			l.MustExec(ctx, t, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(0, 5))
		}, "hash tile tile/0/000.p/9 differs"},
		{"inner hash row", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			// Level 3 is in no tile (tiles hold levels 0, 8, 16, ...):
			// the change shows once the hash feeds a new root. The
			// running server then refuses to sign a tree that does not
			// extend the one it signed before.
			l.MustExec(ctx, t, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(3, 0))
			if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, "late@lab.localhost"), keydirtest.FakeRSAKey(t, 3072), time.Unix(1795640000, 0)); err != nil {
				t.Fatal(err)
			}
		}, "checkpoint: 500 Internal Server Error"},
		{"entry deleted", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			l.MustExec(ctx, t, `DELETE FROM keydir_events WHERE idx = 8`)
			l.MustExec(ctx, t, `DELETE FROM keydir_bindings WHERE idx = 8`)
			l.MustExec(ctx, t, `DELETE FROM keydir_entries WHERE idx = 8`)
		}, "tile/entries/000.p/9: 500 Internal Server Error"},
		{"history rewritten", func(ctx context.Context, t *testing.T, l *keydirtest.Log) {
			// Change entry 2, then recompute every hash so that the log
			// is self-consistent again: only the checkpoint the auditor
			// kept shows the rewrite.
			l.MustExec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 2`)
			recs, err := l.Store.ReadRecords(ctx, 0, 9)
			if err != nil {
				t.Fatal(err)
			}
			var mem keylog.Hashes
			for _, rec := range recs {
				mem.Append(rec)
			}
			for i, h := range mem.Stored() {
				l.MustExec(ctx, t, `UPDATE keydir_hashes SET hash = $2 WHERE idx = $1`, i, h[:])
			}
			l.Restart(t)
		}, "history was rewritten"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := keydirtest.New(t, keydir.Config{})
			run := auditor(t, l)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for i := range 9 {
				if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, fmt.Sprintf("u%d@lab.localhost", i)), keydirtest.FakeRSAKey(t, 3072), time.Unix(1795636800+int64(i), 0)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := run(ctx); err != nil {
				t.Fatalf("Audit(before tampering) = %v", err)
			}
			tt.tamper(ctx, t, l)
			_, err := run(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Audit(after tampering) = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestAuditPolicyViolation: a server that appends a second publish for a
// label whose binding is still in force (breaking first-key-wins) is
// caught, even though its log is otherwise intact.
func TestAuditPolicyViolation(t *testing.T) {
	t.Parallel()
	l := keydirtest.New(t, keydir.Config{})
	run := auditor(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alice := keydirtest.MustJID(t, "alice@lab.localhost")
	if _, _, err := l.Store.Publish(ctx, alice, keydirtest.FakeRSAKey(t, 3072), time.Unix(1795636800, 0)); err != nil {
		t.Fatal(err)
	}
	// The dishonest server: drop the binding row without a log entry,
	// then publish its own key.
	l.MustExec(ctx, t, `DELETE FROM keydir_bindings WHERE idx = 0`)
	if _, _, err := l.Store.Publish(ctx, alice, keydirtest.FakeRSAKey(t, 3072), time.Unix(1795636900, 0)); err != nil {
		t.Fatal(err)
	}
	_, err := run(ctx)
	if !errors.Is(err, audit.ErrFailed) || !strings.Contains(err.Error(), "second key") {
		t.Fatalf("Audit = %v, want a policy violation", err)
	}
}
