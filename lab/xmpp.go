package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ServerKind names an XMPP server implementation.
type ServerKind string

// The servers clinkd supports, each tested against for real.
const (
	Prosody  ServerKind = "prosody"
	Ejabberd ServerKind = "ejabberd"
)

// Kinds lists every ServerKind, for tables that run a test on each.
func Kinds() []ServerKind { return []ServerKind{Prosody, Ejabberd} }

// Component is an XEP-0114 external component the server accepts.
type Component struct {
	Domain string // e.g. "c1.clink.lab.localhost"
	Secret string // the handshake secret; never logged
	// Addr is where this component connects, set by StartXMPP. Prosody
	// serves every component on one port. ejabberd gets one
	// ejabberd_service listener per component, because a connection
	// authenticated for any host of a listener is routed the traffic of
	// all the listener's hosts.
	Addr string
	Port int
}

// ProsodyAuth plugs a custom authentication provider into Prosody, for the
// ClinkID auth bridge.
type ProsodyAuth struct {
	Module string // provider name: `authentication = "Module"` loads mod_auth_Module
	// PluginDir is added to plugin_paths; it must be readable by the
	// prosody user. Empty means the Files directory, where a module given
	// in XMPPOptions.Files lands.
	PluginDir string
	// Config lines go in the VirtualHost section. Prosody resolves
	// relative paths from the config file's directory, so a file of
	// Files is "files/NAME".
	Config []string
}

// Fail2Ban configures ejabberd's mod_fail2ban.
type Fail2Ban struct {
	MaxFailures int           // failed logins from one address that ban it
	BanLifetime time.Duration // how long a ban lasts (whole seconds)
	Exempt      []string      // addresses or CIDR networks never banned
}

// BanLifetimeSeconds is BanLifetime for the template.
func (f Fail2Ban) BanLifetimeSeconds() int { return max(1, int(f.BanLifetime/time.Second)) }

// File is written, owned by the server's user and readable by it only,
// into the server's files directory before the server starts: an auth
// module and its secret for Prosody, the extauth program and its config
// for ejabberd.
type File struct {
	Name string      // base name
	Data []byte      // contents
	Mode os.FileMode // 0600 if zero; 0700 for a program
}

// XMPPOptions configures StartXMPP. Only Kind, Dir, Domain and CA are
// required.
type XMPPOptions struct {
	Kind   ServerKind
	Dir    string // everything the server writes goes under Dir/<kind>; Dir may be a t.TempDir()
	Domain string // the user domain, e.g. "lab.localhost"
	// OtherDomains are more user domains on the same server, e.g.
	// "other.localhost": their users stand for another server's, as
	// clinkd sees them (it serves Domain only unless told otherwise).
	OtherDomains []string
	// Components are accepted on ComponentAddr. Prosody allows one
	// connection per component domain at a time, ejabberd several.
	Components []Component
	CA         *CA // issues the certificate for Domain
	// Fast lifts the c2s shapers and rate limits, for benchmarks; tests
	// run with the limits a production server would have.
	Fast bool

	// ComponentTLS has every component listener speak TLS from the first
	// byte (ejabberd_service `tls: true`, TLS 1.2 or newer), with a
	// certificate of the lab CA for Domain, "localhost" and 127.0.0.1,
	// so that clinkd's link.tls can be proved against the real server.
	// Prosody 0.12 has no TLS on component ports (mod_component's
	// listener declares no encryption and offers no StartTLS), so
	// StartXMPP refuses it for Prosody.
	ComponentTLS bool

	// Balancing, if above 1, has ejabberd expect that many connections per
	// component domain and route by the destination's bare JID
	// (domain_balancing bare_destination, component_number). Ignored by
	// Prosody, which takes one connection per domain.
	Balancing int

	// ExtAuthProgram, if set, makes ejabberd authenticate through this
	// external program (path, then arguments) instead of its own
	// database. Ignored by Prosody.
	ExtAuthProgram []string
	// ProsodyAuth, if set, replaces Prosody's internal_hashed provider.
	// Ignored by ejabberd.
	ProsodyAuth *ProsodyAuth
	// Fail2Ban, if set, loads ejabberd's mod_fail2ban, which bans an
	// address after failed logins (the ClinkID bridge's per-address limit
	// on ejabberd). Ignored by Prosody.
	Fail2Ban *Fail2Ban
	// SessionAPI lets callers on loopback run ejabberd's kick_user and
	// unregister through the HTTP API at XMPPServer.APIURL, as clinkd does
	// to end the sessions of deleted ClinkID accounts. Ignored by Prosody.
	SessionAPI bool
	// Files are written before the server starts; FilePath says where.
	Files []File

	Logger *slog.Logger // nil discards
}

