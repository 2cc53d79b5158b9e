package client

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/keystore"
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
	b := repoFile(t, "docs/protocol.md")
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

// TestEnvelopeSecurityNumbers: the numbers docs/envelope.md, section 9,
// gives for the reference device are the code's.
func TestEnvelopeSecurityNumbers(t *testing.T) {
	t.Parallel()
	b := repoFile(t, "docs/envelope.md")
	doc := strings.Join(strings.Fields(string(b)), " ")
	start, end := strings.Index(doc, "## 9. Security considerations"), strings.Index(doc, "## 10. Test vectors")
	if start < 0 || end < start {
		t.Fatal("docs/envelope.md has no section 9 before section 10")
	}
	sec := doc[start:end]
	n := func(v int) string { // with thousands separators
		s := strconv.Itoa(v)
		for i := len(s) - 3; i > 0; i -= 3 {
			s = s[:i] + "," + s[i:]
		}
		return s
	}
	for _, want := range []string{
		fmt.Sprintf("It allows **%d minutes** of skew", int(ClockSkew.Minutes())),
		fmt.Sprintf("more than **%d days** and %d minutes behind", int(ReplayWindow.Hours()/24), int(ClockSkew.Minutes())),
		fmt.Sprintf("at most %s entries per author and %s in all", n(replayMaxPerSender), n(replayMaxEntries)),
		fmt.Sprintf("a cache of verified answers (%s JIDs)", n(keyCacheSize)),
		fmt.Sprintf("for at most %d minutes after the lookup that verified it (\"no key\" for %d minute)", int(keyCacheTTL.Minutes()), int(keyCacheMissTTL.Minutes())),
		fmt.Sprintf("at most once every %d seconds per author", int(keyRefreshInterval.Seconds())),
		fmt.Sprintf("one of %d tokens, one back every %d seconds", failBurst, int(failRefill.Seconds())),
		fmt.Sprintf("does not answer within %d seconds", int(lookupTimeout.Seconds())),
		fmt.Sprintf("tries again after %d seconds, doubling up to a minute, for up to %d minutes", int(parkFirst.Seconds()), int(parkGiveUp.Minutes())),
		fmt.Sprintf("At most %d envelopes per peer and %s in all wait", parkPerPeer, n(parkMax)),
		fmt.Sprintf("has not had %d stored lately (one more every %d minutes)", shareBurst, int(shareRefill.Minutes())),
		fmt.Sprintf("keeps at most %d keys per contact", keystore.MaxKeysPerContact),
		fmt.Sprintf("at most %s stanzas (%d MiB)", n(DefaultMaxInbox), DefaultMaxInboxBytes>>20),
	} {
		if !strings.Contains(sec, want) {
			t.Errorf("docs/envelope.md, section 9, does not say %q", want)
		}
	}
	if parkMaxWait != time.Minute {
		t.Errorf("parkMaxWait = %v; the document says a minute", parkMaxWait)
	}
}

// TestProtocolsIndexed: every protocol the SDK says it speaks is a row of
// docs/protocol.md's index that names that version.
func TestProtocolsIndexed(t *testing.T) {
	t.Parallel()
	doc := string(repoFile(t, "docs/protocol.md"))
	start, end := strings.Index(doc, "\n## Index\n"), strings.Index(doc, "\n## Versioning\n")
	if start < 0 || end < start {
		t.Fatal("docs/protocol.md has no Index section before Versioning")
	}
	for _, p := range Protocols() {
		found := false
		for _, row := range strings.Split(doc[start:end], "\n") {
			if strings.HasPrefix(row, "| "+p.Name+" |") && strings.Contains(row, p.Version) {
				found = true
			}
		}
		if !found {
			t.Errorf("docs/protocol.md's index has no row %q naming %q", p.Name, p.Version)
		}
	}
}
