package labfile_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/clinkme/clinkd/client/labfile"
)

func TestWriteRead(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "lab.json")
	want := labfile.Info{
		Server: "prosody", Domain: "lab.localhost", C2S: "127.0.0.1:5222", Component: "clink.lab.localhost",
		VerifierKey: "clink.lab.localhost/keydir+01234567+AQ",
		TURN:        labfile.TURN{UDP: "127.0.0.1:3478", TCP: "127.0.0.1:3478", TLS: "127.0.0.1:5349"},
		Users:       []labfile.User{{JID: "alice@lab.localhost", Password: "p1"}, {JID: "bob@lab.localhost", Password: "p2"}},
	}
	if err := labfile.Write(path, want); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, %v; want 0600 (the file holds passwords)", fi.Mode().Perm(), err)
	}
	got, err := labfile.Read(path)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Read = %+v, %v; want %+v", got, err, want)
	}
	if !got.LoopbackOnly() {
		t.Error("LoopbackOnly = false for a loopback lab")
	}
	got.TURN.UDP = "192.0.2.1:3478"
	if got.LoopbackOnly() {
		t.Error("LoopbackOnly = true with coturn on 192.0.2.1")
	}
	for _, tt := range []struct {
		name, jid string
		ok        bool
	}{{"bob", "bob@lab.localhost", true}, {"bob@lab.localhost", "bob@lab.localhost", true}, {"bo", "", false}, {"carol", "", false}} {
		u, ok := got.User(tt.name)
		if ok != tt.ok || u.JID != tt.jid {
			t.Errorf("User(%q) = %q, %v; want %q, %v", tt.name, u.JID, ok, tt.jid, tt.ok)
		}
	}
	if _, err := labfile.Read(filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Error("Read of a missing file succeeded")
	}
}

// TestOldName: a lab.json written before the verifier key had its name
// (keylog_verifier) still gives it.
func TestOldName(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "lab.json")
	if err := os.WriteFile(path, []byte(`{"server":"prosody","keylog_verifier":"v+1+AQ"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := labfile.Read(path)
	if err != nil || got.VerifierKey != "v+1+AQ" || got.Server != "prosody" {
		t.Fatalf("Read(old lab.json) = %+v, %v; want the verifier key from keylog_verifier", got, err)
	}
}
