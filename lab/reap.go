package lab

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// ownerFile, in a server's directory, names the process that started the
// server: its pid and its start time (field 22 of /proc/PID/stat), so that
// a recycled pid is not mistaken for the owner.
const ownerFile = "lab-owner"

// writeOwner records the current process as the owner of the server in dir.
func writeOwner(dir string) error {
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte(self()), 0o644)
}

// self is "PID STARTTIME" of the current process.
func self() string {
	pid := os.Getpid()
	return fmt.Sprintf("%d %s", pid, procStart(pid))
}

// procStart returns the start time of pid in clock ticks since boot, or ""
// if pid does not exist.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22 overall; the fields after ')' start at 3
}

// serverDirOf extracts a lab server's directory from the command line of
// the processes that do not die with the lab: the ejabberd VM (a child of
// ejabberdctl's shell) and the postmaster (detached by pg_ctl). Prosody and
// coturn are direct children, which the kernel kills with the lab
// (Pdeathsig).
var serverDirOf = []*regexp.Regexp{
	regexp.MustCompile(`-mnesia dir "?([^" ]+)/db"?`),   // ejabberd
	regexp.MustCompile(`postgres -D ([^ ]+)/data( |$)`), // postmaster
}

// ReapOrphans kills what earlier lab runs left behind when their process
// died without closing its servers (a test binary killed by -timeout, a
// crash): every ejabberd VM or postmaster whose directory names, in its
// owner file, a process that no longer exists. Servers of live processes,
// and servers the lab did not start, are left alone. labtest.Main calls it
// before starting anything.
func ReapOrphans(log *slog.Logger) {
	log = discard(log)
	reapReservations()
	for _, p := range Processes() {
		for _, re := range serverDirOf {
			m := re.FindStringSubmatch(p.Cmdline)
			if m == nil {
				continue
			}
			owner, err := os.ReadFile(filepath.Join(m[1], ownerFile))
			if err != nil {
				continue // not a lab server, or its dir is gone
			}
			f := strings.Fields(string(owner))
			if len(f) != 2 {
				continue
			}
			pid, _ := strconv.Atoi(f[0])
			if pid > 0 && procStart(pid) == f[1] {
				continue // the owner lives
			}
			log.Warn("lab: killing a server whose owner died", "pid", p.PID, "dir", m[1])
			_ = syscall.Kill(-p.PGID, syscall.SIGKILL)
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
}

// reapReservations removes the stale port claims of processes that are
// gone (reserve), so that the shared directory does not grow.
func reapReservations() {
	dir := filepath.Join(os.TempDir(), "clinklab-ports")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if path := filepath.Join(dir, e.Name()); staleReservation(path) {
			os.Remove(path)
		}
	}
}
