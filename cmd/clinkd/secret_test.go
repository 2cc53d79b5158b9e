package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/daemon"
)

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}\n$`)

// TestSecret proves `clinkd secret` prints a fresh 256-bit secret that
// clinkd accepts, writes it to a new 0600 file without printing it, and
// never overwrites an existing file.
func TestSecret(t *testing.T) {
	t.Parallel()
	var seen []string
	for range 2 {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"secret"}, &stdout, &stderr); code != 0 {
			t.Fatalf("clinkd secret = %d, stderr %q", code, stderr.String())
		}
		if !hex64.MatchString(stdout.String()) {
			t.Fatalf("clinkd secret printed %q, want 64 hex digits and a newline", stdout.String())
		}
		s := strings.TrimSpace(stdout.String())
		if err := daemon.CheckLinkSecret(s); err != nil {
			t.Errorf("CheckLinkSecret(generated) = %v", err)
		}
		seen = append(seen, s)
	}
	if seen[0] == seen[1] {
		t.Error("two runs printed the same secret")
	}

	path := filepath.Join(t.TempDir(), "component.secret")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"secret", "--out", path}, &stdout, &stderr); code != 0 {
		t.Fatalf("clinkd secret --out = %d, stderr %q", code, stderr.String())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !hex64.Match(b) {
		t.Errorf("the file holds %q, want 64 hex digits and a newline", b)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the file's mode = %v, %v; want 0600", fi.Mode(), err)
	}
	secret := strings.TrimSpace(string(b))
	// `clinkd secret` makes the TURN secret, the database password and
	// the tokens too: the note points to where each one's other side is
	// named, not to the component config alone.
	if note := stderr.String(); !strings.Contains(note, path) || !strings.Contains(note, `"Rotate a secret"`) || strings.Contains(note, "component config") {
		t.Errorf("clinkd secret --out said %q; want the file and a pointer to \"Rotate a secret\"", note)
	}
	if stdout.Len() != 0 || strings.Contains(stderr.String(), secret) {
		t.Errorf("clinkd secret --out printed the secret: stdout %q, stderr %q", stdout.String(), stderr.String())
	}
	cfg, err := daemon.LoadConfig("", []string{"CLINKD_LINK_SECRET_FILE=" + path, "CLINKD_LINK_ADDR=127.0.0.1:5347", "CLINKD_LINK_DOMAIN=clink.example.org"})
	if err != nil || cfg.Check() != nil {
		t.Errorf("a config with the written file: LoadConfig = %v, Check = %v; want both nil", err, cfg.Check())
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"secret", "--out", path}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "never overwrites") {
		t.Errorf("clinkd secret --out EXISTING = %d, stderr %q; want 1 and a refusal", code, stderr.String())
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, b) {
		t.Error("the existing secret file was changed")
	}
	if code := run([]string{"secret", "extra"}, &stdout, &stderr); code != 2 {
		t.Errorf("clinkd secret extra = %d, want 2", code)
	}
}
