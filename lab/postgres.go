package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// DatabaseURLEnv names the environment variable that points the lab at an
// existing PostgreSQL server (an admin URL) instead of a throwaway
// cluster: CI machines and developers with a running server save the
// initdb.
const DatabaseURLEnv = "CLINK_TEST_DATABASE_URL"

// pgBinDir is where Debian installs the PostgreSQL 15 server programs;
// they are not on PATH.
const pgBinDir = "/usr/lib/postgresql/15/bin"

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	// Dir holds the throwaway cluster (Dir/postgres). Unused when
	// AdminURL or CLINK_TEST_DATABASE_URL is set.
	Dir string
	// AdminURL, if set, is used instead of CLINK_TEST_DATABASE_URL: a
	// superuser (or CREATEDB) connection URL of an existing server.
	AdminURL string
	// BinDir holds initdb, pg_ctl and postgres; default pgBinDir, then
	// PATH.
	BinDir string
	// Private starts a throwaway cluster in Dir even when AdminURL or
	// CLINK_TEST_DATABASE_URL names a server: for a test that freezes,
	// stops or kills its database, which must never be a shared one.
	Private bool
	// PasswordAuth makes the throwaway cluster ask for a password
	// (scram-sha-256) on TCP, as a production server does; the lab's
	// superuser then connects over the unix socket (AdminURL names it).
	// For tests of password rotation.
	PasswordAuth bool
	Logger       *slog.Logger
}

// Postgres is a PostgreSQL server the lab can create databases on: either
// an existing one (nothing is started or stopped) or a throwaway cluster.
type Postgres struct {
	AdminURL string // a superuser URL, for CreateDatabase and DropDatabase
	Dir      string // the throwaway cluster's directory; empty for an existing server
	TCPAddr  string // the throwaway cluster's loopback host:port; empty for an existing server

	log  *slog.Logger
	bin  string
	acct account
	data string

	mu     sync.Mutex
	closed bool
}

// StartPostgres returns a server to create test databases on. With an
// admin URL (from opts or CLINK_TEST_DATABASE_URL) it only checks that the
// server answers; otherwise it initialises a cluster in opts.Dir, owned by
// the postgres user, listening on 127.0.0.1 on a free port and on a unix
// socket in the dir, with trust authentication for loopback only.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	p, err := startPostgres(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("lab: start postgres: %w", err)
	}
	return p, nil
}

func startPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	log := discard(opts.Logger).With("server", "postgres")
	admin := opts.AdminURL
	if admin == "" {
		admin = os.Getenv(DatabaseURLEnv)
	}
	if admin != "" && !opts.Private {
		p := &Postgres{AdminURL: admin, log: log}
		if err := p.ping(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", redactURL(admin), err)
		}
		log.Info("lab: using existing server", "url", redactURL(admin))
		return p, nil
	}
	if opts.Dir == "" {
		return nil, errors.New("Dir is required without an admin URL")
	}
	bin := opts.BinDir
	if bin == "" {
		bin = pgBinDir
		if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
			path, err := exec.LookPath("initdb")
			if err != nil {
				return nil, fmt.Errorf("initdb not found in %s or PATH", pgBinDir)
			}
			bin = filepath.Dir(path)
		}
	}
	acct, err := lookupAccount("postgres")
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Join(opts.Dir, "postgres"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("%s already exists", dir)
	}
	if err := makeOwnedDir(dir, acct); err != nil {
		return nil, err
	}
	if err := writeOwner(dir); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &Postgres{
		// The cluster's superuser is named after the OS user that ran
		// initdb; -U pins it to "postgres" either way.
		AdminURL: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		Dir:      dir, TCPAddr: loopback(port), log: log, bin: bin, acct: acct, data: filepath.Join(dir, "data"),
	}
	hostAuth := "trust"
	if opts.PasswordAuth {
		hostAuth = "scram-sha-256"
		p.AdminURL = fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d&sslmode=disable", url.QueryEscape(dir), port)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	// --no-sync: a throwaway cluster need not survive a power cut, and
	// fsync makes initdb several times slower. Trust auth is safe only
	// because the cluster listens on loopback and a 0700 socket dir.
	if _, err := runOutput(ctx, p.cmd("initdb", "-D", p.data, "-U", "postgres",
		"--auth-local=trust", "--auth-host="+hostAuth, "--no-sync", "--encoding=UTF8", "--locale=C.UTF-8")); err != nil {
		return nil, fmt.Errorf("initdb: %w", err)
	}
	log.Debug("lab: initdb done", "took", time.Since(t0).Round(time.Millisecond))
	conf := fmt.Sprintf(`
# Added by the clinkd lab (lab/postgres.go): loopback only, on a free port,
# the unix socket in the lab dir (not /var/run/postgresql, which the
# system server owns).
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
# Durability is not wanted in a throwaway cluster; speed is.
fsync = off
synchronous_commit = off
full_page_writes = off
# Tests create a database each and run in parallel.
max_connections = 200
`, port, dir)
	f, err := os.OpenFile(filepath.Join(p.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	// pg_ctl -w waits until the server accepts connections.
	if _, err := runOutput(ctx, p.cmd("pg_ctl", "start", "-w", "-t", "60", "-D", p.data, "-l", p.LogFile())); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, tailFiles(40, p.LogFile()))
	}
	log.Debug("lab: pg_ctl start done", "took", time.Since(t0).Round(time.Millisecond))
	if err := p.ping(ctx); err != nil {
		_ = p.Close()
		return nil, fmt.Errorf("%w\n%s", err, tailFiles(40, p.LogFile()))
	}
	log.Info("lab: started", "addr", loopback(port), "dir", dir, "took", time.Since(t0).Round(time.Millisecond))
	return p, nil
}

