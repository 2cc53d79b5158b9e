package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// clinkd runs the command in-process as main would and returns its exit
// code and output.
func clinkd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestKeysCommands runs clinkd keys genkey, reset, audit and monitor as an
// operator would, against a real PostgreSQL and the log served by the same
// handler the daemon mounts, and checks exit codes and output.
func TestKeysCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// genkey
	keyFile := filepath.Join(dir, "signer.key")
	code, vkey, stderr := clinkd(t, "keys", "genkey", "--name", "clink.lab.localhost/keydir", "--out", keyFile)
	if code != 0 {
		t.Fatalf("keys genkey = %d, %s", code, stderr)
	}
	vkey = strings.TrimSpace(vkey)
	if _, err := keylog.ParseVerifier(vkey); err != nil || !strings.HasPrefix(vkey, "clink.lab.localhost/keydir+") {
		t.Fatalf("keys genkey printed %q (%v), want a verifier key", vkey, err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("signer key file: %v, mode %v; want 0600", err, fi.Mode())
	}
	if code, _, stderr := clinkd(t, "keys", "genkey", "--name", "x", "--out", keyFile); code != 1 || !strings.HasPrefix(stderr, "clinkd: error: ") || !strings.Contains(stderr, "exists") {
		t.Errorf("keys genkey over an existing file = %d, %q; want 1 and an error", code, stderr)
	}
	if code, _, stderr := clinkd(t, "keys", "genkey", "--name", "x"); code != 2 || !strings.Contains(stderr, "hint:") {
		t.Errorf("keys genkey without --out = %d, %q; want 2 and a hint", code, stderr)
	}

	// A database with the schema, two keys published, the log served.
	dbURL := labtest.NewDatabase(t)
	cfgFile := filepath.Join(dir, "clinkd.yaml")
	if err := os.WriteFile(cfgFile, []byte("database:\n  url: "+dbURL+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	migrations := 0
	for _, set := range daemon.MigrationSets() {
		files, _ := fs.Glob(set.FS, "*.sql")
		migrations += len(files)
	}
	if code, out, stderr := clinkd(t, "migrate", "--config", cfgFile); code != 0 || !strings.Contains(out, fmt.Sprintf("%d migrations applied", migrations)) {
		t.Fatalf("migrate = %d, %q, %q", code, out, stderr)
	}
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	alice, _ := keylog.ParseBareJID("alice@lab.localhost")
	bob, _ := keylog.ParseBareJID("bob@lab.localhost")
	if _, _, err := store.Publish(ctx, alice, keydirtest.FakeRSAKey(t, 3072), time.Now()); err != nil {
		t.Fatal(err)
	}
	bobKey := keydirtest.FakeRSAKey(t, 3072)
	if _, _, err := store.Publish(ctx, bob, bobKey, time.Now()); err != nil {
		t.Fatal(err)
	}
	signer, err := keylog.LoadSigner(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	d, err := keydir.New(keydir.Config{Signer: signer, LocalDomain: "lab.localhost", Accounts: keydir.ServerAccounts{}}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.LogHandler())
	defer srv.Close()
	state := filepath.Join(dir, "state", "audit.checkpoint")
	audit := []string{"keys", "audit", "--url", srv.URL, "--key", vkey, "--state", state}

	code, out, stderr := clinkd(t, audit...)
	if code != 0 || !strings.Contains(out, "2 entries") || !strings.Contains(out, "verified:") || !strings.Contains(out, "0 findings") {
		t.Fatalf("keys audit = %d\n%s%s", code, out, stderr)
	}

	// reset
	if code, _, stderr := clinkd(t, "keys", "reset", "alice@lab.localhost", "--config", cfgFile); code != 2 || !strings.Contains(stderr, "--reason is required") {
		t.Errorf("keys reset without --reason = %d, %q; want 2", code, stderr)
	}
	code, out, stderr = clinkd(t, "keys", "reset", "Alice@lab.localhost", "--reason", "lost her phone", "--config", cfgFile)
	if code != 0 || !strings.Contains(out, "reset alice@lab.localhost: log entry 2 appended") {
		t.Fatalf("keys reset = %d, %q, %q", code, out, stderr)
	}
	// The reset is logged as every end of a binding is, without the JID.
	if !strings.Contains(stderr, `msg="keydir: binding ended" part=keydir kind=reset index=2`) || strings.Contains(stderr, "alice") {
		t.Errorf("keys reset logged %q, want the binding ended line without the JID", stderr)
	}
	if code, _, stderr := clinkd(t, "keys", "reset", "alice@lab.localhost", "--reason", "again", "--config", cfgFile); code != 1 || stderr != "clinkd: error: alice@lab.localhost has no key bound: nothing to reset\n" {
		t.Errorf("keys reset (nothing bound) = %d, %q", code, stderr)
	}

	// The audit flags the reset and checks the log grew from the 2
	// entries it kept.
	label := keylog.Label(alice)
	code, out, stderr = clinkd(t, audit...)
	if code != 0 || !strings.Contains(out, "previous checkpoint: 2 entries") || !strings.Contains(out, "finding: reset label "+hex.EncodeToString(label[:])) {
		t.Fatalf("keys audit after reset = %d\n%s%s", code, out, stderr)
	}

	// monitor
	code, out, stderr = clinkd(t, "keys", "monitor", "alice@lab.localhost", "--url", srv.URL, "--key", vkey, "--state", filepath.Join(dir, "mon"))
	if code != 0 || !strings.Contains(out, "2 log entries") || !strings.Contains(out, "reset") || !strings.Contains(out, "no key in force") {
		t.Errorf("keys monitor alice = %d\n%s%s", code, out, stderr)
	}
	bobFP := keylog.Fingerprint(bobKey)
	code, out, stderr = clinkd(t, "keys", "monitor", "bob@lab.localhost", "--url", srv.URL, "--key", vkey, "--state", filepath.Join(dir, "mon"), "--fingerprint", hex.EncodeToString(bobFP[:]))
	if code != 0 || !strings.Contains(out, "key in force: "+hex.EncodeToString(bobFP[:])) {
		t.Errorf("keys monitor bob --fingerprint (his) = %d\n%s%s", code, out, stderr)
	}
	code, _, stderr = clinkd(t, "keys", "monitor", "bob@lab.localhost", "--url", srv.URL, "--key", vkey, "--state", filepath.Join(dir, "mon"), "--fingerprint", strings.Repeat("ab", 32))
	if code != 1 || !strings.Contains(stderr, "is not yours") {
		t.Errorf("keys monitor bob --fingerprint (another) = %d, %q; want 1", code, stderr)
	}

	// A wrong verifier key, then a tampered row: both fail the audit.
	other := filepath.Join(dir, "other.key")
	_, otherV, _ := clinkd(t, "keys", "genkey", "--name", "clink.lab.localhost/keydir", "--out", other)
	if code, _, stderr := clinkd(t, "keys", "audit", "--url", srv.URL, "--key", strings.TrimSpace(otherV), "--state", state); code != 1 || !strings.Contains(stderr, "clinkd: error: audit: failed: checkpoint") {
		t.Errorf("keys audit with another key = %d, %q; want 1", code, stderr)
	}
	if _, err := db.Exec(ctx, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 0`); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := clinkd(t, audit...); code != 1 || !strings.Contains(stderr, "clinkd: error: audit: failed: the entries served do not hash") {
		t.Errorf("keys audit after tampering = %d, %q; want 1", code, stderr)
	}
}

func TestKeysUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"keys"}, 2, "keys needs a subcommand"},
		{[]string{"keys", "rotate"}, 2, `unknown keys subcommand "rotate"`},
		{[]string{"keys", "audit", "--key", "x"}, 2, "--url is required"},
		{[]string{"keys", "audit", "--url", "http://127.0.0.1:1"}, 2, "--key or --key-file is required"},
		{[]string{"keys", "audit", "--url", "http://127.0.0.1:1", "--key", "nonsense"}, 1, "verifier key"},
		{[]string{"keys", "monitor", "--url", "u", "--key", "k"}, 2, "want one JID"},
		{[]string{"keys", "reset", "a@b", "c@d", "--reason", "r"}, 2, "want one JID"},
		{[]string{"keys", "reset", "a@b/r", "--reason", "r"}, 1, "not a bare user JID"},
	}
	for _, tt := range tests {
		code, _, stderr := clinkd(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.want) || !strings.HasPrefix(stderr, "clinkd: error: ") && !strings.HasPrefix(stderr, "usage:") {
			t.Errorf("clinkd %s = %d, %q; want %d and %q", strings.Join(tt.args, " "), code, stderr, tt.code, tt.want)
		}
	}
}
