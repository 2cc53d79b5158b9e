package audit_test

import (
	"testing"

	"github.com/clinkme/clinkd/internal/depcheck"
)

// TestImports: an audit verifies the server, so it runs none of the
// server's code. Of this module it links keylog, the formats, and what
// keylog links; nothing of keydir, its store or the XMPP component.
func TestImports(t *testing.T) {
	t.Parallel()
	depcheck.Only(t, "github.com/clinkme/clinkd/keydir/audit",
		"github.com/clinkme/clinkd/keylog",
		"golang.org/x/mod/sumdb/tlog",
		"golang.org/x/mod/sumdb/note",
	)
}
