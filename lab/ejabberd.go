package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ejabberd runs `ejabberdctl foreground` as the ejabberd user, so the
// Erlang VM is a child of the lab (in its process group) rather than a
// detached daemon, with its config dir, spool, logs and Erlang cookie under
// dir.
type ejabberd struct {
	cfg  xmppConfig
	acct account
	home string // HOME of the VM: holds the private .erlang.cookie
}

func newEjabberd(cfg xmppConfig, ca *CA) (*ejabberd, error) {
	if _, err := exec.LookPath("ejabberdctl"); err != nil {
		return nil, err
	}
	acct, err := lookupAccount("ejabberd")
	if err != nil {
		return nil, err
	}
	if err := makeOwnedDir(cfg.Dir, acct); err != nil {
		return nil, err
	}
	e := &ejabberd{acct: acct, home: filepath.Join(cfg.Dir, "home")}
	cfg.DataDir = filepath.Join(cfg.Dir, "db")
	cfg.LogDir = filepath.Join(cfg.Dir, "logs")
	for _, d := range []string{cfg.DataDir, cfg.LogDir, e.home, filepath.Join(cfg.Dir, "dump")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	if cfg.ports == nil {
		cfg.ports = portPicker{cfg.C2SPort: true}
	}
	if cfg.DistPort, err = cfg.ports.next(); err != nil {
		return nil, err
	}
	if cfg.APIPort, err = cfg.ports.next(); err != nil {
		return nil, err
	}
	// The CA's own file may sit where the ejabberd user cannot read it.
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	cfg.CAFile = filepath.Join(cfg.Dir, "ca.pem")
	if err := writeOwned(cfg.CAFile, caPEM, acct); err != nil {
		return nil, err
	}
	hosts := append([]string{cfg.Domain}, cfg.OtherDomains...)
	for _, c := range cfg.Components {
		hosts = append(hosts, c.Domain)
	}
	if cfg.CertFile, cfg.KeyFile, err = ca.Issue(cfg.Dir, "server", hosts...); err != nil {
		return nil, err
	}
	if cfg.ComponentTLS {
		if cfg.ComponentCertFile, err = componentCert(cfg.Dir, cfg.Domain, ca, acct); err != nil {
			return nil, err
		}
	}
	e.cfg = cfg
	if err := writeOwner(cfg.Dir); err != nil {
		return nil, err
	}
	for name, tmpl := range map[string]string{"ejabberd.yml": "ejabberd.yml.tmpl", "ejabberdctl.cfg": "ejabberdctl.cfg.tmpl"} {
		data, err := render(tmpl, cfg)
		if err != nil {
			return nil, err
		}
		if err := writeOwned(filepath.Join(cfg.Dir, name), data, acct); err != nil {
			return nil, err
		}
	}
	// inetrc makes "localhost" (the node's host) resolve without DNS;
	// ejabberdctl takes it from the config dir.
	inetrc, err := os.ReadFile("/etc/ejabberd/inetrc")
	if err != nil {
		return nil, err
	}
	if err := writeOwned(filepath.Join(cfg.Dir, "inetrc"), inetrc, acct); err != nil {
		return nil, err
	}
	// A cookie of our own, readable by the ejabberd user only, instead
	// of the system ejabberd's: only this lab's ejabberdctl can drive the
	// node. Erlang reads it from $HOME, so it never shows in ps.
	cookie := make([]byte, 20)
	if _, err := rand.Read(cookie); err != nil {
		return nil, err
	}
	if err := writeOwned(filepath.Join(e.home, ".erlang.cookie"), []byte(hex.EncodeToString(cookie)), acct); err != nil {
		return nil, err
	}
	if err := os.Chmod(filepath.Join(e.home, ".erlang.cookie"), 0o400); err != nil {
		return nil, err
	}
	if err := writeFiles(cfg, acct); err != nil {
		return nil, err
	}
	return e, chownTree(cfg.Dir, acct)
}

// componentCert issues the component listeners' certificate, for domain,
// "localhost" and 127.0.0.1 (clinkd verifies the name it dials, or
// link.tls_server_name), and writes it with its key into one file, as
// ejabberd's listener certfile wants them.
func componentCert(dir, domain string, ca *CA, acct account) (string, error) {
	certFile, keyFile, err := ca.Issue(dir, "component", domain, "localhost", "127.0.0.1")
	if err != nil {
		return "", err
	}
	var pem []byte
	for _, f := range []string{certFile, keyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		pem = append(pem, b...)
	}
	both := filepath.Join(dir, "component-chain-and-key.pem")
	if err := writeOwned(both, pem, acct); err != nil {
		return "", err
	}
	return both, nil
}

// ctl builds an ejabberdctl command for this node.
func (e *ejabberd) ctl(args ...string) *exec.Cmd {
	all := append([]string{"--config-dir", e.cfg.Dir, "--logs", e.cfg.LogDir, "--spool", e.cfg.DataDir}, args...)
	cmd := command(e.acct, baseEnv(e.home), "ejabberdctl", all...)
	cmd.Dir = e.cfg.DataDir
	return cmd
}

func (e *ejabberd) start(ctx context.Context) (*process, error) {
	if err := os.Remove(filepath.Join(e.cfg.Dir, "ejabberd.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return startProcess(e.ctl("foreground"), filepath.Join(e.cfg.LogDir, "console.log"))
}

// stop sends SIGTERM to the Erlang VM (its pid is in EJABBERD_PID_PATH):
// since OTP 19 that runs init:stop, so ejabberd stops its listeners, closes
// every stream and Mnesia just as `ejabberdctl stop` does, in about 1 s
// instead of 3 (ejabberdctl first boots a VM of its own). Without a pid
// file it falls back to ejabberdctl stop. What is left after the deadline
// is killed.
func (e *ejabberd) stop(ctx context.Context, p *process) error {
	grace := 20 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		grace = time.Until(dl)
	}
	// Only the VM gets the signal: erl_child_setup, in the same group,
	// must outlive it or the VM aborts with a crash dump.
	b, err := os.ReadFile(filepath.Join(e.cfg.Dir, "ejabberd.pid"))
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	switch {
	case err == nil && perr == nil && pid > 1:
		_ = syscall.Kill(pid, syscall.SIGTERM)
	default:
		_, _ = runOutput(ctx, e.ctl("stop"))
	}
	p.stop(0, grace)
	return nil
}

// register uses ejabberd's register command through the loopback HTTP
// API (see the template): the same code path as `ejabberdctl register`,
// a thousand times faster, and the password is not on a command line.
func (e *ejabberd) register(ctx context.Context, user, domain, password string) error {
	body, err := json.Marshal(map[string]string{"user": user, "host": domain, "password": password})
	if err != nil {
		return err
	}
	url := "http://" + loopback(e.cfg.APIPort) + "/api/register"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	// No keep-alive: an idle connection would outlive a restart of the
	// server, and registrations are rare enough not to need one.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP API: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// dumpStorage dumps the whole Mnesia database (accounts in passwd, the
// archive in archive_msg, offline_msg, rosters, ...) as Erlang terms. The
// node writes the file, so this works only while it runs; reading the
// DETS files instead would miss delayed writes.
func (e *ejabberd) dumpStorage(ctx context.Context) ([]byte, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	file := filepath.Join(e.cfg.Dir, "dump", "mnesia-"+hex.EncodeToString(rnd[:])+".txt")
	defer os.Remove(file)
	if _, err := runOutput(ctx, e.ctl("dump", file)); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read dump: %w", err)
	}
	return data, nil
}

func (e *ejabberd) logFiles() []string {
	return []string{
		filepath.Join(e.cfg.LogDir, "console.log"),
		filepath.Join(e.cfg.LogDir, "error.log"),
		filepath.Join(e.cfg.LogDir, "ejabberd.log"),
	}
}

func (e *ejabberd) ports() map[string]string {
	return map[string]string{"erlang-dist": loopback(e.cfg.DistPort), "http-api": loopback(e.cfg.APIPort)}
}
