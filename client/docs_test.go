package client

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/extensions/clinkidxml"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/extdisco"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptstate"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
)

// TestProtocolIndex: docs/protocol.md indexes every protocol a device
// speaks with clinkd, by the namespace the code uses, and every file it
// points to exists.
func TestProtocolIndex(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start, end := strings.Index(doc, "\n## Index\n"), strings.Index(doc, "\n## Versioning\n")
	if start < 0 || end < start {
		t.Fatal("docs/protocol.md has no Index section before Versioning")
	}
	index := doc[start:end]
	for _, ns := range []string{keydirxml.NS, envelopexml.NS, expiryxml.NS, receiptsxml.NS, markers.NS, receiptstate.NS, clinkidxml.NS, extdisco.NS} {
		if !strings.Contains(index, "`"+ns+"`") {
			t.Errorf("the index of docs/protocol.md does not name %s", ns)
		}
	}
	files := regexp.MustCompile(`docs/[a-z]+\.md`).FindAllString(index, -1)
	if len(files) < 7 {
		t.Errorf("the index names %d spec files, want at least 7", len(files))
	}
	for _, f := range files {
		if _, err := os.Stat("../" + f); err != nil {
			t.Errorf("the index of docs/protocol.md names %s: %v", f, err)
		}
	}
}
