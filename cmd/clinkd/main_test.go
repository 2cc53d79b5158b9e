package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/lab/labtest"
)

// TestMain lets tests run this binary's main as a child process: with
// CLINKD_TEST_MAIN=1 the test binary is clinkd.
func TestMain(m *testing.M) {
	if os.Getenv("CLINKD_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true, Prosody: true, Ejabberd: true}))
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args     []string
		code     int
		stderr   string
		noStderr string
	}{
		{nil, 2, "usage: clinkd", ""},
		{[]string{"bogus"}, 2, "clinkd: error: unknown command \"bogus\"", ""},
		{[]string{"serve", "--nope"}, 2, "hint: run 'clinkd serve -h'", ""},
		{[]string{"serve", "extra"}, 2, "unexpected argument", ""},
		{[]string{"serve"}, 1, "link.addr, link.domain and link.secret", ""},
		{[]string{"serve", "--config", "/nonexistent.yaml"}, 1, "no such file", ""},
		{[]string{"lab"}, 2, "hint: the lab is its own command", ""},
		{[]string{"migrate"}, 2, "no database configured", ""},
		{[]string{"doctor"}, 2, "give --lab, or --c2s, --user and --component", ""},
		{[]string{"doctor", "--c2s", "127.0.0.1:1", "--user", "a@example.org", "--component", "c.example.org"}, 2, "no password", ""},
		{[]string{"doctor", "--lab", "/nonexistent/lab.json"}, 1, "no such file", ""},
		{[]string{"version"}, 0, "", "error"},
		{[]string{"--version"}, 0, "", "error"},
		{[]string{"check-config", "--config", "/nonexistent.yaml"}, 1, "no such file", ""},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run(tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.stderr) {
			t.Errorf("clinkd %q = %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.code, tt.stderr)
		}
		if tt.noStderr != "" && strings.Contains(stderr.String(), tt.noStderr) {
			t.Errorf("clinkd %q: stderr %q", tt.args, stderr.String())
		}
	}
}
