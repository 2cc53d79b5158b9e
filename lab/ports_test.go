package lab

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestPortPickerDistinct: one server's ports never repeat, even where
// freePort alone would return a port twice.
func TestPortPickerDistinct(t *testing.T) {
	t.Parallel()
	p := portPicker{}
	seen := map[int]bool{}
	for range 200 {
		port, err := p.next()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("next() = %d twice", port)
		}
		seen[port] = true
	}
}

// TestReserve: a port handed out is claimed against other processes
// until its claim goes stale.
func TestReserve(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	if reserve(port) {
		t.Fatalf("port %d reserved twice", port)
	}
	path := filepath.Join(os.TempDir(), "clinklab-ports", strconv.Itoa(port))
	// A claim by a process that is gone is taken over.
	if err := os.WriteFile(path, []byte("2147483646\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !reserve(port) {
		t.Errorf("a dead process's claim on %d was not taken over", port)
	}
	// So is one past its time.
	old := time.Now().Add(-2 * reservationTTL)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	if !reserve(port) {
		t.Errorf("an expired claim on %d was not taken over", port)
	}
	os.Remove(path)
}
