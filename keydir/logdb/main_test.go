package logdb_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true}))
}

// auditLog runs a full audit of l's log as an auditor on its first run
// would (a state file of its own, not yet written).
func auditLog(ctx context.Context, t testing.TB, l *keydirtest.Log) (*audit.Report, error) {
	return audit.Run(ctx, audit.Config{URL: l.URL, Verifier: l.Verifier, StateFile: filepath.Join(t.TempDir(), "audit.checkpoint")})
}
