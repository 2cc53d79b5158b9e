package keydir_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keylog"
)

func stateKeys(t testing.TB) (note.Signer, note.Verifier) {
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.lab.localhost/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	return s, v
}

// TestState: the state file round-trips, is written 0600 and replaced
// whole, and is refused without its header, with another key's
// signature or cut short.
func TestState(t *testing.T) {
	t.Parallel()
	s, v := stateKeys(t)
	_, other := stateKeys(t)
	path := filepath.Join(t.TempDir(), "state")
	for i, size := range []int64{3, 7} {
		cp := keylog.Checkpoint{Origin: s.Name(), Size: size, Hash: tlog.RecordHash([]byte{byte(i)})}
		msg, _ := keylog.SignCheckpoint(cp, s)
		if err := keydir.WriteState(path, msg); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		got, gotMsg, err := keydir.ParseState(b, v)
		if err != nil || got != cp || !bytes.Equal(gotMsg, msg) {
			t.Fatalf("ParseState(written) = %+v, %v; want %+v", got, err, cp)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
		}
		if _, _, err := keydir.ParseState(b, other); !errors.Is(err, keydir.ErrBadState) {
			t.Errorf("ParseState(another key) = %v", err)
		}
		if _, _, err := keydir.ParseState(b[:len(b)-3], v); !errors.Is(err, keydir.ErrBadState) {
			t.Errorf("ParseState(cut) = %v", err)
		}
		if _, _, err := keydir.ParseState(b[31:], v); !errors.Is(err, keydir.ErrBadState) {
			t.Errorf("ParseState(no header) = %v", err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".keydir-state-*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

// FuzzParseState: the state file parser never panics and accepts only a
// note the key signed.
func FuzzParseState(f *testing.F) {
	s, v := stateKeys(f)
	msg, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: s.Name(), Size: 5, Hash: tlog.RecordHash(nil)}, s)
	good := append([]byte("clinkme-keydir signer-state v1\n"), msg...)
	f.Add(good)
	f.Add([]byte("clinkme-keydir signer-state v1\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		cp, _, err := keydir.ParseState(in, v)
		if err == nil && (cp.Size != 5 || !bytes.HasPrefix(in, good[:len(good)-100])) {
			t.Fatalf("ParseState accepted %q as %+v", in, cp)
		}
	})
}