// FilePath is the absolute path at which the server of these options finds
// the file name of Files: DIR/<kind>/files/name. ExtAuthProgram and
// ProsodyAuth.Config name files by it.
func (o XMPPOptions) FilePath(name string) string {
	dir, err := filepath.Abs(filepath.Join(o.Dir, string(o.Kind), "files", name))
	if err != nil {
		return filepath.Join(o.Dir, string(o.Kind), "files", name)
	}
	return dir
}

// XMPPServer is a running Prosody or ejabberd. Its ports and data survive
// Stop and Start, so restart tests see the same server come back.
type XMPPServer struct {
	Kind          ServerKind
	Domain        string
	OtherDomains  []string // more user domains, as XMPPOptions says
	C2SAddr       string   // 127.0.0.1:port, StartTLS required
	ComponentAddr string   // 127.0.0.1:port, XEP-0114, of the first component; empty without Components
	APIURL        string   // ejabberd: its loopback HTTP API (mod_http_api), e.g. http://127.0.0.1:port/api
	Components    []Component
	ComponentTLS  bool // the component ports speak TLS first (XMPPOptions.ComponentTLS)
	CA            *CA
	Dir           string // the server's own directory, Dir/<kind> of the options

	impl xmppImpl
	log  *slog.Logger

	mu     sync.Mutex // serialises Start, Stop, Kill and Close
	proc   *process   // nil while stopped
	closed bool
}

// xmppImpl is what differs between Prosody and ejabberd.
type xmppImpl interface {
	// start launches the server; it need not wait for readiness.
	start(ctx context.Context) (*process, error)
	// stop stops p gracefully.
	stop(ctx context.Context, p *process) error
	register(ctx context.Context, user, domain, password string) error
	dumpStorage(ctx context.Context) ([]byte, error)
	logFiles() []string
	// ports names the loopback addresses it binds besides c2s and
	// component, by role.
	ports() map[string]string
}

// StartXMPP writes the configuration for opts.Kind and starts the server,
// returning once it answers a stream header on every port it serves.
func StartXMPP(ctx context.Context, opts XMPPOptions) (*XMPPServer, error) {
	if opts.Dir == "" || opts.Domain == "" || opts.CA == nil {
		return nil, fmt.Errorf("lab: start %s: Dir, Domain and CA are required", opts.Kind)
	}
	if opts.ComponentTLS && opts.Kind != Ejabberd {
		return nil, fmt.Errorf("lab: start %s: ComponentTLS needs ejabberd: %s 0.12 has no TLS on component ports (tunnel the link instead, docs/operators.md)", opts.Kind, opts.Kind)
	}
	dir, err := filepath.Abs(filepath.Join(opts.Dir, string(opts.Kind)))
	if err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", opts.Kind, err)
	}
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("lab: start %s: %s already exists", opts.Kind, dir)
	}
	// A port picked as free can be taken by someone else before the
	// server binds it; then start over with new ports.
	for attempt := 1; ; attempt++ {
		s, err := newXMPP(opts, dir)
		if err != nil {
			return nil, fmt.Errorf("lab: start %s: %w", opts.Kind, err)
		}
		err = s.Start(ctx)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errPortInUse) || attempt == 3 {
			return nil, err
		}
		s.log.Warn("lab: port taken before start; retrying with new ports", "err", err)
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("lab: start %s: %w", opts.Kind, err)
		}
	}
}

