package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// account is the unprivileged system user a server runs as. When the lab
// itself does not run as root it cannot switch users, so cred is nil and
// the server runs as the current user.
type account struct {
	name     string
	uid, gid int
	cred     *syscall.Credential
}

// lookupAccount finds the system user name for a server. The distribution
// packages create these users (prosody, ejabberd, postgres, turnserver);
// running each server as its own user keeps a bug in one from touching the
// others or the test process, as in production.
func lookupAccount(name string) (account, error) {
	if os.Geteuid() != 0 {
		return account{name: currentUserName(), uid: os.Getuid(), gid: os.Getgid()}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return account{}, fmt.Errorf("system user %q: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return account{
		name: name, uid: uid, gid: gid,
		// Groups is set (empty) so root's supplementary groups are dropped.
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}, nil
}

func currentUserName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

// makeOwnedDir creates dir (and parents) for acct, mode 0700, and makes every
// ancestor traversable by others: directories from t.TempDir or
// os.MkdirTemp are 0700 root, and a server running as its own user must be
// able to walk to its dir. Only the search bit is added, never read, so the
// user still cannot list the ancestors.
func makeOwnedDir(dir string, acct account) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := chownTree(dir, acct); err != nil {
		return err
	}
	if acct.cred == nil {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); p != "/"; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
				return err
			}
		}
	}
	return nil
}

// chownTree gives everything under dir to acct (a no-op when not root).
func chownTree(dir string, acct account) error {
	if acct.cred == nil {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, acct.uid, acct.gid)
	})
}

// writeOwned writes a file readable only by acct.
func writeOwned(path string, data []byte, acct account) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil { // WriteFile keeps the mode of an existing file
		return err
	}
	if acct.cred == nil {
		return nil
	}
	return os.Chown(path, acct.uid, acct.gid)
}

// command builds an exec.Cmd that runs as acct in its own process group, so
// that stopping it reaches every process it forks (Erlang's helpers, a
// shell's children) and nothing else, with exactly env as its environment.
func command(acct account, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: acct.cred,
		// If the Go process dies without running its cleanups, the
		// server it started dies with it instead of lingering.
		Pdeathsig: syscall.SIGKILL,
	}
	return cmd
}

// baseEnv is the environment given to every server: a fixed PATH and
// locale, and nothing inherited, so that a developer's shell cannot change
// what a test sees.
func baseEnv(home string) []string {
	return []string{
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
		"HOME=" + home,
		"LANG=C.UTF-8",
	}
}

// runOutput runs a short-lived helper (prosodyctl, ejabberdctl, initdb) to
// completion and returns its combined output; a non-zero exit is an error
// that carries the output.
func runOutput(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Output pipes are closed this long after the helper exits, even if
	// a grandchild still holds them.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// A helper is killed with its whole group when ctx ends, so an
	// ejabberdctl that hangs on a dead node takes its erl with it.
	pgid := cmd.Process.Pid
	stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	err := cmd.Wait()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return out.Bytes(), fmt.Errorf("%s: %w: %s", filepath.Base(cmd.Path), err, strings.TrimSpace(lastLines(out.Bytes(), 20)))
	}
	return out.Bytes(), nil
}

// process is a long-running server started by the lab.
type process struct {
	cmd  *exec.Cmd
	pgid int
	done chan struct{} // closed when the direct child has exited
	err  error         // exit status, valid after done
}

// startProcess starts cmd with stdout and stderr appended to logFile.
func startProcess(cmd *exec.Cmd, logFile string) (*process, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout = f
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &process{cmd: cmd, pgid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the whole process group.
func (p *process) signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.pgid, sig)
}

// stop asks the group to stop with sig (if non-zero), then waits until the
// direct child has exited and no process of the group is left, up to
// grace; what is left then is killed.
func (p *process) stop(sig syscall.Signal, grace time.Duration) {
	if sig != 0 {
		p.signal(sig)
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	done := p.done // set to nil once closed, so the select below polls
	for !p.exited() || !groupEmpty(p.pgid) {
		select {
		case <-deadline.C:
			p.kill()
			return
		case <-done:
			done = nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill ends the group at once, as a crash would.
func (p *process) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
	waitGroupEmpty(p.pgid, 5*time.Second)
}

func waitGroupEmpty(pgid int, d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end) && !groupEmpty(pgid); {
		time.Sleep(10 * time.Millisecond)
	}
}

// groupEmpty reports whether no live process (zombies aside) is in
// process group pgid.
func groupEmpty(pgid int) bool {
	for _, pi := range Processes() {
		if pi.PGID == pgid && pi.State != "Z" {
			return false
		}
	}
	return true
}

// ProcInfo describes a process found in /proc.
type ProcInfo struct {
	PID, PPID, PGID int
	State           string // one letter: R, S, D, Z, ...
	Cmdline         string // arguments joined by spaces
}

// Processes lists the processes in /proc. Tests use it to prove that
// nothing the lab started is left behind.
func Processes() []ProcInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var ps []ProcInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name in parentheses may hold spaces and
		// parentheses; the fields after the last ')' are fixed.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgid, _ := strconv.Atoi(f[2])
		cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		ps = append(ps, ProcInfo{
			PID: pid, PPID: ppid, PGID: pgid, State: f[0],
			Cmdline: strings.TrimSpace(string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))),
		})
	}
	return ps
}

