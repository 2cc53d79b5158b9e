package daemon

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerCredentials returns the uid and pid of the process at the other end
// of a Unix socket, as the kernel recorded them when it connected
// (SO_PEERCRED): a peer cannot claim another's.
func peerCredentials(conn *net.UnixConn) (uid, pid int, err error) {
	sc, err := conn.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := sc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if credErr != nil {
		return 0, 0, credErr
	}
	return int(cred.Uid), int(cred.Pid), nil
}

// reusePort sets SO_REUSEPORT on a listener's socket (net.ListenConfig's
// Control): the kernel lets another socket of the same user bind the same
// address meanwhile.
func reusePort(network, address string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); cerr != nil {
		return cerr
	}
	return err
}
