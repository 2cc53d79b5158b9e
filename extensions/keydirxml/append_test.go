package keydirxml_test

import (
	"encoding/xml"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// TestAppendXMLMatchesMarshal: Lookup1.AppendXML writes what xml.Marshal
// writes, byte for byte, for answers with every kind of entry, empty
// fields and strings that need escaping.
func TestAppendXMLMatchesMarshal(t *testing.T) {
	vrf := strings.Repeat("A", 108)
	found := keydirxml.Entry1{JID: "alice@example.org", Status: keydirxml.StatusFound, VRF: vrf, Version: 3, Index: 17, Time: 1795636800,
		Fingerprint: strings.Repeat("ab", 32), Record: keydirxml.RecordV1, Root: "AAAA", Key: "MIIB", Map: "AQAA", Proof: "BBBB"}
	ended := keydirxml.Entry1{JID: "bob@example.org", Status: keydirxml.StatusEnded, VRF: vrf, Version: 2, Index: 5, Time: 7,
		Fingerprint: strings.Repeat("cd", 32), Kind: "reset", Record: keydirxml.RecordV0, Map: "AgAA", Proof: "CCCC"}
	none := keydirxml.Entry1{JID: "nobody@example.org", Status: keydirxml.StatusNone, VRF: vrf, Map: "AwAA", Version: 9, Key: "ignored"}
	odd := keydirxml.Entry1{JID: `a"b'c<d>&e` + "\t\n\r\x00\x7fé\xff", Status: "", Map: "", Index: -1}
	for i, l := range []keydirxml.Lookup1{
		{},
		{JIDs: []string{"alice@example.org", `x&y<z>"'`}},
		{Checkpoint: "clink.example.org/keydir\n3\nAAAA\n\n— clink.example.org/keydir sig\n", Head: &keydirxml.Head{Index: 2, Record: "cmVj", Proof: "AAAA"},
			Entries: []keydirxml.Entry1{found, ended, none}},
		{Head: &keydirxml.Head{}, Entries: []keydirxml.Entry1{odd, {}}},
		{Checkpoint: "\x01<&>", Head: &keydirxml.Head{Index: -5, Record: `"`, Proof: "\n"}, Entries: []keydirxml.Entry1{found}},
		{Known: 1048577, JIDs: []string{"alice@example.org"}},
		{Unchanged: 1048577},
		{Known: -3, Unchanged: 9, JIDs: []string{"a@b"}, Entries: []keydirxml.Entry1{none}},
	} {
		want, err := xml.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.AppendXML([]byte("prefix")); string(got) != "prefix"+string(want) {
			t.Errorf("%d: AppendXML =\n%s\nwant\n%s", i, got[len("prefix"):], want)
		}
		checkAnswerParts(t, l)
	}
}

// checkAnswerParts: an answer (without JIDs, as a server writes it) put
// together from its parts encoded apart is what AppendXML writes.
func checkAnswerParts(t *testing.T, l keydirxml.Lookup1) {
	t.Helper()
	// A full answer: no JIDs, no sizes.
	l.JIDs, l.Known, l.Unchanged = nil, 0, 0
	var entries [][]byte
	for i := range l.Entries {
		entries = append(entries, l.Entries[i].AppendXML(nil))
	}
	got := keydirxml.AppendLookup1Answer([]byte("prefix"), keydirxml.AppendAnswerHead(nil, l.Checkpoint, l.Head), entries...)
	if want := l.AppendXML([]byte("prefix")); string(got) != string(want) {
		t.Errorf("AppendLookup1Answer =\n%s\nwant AppendXML's\n%s", got, want)
	}
}

// TestAnswerPartsMatchAppendXML: checkAnswerParts fails when a part is
// not what AppendXML writes (here an entry left out).
func TestAnswerPartsMatchAppendXML(t *testing.T) {
	l := keydirxml.Lookup1{Checkpoint: "c\n", Head: &keydirxml.Head{Index: 1, Record: "cmVj", Proof: "AAAA"},
		Entries: []keydirxml.Entry1{{JID: "a@example.org", Status: keydirxml.StatusNone, Map: "AA"}, {JID: "b@example.org", Status: keydirxml.StatusFound, Key: "MIIB"}}}
	checkAnswerParts(t, l)
	head := keydirxml.AppendAnswerHead(nil, l.Checkpoint, l.Head)
	if got := keydirxml.AppendLookup1Answer(nil, head, l.Entries[0].AppendXML(nil)); string(got) == string(l.AppendXML(nil)) {
		t.Error("an answer without its second entry matches AppendXML's")
	}
}