// errPortInUse marks a start that failed because a port picked for the
// server was taken before the server could bind it; the caller picks new
// ports and tries again.
var errPortInUse = errors.New("port in use")

// FreePort returns a free port on 127.0.0.1, picked as the lab picks the
// servers' ports (below the ephemeral range, free for TCP and UDP), for a
// listener that a server's config must name before it starts.
func FreePort() (int, error) { return freePort() }

// freePort returns a loopback port that is free for TCP and UDP at the
// moment of the call, chosen at random below the kernel's ephemeral range.
// Ports from the ephemeral range (what ":0" gives) are also handed out as
// the local end of outgoing connections: on a machine where another job
// opens thousands of connections, one of them took a port the lab had
// picked before the server bound it. Below the range only listeners
// compete, and the bind test sees them.
// portPicker hands out free ports, each at most once. freePort alone may
// return the same port twice before a server binds it: with the twenty
// ports of an ejabberd with 16 components, about one start in a hundred
// failed with "Overlapping listeners".
type portPicker map[int]bool

func (p portPicker) next() (int, error) {
	for range 100 {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		if !p[port] {
			p[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free loopback port")
}

func freePort() (int, error) {
	lo, hi := 10000, ephemeralLow()-1
	if hi-lo < 1000 { // an unusual ephemeral range: let the kernel choose
		return kernelPort()
	}
	for range 100 {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(hi-lo+1)))
		if err != nil {
			return 0, err
		}
		port := lo + int(n.Int64())
		if bindable(port) && reserve(port) {
			return port, nil
		}
	}
	return 0, errors.New("no free loopback port")
}

// reservationTTL is how long a port handed out stays reserved against
// other processes: longer than any server takes to start and bind it
// (startTimeout), after which bindable says whether it is taken.
const reservationTTL = 2 * startTimeout

// reserve claims port for this process against every other process of
// the lab on this machine (test binaries run in parallel, and a port is
// free from the moment freePort checks it until the server binds it,
// seconds later for ejabberd: two processes picking the same port then
// meant "eaddrinuse", seen when ejabberd failed to start its component
// listener under a loaded `go test ./...`). A claim is a file named after the port in a
// directory every lab user shares; it is stale, and taken over, once its
// process is gone or reservationTTL has passed.
func reserve(port int) bool {
	dir := filepath.Join(os.TempDir(), "clinklab-ports")
	if err := os.MkdirAll(dir, 0o1777); err != nil {
		return true // no shared directory: fall back to the bind check alone
	}
	path := filepath.Join(dir, strconv.Itoa(port))
	for range 2 {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%d\n", os.Getpid())
			f.Close()
			return true
		}
		if !errors.Is(err, fs.ErrExist) || !staleReservation(path) {
			return false
		}
		os.Remove(path)
	}
	return false
}

// staleReservation reports whether the claim at path no longer holds.
func staleReservation(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return true
	}
	if time.Since(fi.ModTime()) > reservationTTL {
		return true
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return true
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return true
	}
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

func kernelPort() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if bindable(port) && reserve(port) {
			return port, nil
		}
	}
	return 0, errors.New("no free loopback port")
}

// bindable reports whether 127.0.0.1:port can be bound for TCP and UDP.
func bindable(port int) bool {
	addr := loopback(port)
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return false
	}
	defer l.Close()
	u, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// waitPortFree waits until nothing listens on the TCP address addr ("" is
// free), for at most portWait: a restarted server's ports can be held for
// a moment by sockets of its previous run. A port still taken after that
// belongs to someone else.
func waitPortFree(ctx context.Context, addr string) error {
	if addr == "" {
		return nil
	}
	deadline := time.Now().Add(portWait)
	for {
		l, err := net.Listen("tcp4", addr)
		if err == nil {
			return l.Close()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%w: %s: %w", errPortInUse, addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// portWait bounds waitPortFree.
const portWait = 5 * time.Second

// waitReady polls probe until it succeeds, the process exits, or ctx ends.
func waitReady(ctx context.Context, p *process, probe func(context.Context) error) error {
	var last error
	for {
		if p != nil && p.exited() {
			if p.err != nil {
				return fmt.Errorf("exited before it was ready: %w", p.err)
			}
			return errors.New("exited before it was ready")
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = probe(pctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last probe: %v)", ctx.Err(), last)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// tailFiles returns the last lines of the named files, each headed by its
// name, for error messages and LogTail.
func tailFiles(n int, files ...string) string {
	var b strings.Builder
	for _, f := range files {
		data, err := readTail(f, 64<<10)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		fmt.Fprintf(&b, "==> %s <==\n%s\n", f, lastLines(data, n))
	}
	return b.String()
}

func readTail(name string, max int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if off := fi.Size() - max; off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(f)
}

func lastLines(data []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// discard returns l, or a logger that drops everything when l is nil.
func discard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
