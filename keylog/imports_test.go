package keylog_test

import (
	"testing"

	"github.com/clinkme/clinkd/internal/depcheck"
)

// TestImports: keylog is the ground layer the server and the auditor
// share, so it links nothing of the server (no store, no XMPP component,
// no metrics): only the formats' own dependencies.
func TestImports(t *testing.T) {
	t.Parallel()
	depcheck.Only(t, "github.com/clinkme/clinkd/keylog",
		"golang.org/x/mod/sumdb/tlog",
		"golang.org/x/mod/sumdb/note",
		"mellium.im/xmpp/jid",
		"github.com/clinkme/clinkd/extensions/keydirxml",
	)
}
