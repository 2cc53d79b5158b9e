package lab

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat. The kernel
// reports them in USER_HZ, which is 100 on every architecture Linux
// exports to user space (sysconf(_SC_CLK_TCK)), whatever its own HZ.
const userHZ = 100

// CPUTimes reads the CPU time (user plus system, utime+stime of
// /proc/<pid>/stat) each process has used so far, by pid. A process that
// is gone is left out. The resolution is 10 ms per process: benchmarks
// measure many operations between two readings.
func CPUTimes(pids []int) map[int]time.Duration {
	out := make(map[int]time.Duration, len(pids))
	for _, pid := range pids {
		if d, err := CPUTime(pid); err == nil {
			out[pid] = d
		}
	}
	return out
}

// CPUTime reads the CPU time (user plus system) process pid has used so
// far; pid 0 is this process.
func CPUTime(pid int) (time.Duration, error) {
	p := "/proc/self/stat"
	if pid != 0 {
		p = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("lab: cpu time: %w", err)
	}
	// The command name in parentheses may hold spaces and parentheses;
	// after the last ')' come state (field 3) ... utime (14), stime (15).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("lab: cpu time: malformed %s", p)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("lab: cpu time: short %s", p)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("lab: cpu time: malformed %s", p)
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// CPUSince is the CPU time the processes of now used since before was
// read: a process that started in between counts from zero, one that
// ended in between is lost (its time went to its parent's cutime, which
// is not read). Servers and their pooled connections outlive a measured
// phase, so what is lost is little.
func CPUSince(before, now map[int]time.Duration) time.Duration {
	var d time.Duration
	for pid, t := range now {
		d += t - before[pid]
	}
	return d
}

// PIDs lists the processes of the running server (its process group:
// for ejabberd the shell wrapper, erl, beam.smp and their helpers), so
// that a benchmark can read the server's CPU time; nil when stopped.
func (s *XMPPServer) PIDs() []int {
	pgid := s.PGID()
	if pgid == 0 {
		return nil
	}
	var out []int
	for _, p := range Processes() {
		if p.PGID == pgid && p.State != "Z" {
			out = append(out, p.PID)
		}
	}
	return out
}

// PIDs lists the throwaway cluster's processes (the postmaster and what
// it forked: backends and workers), nil for an existing server, whose
// processes serve others too and so cannot be measured as the lab's.
func (p *Postgres) PIDs() []int {
	pm := p.PostmasterPID()
	if pm <= 1 {
		return nil
	}
	return append([]int{pm}, childrenOf(pm)...)
}
