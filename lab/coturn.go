package lab

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CoturnOptions configures StartCoturn. Dir, Realm, Secret and CA are
// required.
type CoturnOptions struct {
	Dir    string // coturn's files go under Dir/coturn
	Realm  string // TURN realm, also the TLS certificate's name
	Secret string // static-auth-secret for TURN REST credentials; never logged
	CA     *CA
	// AllowLoopbackPeers lets allocations relay to 127.0.0.1, where the
	// lab's test peers are. Production denies it.
	AllowLoopbackPeers bool
	// Shipped, if set, is the text of a config we ship (docker/coturn or
	// packaging/coturn): it runs as shipped, but for the lines that say
	// where (addresses, ports, realm, files, the secret), which are the
	// lab's. A test proves with it that the shipped files start and
	// relay.
	Shipped string
	Logger  *slog.Logger
}

// deploymentKeys are the lines of a shipped coturn config that belong to
// one deployment; Shipped replaces them with the lab's.
var deploymentKeys = map[string]bool{
	"listening-ip": true, "relay-ip": true, "external-ip": true, "listening-port": true, "tls-listening-port": true,
	"min-port": true, "max-port": true, "realm": true, "static-auth-secret": true, "userdb": true,
	"cert": true, "pkey": true, "pidfile": true, "log-file": true, "no-stdout-log": true,
}

// deployShipped returns the shipped config with its deployment lines
// replaced by the lab's (taken from the rendered lab config).
func deployShipped(shipped, labConf string) string {
	var out []string
	for _, line := range strings.Split(shipped, "\n") {
		key, _, _ := strings.Cut(strings.TrimSpace(line), "=")
		if deploymentKeys[key] {
			continue
		}
		out = append(out, line)
	}
	out = append(out, "# --- The lab's deployment lines")
	for _, line := range strings.Split(labConf, "\n") {
		key, _, _ := strings.Cut(strings.TrimSpace(line), "=")
		if deploymentKeys[key] {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n") + "\n"
}

// CoturnUserQuota is coturn's user-quota in the lab and in the config
// docker/ ships: how many allocations one user may hold at once. coturn
// counts a TURN REST username "EXPIRY:USER" under USER alone, so every
// credential of a user shares this budget (turncred.TestUserAllocationBudget).
const CoturnUserQuota = 12

// Coturn is a running coturn TURN/STUN server on loopback.
type Coturn struct {
	Realm   string
	UDPAddr string // host:port, STUN/TURN over UDP
	TCPAddr string // host:port, STUN/TURN over TCP (same port as UDP)
	TLSAddr string // host:port, TURN over TLS; the certificate names Realm, localhost and 127.0.0.1
	Secret  string
	Dir     string
	// UserQuota is the allocations one user may hold at once
	// (CoturnUserQuota); the next gets 486 Allocation Quota Reached.
	UserQuota int

	log     *slog.Logger
	logFile string
	pidFile string

	mu   sync.Mutex
	proc *process
}

// StartCoturn starts turnserver as the turnserver user and returns once it
// answers a STUN binding request over UDP and a TLS handshake.
func StartCoturn(ctx context.Context, opts CoturnOptions) (*Coturn, error) {
	c, err := startCoturn(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("lab: start coturn: %w", err)
	}
	return c, nil
}

func startCoturn(ctx context.Context, opts CoturnOptions) (*Coturn, error) {
	if opts.Dir == "" || opts.Realm == "" || opts.Secret == "" || opts.CA == nil {
		return nil, errors.New("Dir, Realm, Secret and CA are required")
	}
	// coturn's config format has no quoting: one line per setting.
	if strings.ContainsAny(opts.Realm+opts.Secret+opts.Dir, "\r\n\x00") {
		return nil, errors.New("Realm, Secret and Dir must be single-line")
	}
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		return nil, err
	}
	acct, err := lookupAccount("turnserver")
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Join(opts.Dir, "coturn"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("%s already exists", dir)
	}
	if err := makeOwnedDir(dir, acct); err != nil {
		return nil, err
	}
	ports := portPicker{}
	port, err := ports.next()
	if err != nil {
		return nil, err
	}
	tlsPort, err := ports.next()
	if err != nil {
		return nil, err
	}
	certFile, keyFile, err := opts.CA.Issue(dir, "server", opts.Realm, "localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	c := &Coturn{
		Realm:     opts.Realm,
		UDPAddr:   loopback(port),
		TCPAddr:   loopback(port),
		TLSAddr:   loopback(tlsPort),
		Secret:    opts.Secret,
		Dir:       dir,
		UserQuota: CoturnUserQuota,
		log:       discard(opts.Logger).With("server", "coturn"),
		logFile:   filepath.Join(dir, "turnserver.log"),
		pidFile:   filepath.Join(dir, "turnserver.pid"),
	}
	conf, err := render("turnserver.conf.tmpl", map[string]any{
		"Port": port, "TLSPort": tlsPort, "Realm": opts.Realm, "Secret": opts.Secret,
		"CertFile": certFile, "KeyFile": keyFile, "AllowLoopbackPeers": opts.AllowLoopbackPeers,
		"PIDFile": c.pidFile, "LogFile": c.logFile, "UserDB": filepath.Join(dir, "turndb"), "UserQuota": c.UserQuota,
	})
	if err != nil {
		return nil, err
	}
	if opts.Shipped != "" {
		conf = []byte(deployShipped(opts.Shipped, string(conf)))
	}
	confFile := filepath.Join(dir, "turnserver.conf")
	if err := writeOwned(confFile, conf, acct); err != nil {
		return nil, err
	}
	if err := chownTree(dir, acct); err != nil {
		return nil, err
	}

	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	// -n would ignore the file; -c reads only it (not /etc/turnserver.conf).
	cmd := command(acct, baseEnv(dir), bin, "-c", confFile)
	cmd.Dir = dir
	p, err := startProcess(cmd, filepath.Join(dir, "console.log"))
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, p, c.probe(opts.CA)); err != nil {
		p.stop(syscall.SIGKILL, 5*time.Second)
		return nil, fmt.Errorf("%w\n%s", err, c.LogTail())
	}
	c.proc = p
	c.log.Info("lab: started", "udp", c.UDPAddr, "tls", c.TLSAddr, "dir", dir, "took", time.Since(t0).Round(time.Millisecond))
	return c, nil
}

