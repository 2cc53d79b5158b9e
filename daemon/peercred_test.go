package daemon

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestHandoffRefusesOtherUsers connects to a handoff socket from a process
// of another user (nobody, 65534) and from this one: the kernel's record
// of the peer (SO_PEERCRED) refuses the first and accepts the second.
// (clinkd's own socket sits in a directory only its user can enter, so
// another user cannot even connect: this is the check behind it.)
func TestHandoffRefusesOtherUsers(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("running a process as another user needs root")
	}
	// A directory every user can enter, for the other user's process
	// and this socket alone.
	dir, err := os.MkdirTemp("", "clinkd-peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "dialer")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "handoff.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(exe)
	cmd.Env = []string{"CLINKD_TEST_DIAL_HANDOFF=" + sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	err = checkPeer(conn)
	conn.Close()
	if err == nil || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("checkPeer(a process of uid 65534) = %v, want a refusal naming uid 65534", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("the other user's process: %v", err)
	}

	mine, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	conn, err = ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := checkPeer(conn); err != nil {
		t.Errorf("checkPeer(this process's user) = %v, want nil", err)
	}
	go io.Copy(io.Discard, mine)
}

// TestHandoffDirectory: the handoff socket's directory must be clinkd's
// own and closed to everyone else.
func TestHandoffDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name string
		mode os.FileMode
		path string
		ok   bool
	}{
		{"0700", 0o700, "handoff.sock", true},
		{"group may enter", 0o710, "handoff.sock", false},
		{"world readable", 0o755, "handoff.sock", false},
		{"relative path", 0o700, "", false},
	}
	for _, tt := range tests {
		d := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, tt.mode); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(d, tt.path)
		if tt.path == "" {
			path = "run/handoff.sock"
		}
		if err := checkHandoffDir(path); (err == nil) != tt.ok {
			t.Errorf("checkHandoffDir(%s) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}