// newXMPP picks ports and writes the configuration in dir.
func newXMPP(opts XMPPOptions, dir string) (*XMPPServer, error) {
	s := &XMPPServer{
		Kind:         opts.Kind,
		Domain:       opts.Domain,
		OtherDomains: append([]string(nil), opts.OtherDomains...),
		Components:   append([]Component(nil), opts.Components...),
		ComponentTLS: opts.ComponentTLS,
		CA:           opts.CA,
		Dir:          dir,
		log:          discard(opts.Logger).With("server", string(opts.Kind)),
	}
	ports := portPicker{}
	c2s, err := ports.next()
	if err != nil {
		return nil, err
	}
	s.C2SAddr = loopback(c2s)
	compPort := 0
	for i := range s.Components {
		if i == 0 || opts.Kind == Ejabberd {
			if compPort, err = ports.next(); err != nil {
				return nil, err
			}
		}
		s.Components[i].Port, s.Components[i].Addr = compPort, loopback(compPort)
	}
	if len(s.Components) > 0 {
		s.ComponentAddr = s.Components[0].Addr
		compPort = s.Components[0].Port
	}
	cfg := xmppConfig{
		Dir: dir, Domain: opts.Domain, OtherDomains: opts.OtherDomains, C2SPort: c2s, ComponentPort: compPort,
		Components: s.Components, ComponentTLS: opts.ComponentTLS, Fast: opts.Fast, Balancing: opts.Balancing,
		ExtAuthProgram: strings.Join(opts.ExtAuthProgram, " "), ProsodyAuth: opts.ProsodyAuth,
		Fail2Ban: opts.Fail2Ban, SessionAPI: opts.SessionAPI,
		CAFile: opts.CA.CertFile, Files: opts.Files, FilesDir: filepath.Join(dir, "files"), ports: ports,
	}
	if pa := opts.ProsodyAuth; pa != nil && pa.PluginDir == "" {
		c := *pa
		c.PluginDir = cfg.FilesDir
		cfg.ProsodyAuth = &c
	}
	switch opts.Kind {
	case Prosody:
		s.impl, err = newProsody(cfg, opts.CA)
	case Ejabberd:
		s.impl, err = newEjabberd(cfg, opts.CA)
	default:
		err = fmt.Errorf("unknown kind %q", opts.Kind)
	}
	if err != nil {
		return nil, err
	}
	if e, ok := s.impl.(*ejabberd); ok {
		s.APIURL = "http://" + loopback(e.cfg.APIPort) + "/api"
	}
	return s, nil
}

