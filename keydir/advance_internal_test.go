package keydir

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
)

// TestAdvanceStateNeverGoesBack: two signers of one log writing the state
// file at once (a handoff's overlap), each with its own sizes, leave the
// largest size signed in it, whichever writes last.
func TestAdvanceStateNeverGoesBack(t *testing.T) {
	t.Parallel()
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.lab.localhost/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	path := filepath.Join(t.TempDir(), "state")
	sign := func(size int64) []byte {
		msg, err := keylog.SignCheckpoint(keylog.Checkpoint{Origin: s.Name(), Size: size, Hash: tlog.RecordHash([]byte{byte(size)})}, s)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	const last = 60
	var wg sync.WaitGroup
	for _, sizes := range [][]int64{{2, 4, 6}, {1, 3, 5}} { // two signers, interleaved
		wg.Go(func() {
			for base := int64(0); base < last; base += 6 {
				for _, d := range sizes {
					if err := advanceState(path, sign(base+d), base+d, v); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	// A signer that signed less, writing last, changes nothing.
	if err := advanceState(path, sign(7), 7, v); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	cp, _, err := ParseState(b, v)
	if err != nil || cp.Size != last {
		t.Fatalf("state after both signers = %+v, %v; want size %d", cp, err, last)
	}
}