// probe checks that coturn answers a STUN Binding request over UDP and
// completes a TLS handshake on its TLS port with a certificate the CA
// vouches for.
func (c *Coturn) probe(ca *CA) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := stunBinding(ctx, c.UDPAddr); err != nil {
			return fmt.Errorf("udp %s: %w", c.UDPAddr, err)
		}
		d := tls.Dialer{Config: &tls.Config{RootCAs: ca.Pool, ServerName: c.Realm}}
		conn, err := d.DialContext(ctx, "tcp", c.TLSAddr)
		if err != nil {
			return fmt.Errorf("tls %s: %w", c.TLSAddr, err)
		}
		return conn.Close()
	}
}

// stunBinding sends one RFC 5389 Binding request and waits for the
// success response with the same transaction ID.
func stunBinding(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	req := make([]byte, 20)
	binary.BigEndian.PutUint16(req[0:], 0x0001)     // Binding request
	binary.BigEndian.PutUint32(req[4:], 0x2112A442) // magic cookie
	if _, err := rand.Read(req[8:20]); err != nil {
		return err
	}
	// UDP may lose the first datagram while the socket is being bound;
	// resend until the deadline.
	buf := make([]byte, 1500)
	for {
		if _, err := conn.Write(req); err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := conn.Read(buf)
		if err == nil && n >= 20 && binary.BigEndian.Uint16(buf) == 0x0101 && string(buf[8:20]) == string(req[8:20]) {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no binding response: %w", ctx.Err())
		}
		if err == nil {
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err // e.g. connection refused: not listening yet
		}
	}
}

// Credentials returns TURN REST credentials for user valid for ttl: the
// username "expiry:user" and the password base64(HMAC-SHA1(secret,
// username)), as clinkd's turncred hands them out.
func (c *Coturn) Credentials(user string, ttl time.Duration) (username, password string) {
	username = strconv.FormatInt(time.Now().Add(ttl).Unix(), 10) + ":" + user
	m := hmac.New(sha1.New, []byte(c.Secret))
	m.Write([]byte(username))
	return username, base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// LogTail returns the last lines of coturn's log.
func (c *Coturn) LogTail() string {
	return tailFiles(40, filepath.Join(c.Dir, "console.log"), c.logFile)
}

// PGID is coturn's process group (0 after Close).
func (c *Coturn) PGID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	return c.proc.pgid
}

// Close stops coturn (SIGTERM, then SIGKILL after a grace period) and
// removes the pid file it leaves behind. It is idempotent.
func (c *Coturn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil
	}
	t0 := time.Now()
	c.proc.stop(syscall.SIGTERM, 10*time.Second)
	c.proc = nil
	c.log.Info("lab: stopped", "took", time.Since(t0).Round(time.Millisecond))
	if err := os.Remove(c.pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab: stop coturn: %w", err)
	}
	return nil
}
