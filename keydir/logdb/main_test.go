package logdb_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/keydirtest"
	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true}))
}

// audit runs a full audit of l's log as an auditor on its first run
// would (a state file of its own, not yet written).
func audit(ctx context.Context, t testing.TB, l *keydirtest.Log) (*keydir.AuditReport, error) {
	return keydir.Audit(ctx, keydir.AuditConfig{URL: l.URL, Verifier: l.Verifier, StateFile: filepath.Join(t.TempDir(), "audit.checkpoint")})
}
