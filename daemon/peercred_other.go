//go:build !linux

package daemon

import (
	"errors"
	"net"
	"syscall"
)

// peerCredentials needs SO_PEERCRED, which this system lacks: every
// handoff connection is refused.
func peerCredentials(*net.UnixConn) (uid, pid int, err error) {
	return 0, 0, errors.New("peer credentials are checked on Linux only")
}

// reusePort is a no-op here: a takeover needs Linux anyway.
func reusePort(network, address string, c syscall.RawConn) error { return nil }
