package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab/labtest"
)

// mainEnv makes this test binary run clinkd's main instead of the tests,
// so the CLI is tested as the binary it is: real argv, stdin, stdout,
// stderr and exit codes.
const mainEnv = "CLINKD_TEST_MAIN" // handled by TestMain in main_test.go

// clinkdChild runs the clinkd command line in a child process.
func clinkdChild(t *testing.T, stdin io.Reader, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), mainEnv+"=1"), env...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("clinkd %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// cliSetup is a migrated database with one account, and a config file
// pointing at it.
func cliSetup(t *testing.T) (config string, svc *clinkid.Service) {
	t.Helper()
	url := labtest.NewDatabase(t)
	dir := t.TempDir()
	config = filepath.Join(dir, "clinkd.yaml")
	yaml := fmt.Sprintf("database:\n  url: %q\nlink:\n  server_domain: lab.localhost\nclinkid:\n  argon2_memory_kib: 256\n  argon2_iterations: 1\n  argon2_parallelism: 1\n", url)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := daemon.LoadConfig(config, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := daemon.Migrate(t.Context(), db, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	svc, err = daemon.ClinkIDService(cfg, db, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateAccount(t.Context(), "alice", "alice's password", ""); err != nil {
		t.Fatal(err)
	}
	return config, svc
}

// TestAccountsCLI runs `clinkd accounts` as an operator would.
func TestAccountsCLI(t *testing.T) {
	t.Parallel()
	config, svc := cliSetup(t)
	tests := []struct {
		args       []string
		code       int
		out, errs  string // substrings of stdout and stderr
		secureNext bool   // whether alice has secure afterwards
	}{
		{[]string{"accounts", "show", "alice", "--config", config}, 0, "entitlements  none", "", false},
		{[]string{"accounts", "grant", "--config", config, "ALICE", "secure"}, 0, "alice@lab.localhost: granted secure; entitlements: secure", "", true},
		{[]string{"accounts", "show", "--config", config, "alice"}, 0, "entitlements  secure", "", true},
		{[]string{"accounts", "grant", "alice", "secure", "--config", config}, 0, "granted secure", "", true},
		{[]string{"accounts", "revoke", "alice", "secure", "--config", config}, 0, "revoked secure; entitlements: none", "", false},
		{[]string{"accounts", "grant", "alice", "gold", "--config", config}, 1, "", "clinkd: error: clinkid: unknown entitlement \"gold\"", false},
		{[]string{"accounts", "grant", "bob", "secure", "--config", config}, 1, "", "clinkd: error: clinkid: no such account: bob", false},
		{[]string{"accounts", "show", "b@b", "--config", config}, 1, "", "no such account", false},
		{[]string{"accounts", "grant", "alice", "--config", config}, 2, "", "accounts grant takes 2 argument(s), got 1\nhint: run 'clinkd accounts -h'", false},
		{[]string{"accounts", "delete", "alice"}, 2, "", "want grant, revoke, show, unlock, create or invite", false},
		{[]string{"accounts", "show", "alice"}, 2, "", "no database configured", false},
		{[]string{"accounts", "unlock", "alice", "--config", config}, 0, "alice: unlocked", "", false},
		{[]string{"accounts", "-h"}, 0, "", "usage: clinkd accounts grant|revoke ACCOUNT ENTITLEMENT", false},
	}
	for _, tt := range tests {
		out, errs, code := clinkdChild(t, nil, nil, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.errs) {
			t.Errorf("clinkd %s = exit %d\nstdout: %s\nstderr: %s\nwant exit %d, stdout with %q, stderr with %q",
				strings.Join(tt.args, " "), code, out, errs, tt.code, tt.out, tt.errs)
		}
		if code != 0 && strings.Count(errs, "clinkd: error: ") != 1 {
			t.Errorf("clinkd %s: stderr %q, want one 'clinkd: error:' line", strings.Join(tt.args, " "), errs)
		}
		has, err := svc.HasEntitlement(t.Context(), "alice@lab.localhost", "secure")
		if err != nil || has != tt.secureNext {
			t.Errorf("after clinkd %s: HasEntitlement = %v, %v, want %v", strings.Join(tt.args, " "), has, err, tt.secureNext)
		}
	}
	// A locked account shows it, and unlock lifts it.
	for range 5 {
		svc.CheckLogin(t.Context(), "alice", "wrong password", "")
	}
	if out, _, _ := clinkdChild(t, nil, nil, "accounts", "show", "alice", "--config", config); !strings.Contains(out, "password login locked until") {
		t.Errorf("show of a locked account:\n%s\nwant the lock", out)
	}
	clinkdChild(t, nil, nil, "accounts", "unlock", "alice", "--config", config)
	if ok, _ := svc.CheckLogin(t.Context(), "alice", "alice's password", ""); !ok {
		t.Error("password refused after clinkd accounts unlock")
	}
}

func frame(s string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...)
}

// TestAccountsCreateCLI: with registration closed (the default), the
// operator creates accounts and invites; the password comes on stdin and
// the policy applies.
func TestAccountsCreateCLI(t *testing.T) {
	t.Parallel()
	config, svc := cliSetup(t)
	out, errs, code := clinkdChild(t, strings.NewReader("carol's long password\n"), nil, "accounts", "create", "Carol", "--config", config)
	if code != 0 || out != "carol@lab.localhost: created\n" {
		t.Errorf("accounts create = exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if ok, _ := svc.CheckLogin(t.Context(), "carol", "carol's long password", ""); !ok {
		t.Error("the created account does not log in with its password")
	}
	for _, tt := range []struct {
		stdin string
		code  int
		errs  string
	}{
		{"12345678\n", 1, "clinkd: error: clinkid: password refused: it is one of the 10,000 commonest passwords"},
		{"", 2, "clinkd: error: accounts create reads the password from standard input, and got none"},
		{"carol's long password\n", 1, "clinkd: error: clinkid: account name taken"},
	} {
		name := "dave"
		if strings.Contains(tt.errs, "taken") {
			name = "carol"
		}
		out, errs, code := clinkdChild(t, strings.NewReader(tt.stdin), nil, "accounts", "create", name, "--config", config)
		if code != tt.code || !strings.Contains(errs, tt.errs) || out != "" {
			t.Errorf("accounts create %s with stdin %q = exit %d, stdout %q, stderr %q; want exit %d and %q", name, tt.stdin, code, out, errs, tt.code, tt.errs)
		}
		if strings.Contains(errs, "12345678") {
			t.Errorf("stderr quotes the password: %s", errs)
		}
	}

	out, errs, code = clinkdChild(t, nil, nil, "accounts", "invite", "--ttl", "1h", "--config", config)
	inv, _, _ := strings.Cut(out, "\n")
	if code != 0 || !clinkid.IsInvite(inv) || !strings.Contains(out, "expires ") {
		t.Errorf("accounts invite = exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if _, err := svc.RegisterAccount(t.Context(), "erin", "erin's long password", inv, "192.0.2.1"); !errors.Is(err, clinkid.ErrRegistrationClosed) {
		t.Errorf("an invite on a closed server = %v, want ErrRegistrationClosed", err)
	}

}

// TestExtauthCLI runs `clinkd extauth` as ejabberd does: requests on
// stdin, answers on stdout, logs on stderr, and a clean exit when stdin
// closes. Neither stream ever holds the password.
func TestExtauthCLI(t *testing.T) {
	t.Parallel()
	config, svc := cliSetup(t)
	sess, err := svc.Login(t.Context(), "alice", "alice's password", "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	for _, r := range []string{
		"auth:alice:lab.localhost:alice's password",
		"auth:alice:lab.localhost:" + sess.Token,
		"auth:alice:lab.localhost:not the password",
		"isuser:alice:lab.localhost",
		"isuser:bob:lab.localhost",
		"setpass:alice:lab.localhost:hijacked!",
		"tryregister:mallory:lab.localhost:mallory's password",
		"removeuser:alice:lab.localhost",
		"auth:alice:example.org:alice's password",
		"nonsense",
	} {
		in.Write(frame(r))
	}
	in.Write([]byte{0xff, 0xff}) // a huge length, then the end of input
	in.Write(bytes.Repeat([]byte{'x'}, 100))
	out, errs, code := clinkdChild(t, &in, nil, "extauth", "--config", config)
	y, n := "\x00\x02\x00\x01", "\x00\x02\x00\x00"
	if want := y + y + n + y + n + n + n + n + n + n; out != want {
		t.Errorf("clinkd extauth answered % x, want % x", out, want)
	}
	if code != 1 || !strings.Contains(errs, "clinkd: error: clinkid: extauth: read: unexpected EOF") {
		t.Errorf("clinkd extauth at a cut frame: exit %d, stderr:\n%s\nwant exit 1 and the error", code, errs)
	}
	for _, secret := range []string{"alice's password", sess.Token, "not the password", "hijacked!", "mallory's password"} {
		if strings.Contains(errs, secret) {
			t.Errorf("stderr holds a secret %q:\n%s", secret, errs)
		}
	}
	if ok, _ := svc.CheckLogin(t.Context(), "alice", "alice's password", ""); !ok {
		t.Error("setpass through extauth changed the password")
	}
	if ok, _ := svc.Exists(t.Context(), "mallory"); ok {
		t.Error("tryregister through extauth created an account")
	}

	// A clean end of input between requests is a clean exit.
	out, errs, code = clinkdChild(t, bytes.NewReader(frame("isuser:alice:lab.localhost")), nil, "extauth", "--config", config)
	if out != y || code != 0 {
		t.Errorf("clinkd extauth with one request then EOF = % x, exit %d, stderr %s; want one yes and exit 0", out, code, errs)
	}
	// Without a database it refuses to start, saying why.
	_, errs, code = clinkdChild(t, nil, nil, "extauth")
	if code != 1 || !strings.Contains(errs, "clinkd: error: config: clinkd extauth needs database.url") {
		t.Errorf("clinkd extauth without a config = exit %d, %s", code, errs)
	}
}