// xmppConfig is what the templates render.
type xmppConfig struct {
	Dir            string
	Domain         string
	OtherDomains   []string
	C2SPort        int
	ComponentPort  int
	Components     []Component
	ComponentTLS   bool
	Fast           bool
	Balancing      int
	ExtAuthProgram string
	ProsodyAuth    *ProsodyAuth
	Fail2Ban       *Fail2Ban
	SessionAPI     bool
	Files          []File
	FilesDir       string
	// Set by the implementation:
	CertFile, KeyFile string
	CAFile            string
	// ComponentCertFile holds the component listeners' certificate chain
	// and key in one PEM file (ejabberd's listener certfile), with
	// ComponentTLS.
	ComponentCertFile string
	DataDir, LogDir   string
	DistPort          int // ejabberd's Erlang distribution port
	APIPort           int // ejabberd's loopback HTTP API, for register

	ports portPicker // the ports already given to this server
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// startTimeout bounds one start. ejabberd needs 2-4 s on an idle
// 2-core machine, but took 55 s (Prosody 45 s) while other jobs held the
// load average at 16; a server that exits early fails at once anyway.
const startTimeout = 3 * time.Minute

// Start starts a stopped server on the same ports and data.
func (s *XMPPServer) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("lab: start %s: server closed", s.Kind)
	}
	if s.proc != nil {
		return fmt.Errorf("lab: start %s: already running", s.Kind)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	// A taken port would not stop Prosody from running (it logs the
	// failure and serves the rest), so a start would only time out:
	// check first and say which port.
	ports := map[string]string{"c2s": s.C2SAddr}
	for _, c := range s.Components {
		ports["component "+c.Domain] = c.Addr
	}
	maps.Copy(ports, s.impl.ports())
	for _, role := range slices.Sorted(maps.Keys(ports)) {
		if err := waitPortFree(ctx, ports[role]); err != nil {
			return fmt.Errorf("lab: start %s: %s %w", s.Kind, role, err)
		}
	}
	t0 := time.Now()
	p, err := s.impl.start(ctx)
	if err != nil {
		return fmt.Errorf("lab: start %s: %w\n%s", s.Kind, err, s.logTail())
	}
	if err := waitReady(ctx, p, s.probe); err != nil {
		p.stop(syscall.SIGKILL, 5*time.Second)
		return fmt.Errorf("lab: start %s: %w\n%s", s.Kind, err, s.logTail())
	}
	s.proc = p
	s.log.Info("lab: started", "c2s", s.C2SAddr, "component", s.ComponentAddr, "dir", s.Dir, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// probe is the readiness signal: the c2s port answers a stream header with
// stream features offering StartTLS, and the component port (if any)
// answers a component stream header with a stream id. A port that merely
// accepts is not enough: both servers bind before their hosts are loaded.
func (s *XMPPServer) probe(ctx context.Context) error {
	c2s := fmt.Sprintf("<?xml version='1.0'?><stream:stream to='%s' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", s.Domain)
	if err := probeStream(ctx, s.C2SAddr, nil, c2s, "urn:ietf:params:xml:ns:xmpp-tls"); err != nil {
		return fmt.Errorf("c2s %s: %w", s.C2SAddr, err)
	}
	if s.ComponentAddr == "" {
		return nil
	}
	comp := fmt.Sprintf("<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>", s.Components[0].Domain)
	var tlsCfg *tls.Config
	if s.ComponentTLS {
		tlsCfg = &tls.Config{RootCAs: s.CA.Pool, ServerName: s.Domain, MinVersion: tls.VersionTLS12}
	}
	if err := probeStream(ctx, s.ComponentAddr, tlsCfg, comp, "id="); err != nil {
		return fmt.Errorf("component %s: %w", s.ComponentAddr, err)
	}
	return nil
}

// probeStream sends header and reads until want appears in the reply,
// over TLS verified with tlsCfg when it is not nil.
func probeStream(ctx context.Context, addr string, tlsCfg *tls.Config, header, want string) error {
	var d net.Dialer
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		conn, err = (&tls.Dialer{NetDialer: &d, Config: tlsCfg}).DialContext(ctx, "tcp", addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, header); err != nil {
		return err
	}
	var got []byte
	buf := make([]byte, 4096)
	for len(got) < 64<<10 {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if bytes.Contains(got, []byte(want)) {
			_, _ = io.WriteString(conn, "</stream:stream>")
			return nil
		}
		if bytes.Contains(got, []byte("<stream:error")) {
			return fmt.Errorf("stream error: %s", got)
		}
		if err != nil {
			return fmt.Errorf("reply %q: %w", got, err)
		}
	}
	return fmt.Errorf("no %q in reply", want)
}

// Stop stops the server gracefully, keeping its ports and data for Start.
// Stopping a stopped server is a no-op.
func (s *XMPPServer) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked(ctx)
}

func (s *XMPPServer) stopLocked(ctx context.Context) error {
	if s.proc == nil {
		return nil
	}
	t0 := time.Now()
	p := s.proc
	s.proc = nil
	if err := s.impl.stop(ctx, p); err != nil {
		return fmt.Errorf("lab: stop %s: %w\n%s", s.Kind, err, s.logTail())
	}
	s.log.Info("lab: stopped", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// Restart is Stop then Start.
func (s *XMPPServer) Restart(ctx context.Context) error {
	if err := s.Stop(ctx); err != nil {
		return err
	}
	return s.Start(ctx)
}

// Kill ends the server with SIGKILL, as a crash would: no graceful close of
// streams, no flush. Start brings it back on the same data.
func (s *XMPPServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	s.proc.kill()
	s.proc = nil
	s.log.Info("lab: killed")
}

// Close stops the server for good. It is idempotent; the directory is
// left for the caller (t.TempDir) to remove.
func (s *XMPPServer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	return s.stopLocked(ctx)
}

// Running reports whether the server was started and not stopped since.
func (s *XMPPServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// PGID is the process group of the running server (0 when stopped), so a
// test can prove that no process of it is left.
func (s *XMPPServer) PGID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.pgid
}

// stopTimeout bounds a graceful stop before the group is killed: ejabberd
// takes up to 4 s, more on a loaded machine.
const stopTimeout = 30 * time.Second

// RegisterAt creates an account user@domain, where domain is Domain or
// one of OtherDomains, on the running server.
func (s *XMPPServer) RegisterAt(ctx context.Context, user, domain, password string) error {
	if domain != s.Domain && !slices.Contains(s.OtherDomains, domain) {
		return fmt.Errorf("lab: register %s@%s: %s is not a domain of this server", user, domain, domain)
	}
	if err := s.impl.register(ctx, user, domain, password); err != nil {
		return fmt.Errorf("lab: register %s@%s on %s: %w", user, domain, s.Kind, err)
	}
	return nil
}

// Register creates an account user@Domain with password on the running
// server, through the server's own admin tool.
func (s *XMPPServer) Register(ctx context.Context, user, password string) error {
	if err := s.impl.register(ctx, user, s.Domain, password); err != nil {
		return fmt.Errorf("lab: register %s@%s on %s: %w", user, s.Domain, s.Kind, err)
	}
	return nil
}

// DumpStorage returns, as text, everything the server keeps about accounts
// and messages: for Prosody every file under its data_path, for ejabberd a
// dump of its whole Mnesia database. Tests grep it to prove what is, and
// is not, stored.
func (s *XMPPServer) DumpStorage(ctx context.Context) ([]byte, error) {
	b, err := s.impl.dumpStorage(ctx)
	if err != nil {
		return nil, fmt.Errorf("lab: dump storage of %s: %w", s.Kind, err)
	}
	return b, nil
}

// LogTail returns the last lines of the server's logs.
func (s *XMPPServer) LogTail() string { return s.logTail() }

func (s *XMPPServer) logTail() string { return tailFiles(40, s.impl.logFiles()...) }

// writeFiles writes cfg.Files into cfg.FilesDir for acct.
func writeFiles(cfg xmppConfig, acct account) error {
	if len(cfg.Files) == 0 {
		return nil
	}
	if err := os.Mkdir(cfg.FilesDir, 0o700); err != nil {
		return err
	}
	for _, f := range cfg.Files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) {
			return fmt.Errorf("file name %q is not a base name", f.Name)
		}
		p := filepath.Join(cfg.FilesDir, f.Name)
		if err := writeOwned(p, f.Data, acct); err != nil {
			return err
		}
		if f.Mode != 0 {
			if err := os.Chmod(p, f.Mode); err != nil {
				return err
			}
		}
	}
	return nil
}

// dumpDir concatenates every regular file under dir, sorted by path, each
// headed by its path relative to dir.
func dumpDir(dir string) ([]byte, error) {
	var out bytes.Buffer
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&out, "==> %s <==\n%s\n", rel, data)
		return nil
	})
	return out.Bytes(), err
}
