package labtest_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// childEnv marks a run of this test binary started by TestMainExitCodes.
const childEnv = "LABTEST_CHILD"

// TestMain runs labtest.Main only in the children: the parent starts no
// server and only checks the children's exit codes.
func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "crash":
		os.Exit(labtest.Main(m, labtest.Need{Ejabberd: true, Postgres: true}))
	default:
		os.Exit(labtest.Main(m, labtest.Need{Prosody: true}))
	}
}

// TestChild is what the children run.
func TestChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("runs only as a child of TestMainExitCodes")
	}
	if os.Getenv(childEnv) == "crash" {
		// Report the servers, then wait to be killed.
		fmt.Printf("CHILD-READY %s %s\n", labtest.Server(t, lab.Ejabberd).Dir, labtest.Postgres(t).Dir)
		time.Sleep(2 * time.Minute)
		return
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

// TestReapOrphans proves that servers whose owner died without closing
// them (a test binary killed by -timeout) do not live on: the ejabberd VM
// and the postmaster, which the kernel does not kill with their owner,
// are killed by the next ReapOrphans (which labtest.Main runs first).
func TestReapOrphans(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("parent only")
	}
	if testing.Short() {
		t.Skip("real servers")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestChild$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=crash", lab.DatabaseURLEnv+"=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var dirs []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "CHILD-READY" {
			dirs = f[1:]
			break
		}
	}
	// The crash: no cleanup runs in the child.
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if dirs == nil {
		t.Fatalf("child never reported its servers:\n%s", stderr.String())
	}
	defer os.RemoveAll(filepath.Dir(dirs[0]))

	left := func() []lab.ProcInfo {
		var ps []lab.ProcInfo
		for _, p := range lab.Processes() {
			if p.State != "Z" && (strings.Contains(p.Cmdline, dirs[0]) || strings.Contains(p.Cmdline, dirs[1])) {
				ps = append(ps, p)
			}
		}
		return ps
	}
	if len(left()) == 0 {
		t.Fatal("no orphan after the crash: the test cannot prove the reaper")
	}
	lab.ReapOrphans(nil)
	deadline := time.Now().Add(10 * time.Second)
	for len(left()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range left() {
		t.Errorf("orphan left after ReapOrphans: pid %d %q", p.PID, p.Cmdline)
	}
}
