package labtest_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// childEnv marks a run of this test binary started by TestMainExitCodes.
const childEnv = "LABTEST_CHILD"

// TestMain runs labtest.Main only in the children: the parent starts no
// server and only checks the children's exit codes.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "" {
		os.Exit(m.Run())
	}
	os.Exit(labtest.Main(m, labtest.Need{Prosody: true}))
}

// TestChild is what the children run.
func TestChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("runs only as a child of TestMainExitCodes")
	}
	srv := labtest.Server(t, lab.Prosody)
	t.Logf("child got %s", srv.C2SAddr)
}

// TestMainExitCodes proves that Main returns 1, saying why, when a server
// cannot start (here prosody is not on PATH), and that under -short it
// starts nothing, skips and returns 0.
func TestMainExitCodes(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("parent only")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path string
		args []string
		code int
		want string
	}{
		{"cannot-start", "/nonexistent", nil, 1, "labtest: lab: start prosody"},
		{"short", os.Getenv("PATH"), []string{"-test.short"}, 0, "SKIP: TestChild"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), exe, append([]string{"-test.run=^TestChild$", "-test.v"}, tc.args...)...)
			cmd.Env = append(os.Environ(), childEnv+"=1", "PATH="+tc.path)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Errorf("child %s: exit %d, want %d with %q in\n%s", tc.name, code, tc.code, tc.want, out.String())
			}
		})
	}
}
