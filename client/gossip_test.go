package client

import (
	"bytes"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// TestGossipNote: a pinned checkpoint goes into envelopes as it is, or,
// when larger than an envelope takes, with the log's signature alone.
func TestGossipNote(t *testing.T) {
	t.Parallel()
	const origin = "clink.example.org/keydir"
	body := origin + "\n5\nAAAA\n\n"
	logSig := "— " + origin + " c2lnbmF0dXJl\n"
	big := body + logSig + strings.Repeat("— witness.example "+strings.Repeat("x", 100)+"\n", 30)
	for _, tt := range []struct {
		name, in, want string
	}{
		{"small", body + logSig, body + logSig},
		{"cosignatures dropped", big, body + logSig},
		{"empty", "", ""},
		{"large without the log's signature", body + strings.Repeat("— other "+strings.Repeat("y", 100)+"\n", 30), ""},
	} {
		if got := gossipNote([]byte(tt.in), origin); !bytes.Equal(got, []byte(tt.want)) || len(got) > envelopexml.MaxCheckpointSize {
			t.Errorf("gossipNote(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// FuzzGossipNote: whatever a pin holds, what goes into an envelope fits
// it and is nil or a prefix-preserving cut of the note.
func FuzzGossipNote(f *testing.F) {
	f.Add([]byte("clink.example.org/keydir\n5\nAAAA\n\n— clink.example.org/keydir c2ln\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := gossipNote(b, "clink.example.org/keydir")
		if len(got) > envelopexml.MaxCheckpointSize {
			t.Fatalf("gossipNote() = %d bytes", len(got))
		}
		if got != nil && !bytes.HasPrefix(b, got[:bytes.Index(got, []byte("\n\n"))+2]) && !bytes.Equal(got, b) {
			t.Fatalf("gossipNote() = %q, not a cut of the note", got)
		}
	})
}
