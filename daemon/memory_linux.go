package daemon

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// protectMemory keeps what clinkd holds in memory (timed messages) off the
// disk: no core dump can be written (RLIMIT_CORE 0, and not dumpable, which
// also keeps other processes of the same user from ptrace-reading it), and
// with lock on, no page may be swapped out (mlockall; needs CAP_IPC_LOCK or
// a large enough RLIMIT_MEMLOCK, else clinkd refuses to start).
func protectMemory(lock bool) error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("expiry: disable core dumps: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("expiry: disable core dumps: %w", err)
	}
	if lock {
		if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE); err != nil {
			return fmt.Errorf("expiry: lock memory against swap (expiry.lock_memory): %w", err)
		}
	}
	return nil
}