func (p *Postgres) cmd(name string, args ...string) *exec.Cmd {
	cmd := command(p.acct, append(baseEnv(p.Dir), "LC_ALL=C.UTF-8"), filepath.Join(p.bin, name), args...)
	cmd.Dir = p.Dir
	return cmd
}

// LogFile is the throwaway cluster's server log (empty for an existing server).
func (p *Postgres) LogFile() string {
	if p.Dir == "" {
		return ""
	}
	return filepath.Join(p.Dir, "postgres.log")
}

func (p *Postgres) ping(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, p.AdminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(ctx)
}

// dbName is what CreateDatabase accepts from a prefix: lower-case letters,
// digits and underscores, so names never need quoting rules beyond the
// identifier quoting done anyway.
var dbNameUnsafe = regexp.MustCompile(`[^a-z0-9_]+`)

// CreateDatabase creates an empty database named after prefix plus a
// random suffix and returns its URL (the admin URL with the database
// replaced).
func (p *Postgres) CreateDatabase(ctx context.Context, prefix string) (string, error) {
	prefix = strings.Trim(dbNameUnsafe.ReplaceAllString(strings.ToLower(prefix), "_"), "_")
	if prefix == "" {
		prefix = "lab"
	}
	if len(prefix) > 40 { // PostgreSQL cuts identifiers at 63 bytes
		prefix = prefix[:40]
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", fmt.Errorf("lab: create database: %w", err)
	}
	name := prefix + "_" + hex.EncodeToString(rnd[:])
	u, err := url.Parse(p.AdminURL)
	if err != nil {
		return "", fmt.Errorf("lab: create database: admin URL: %w", err)
	}
	u.Path = "/" + name
	if err := p.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("lab: create database %s: %w", name, err)
	}
	p.log.Debug("lab: created database", "name", name)
	return u.String(), nil
}

// DropDatabase drops the database dbURL names, closing its sessions first
// so that a test which leaked a connection cannot block the cleanup.
func (p *Postgres) DropDatabase(ctx context.Context, dbURL string) error {
	u, err := url.Parse(dbURL)
	if err != nil {
		return fmt.Errorf("lab: drop database: %w", err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	if name == "" || name == "postgres" || strings.HasPrefix(name, "template") {
		return fmt.Errorf("lab: drop database: refusing to drop %q", name)
	}
	if err := p.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("lab: drop database %s: %w", name, err)
	}
	return nil
}

func (p *Postgres) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, p.AdminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// Freeze stops every process of the throwaway cluster (SIGSTOP to the
// postmaster and each process it forked): connections stay open and every
// query and new connection hangs, as when a database host
// stops answering without closing anything. Thaw resumes it; Close thaws
// first. A shared server cannot be frozen.
func (p *Postgres) Freeze() error { return p.signalCluster(syscall.SIGSTOP) }

// Thaw resumes a frozen cluster.
func (p *Postgres) Thaw() error { return p.signalCluster(syscall.SIGCONT) }

func (p *Postgres) signalCluster(sig syscall.Signal) error {
	pid := p.PostmasterPID()
	if pid <= 1 {
		return errors.New("lab: only a private, running cluster can be frozen or thawed")
	}
	// The postmaster first, so it forks nothing new meanwhile; then every
	// process it forked (backends and workers call setsid, so they are
	// found by parent, not by process group).
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("lab: signal postgres: %w", err)
	}
	for _, child := range childrenOf(pid) {
		_ = syscall.Kill(child, sig) // one that just exited is no longer ours to stop
	}
	return nil
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after
		// its closing parenthesis.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// Close stops the throwaway cluster (fast shutdown: sessions are ended);
// for an existing server it does nothing. It is idempotent.
func (p *Postgres) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.Dir == "" {
		p.closed = true
		return nil
	}
	p.closed = true
	_ = p.Thaw() // a frozen cluster cannot stop
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	_, err := runOutput(ctx, p.cmd("pg_ctl", "stop", "-w", "-m", "fast", "-D", p.data))
	if err != nil {
		// pg_ctl detaches the postmaster into its own session, so it
		// is not in a group of ours: kill it by its pid file.
		p.killPostmaster()
		return fmt.Errorf("lab: stop postgres: %w", err)
	}
	p.log.Info("lab: stopped", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

func (p *Postgres) killPostmaster() {
	b, err := os.ReadFile(filepath.Join(p.data, "postmaster.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 {
		return
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	waitGroupEmpty(pid, 5*time.Second)
}

// PostmasterPID is the throwaway cluster's postmaster (0 if none), so
// tests can prove it is gone after Close.
func (p *Postgres) PostmasterPID() int {
	if p.Dir == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(p.data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	return pid
}

// redactURL drops the password from a URL for logs and errors.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
