package labdeploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/labdeploy"
)

// TestInitDirModes: the container lab's volume holds no secret or key that
// every user can read: secrets and keys are 0640 (the services' group
// reads them), certificates are public, PostgreSQL's key is its own.
func TestInitDirModes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := labdeploy.InitDir(dir, "lab.localhost", "clink.lab.localhost", "turn.lab.localhost"); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 8 {
		t.Fatalf("%d files in the lab volume", len(entries))
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o640)
		switch {
		case e.Name() == "postgres.key":
			want = 0o600
		case strings.HasSuffix(e.Name(), ".pem"):
			want = 0o644
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", filepath.Join(dir, e.Name()), got, want)
		}
	}
	// Idempotent: a second run keeps what exists.
	before, _ := os.ReadFile(filepath.Join(dir, "component.secret"))
	if err := labdeploy.InitDir(dir, "lab.localhost", "clink.lab.localhost", "turn.lab.localhost"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "component.secret")); string(after) != string(before) {
		t.Error("a second run replaced the component secret")
	}
}
