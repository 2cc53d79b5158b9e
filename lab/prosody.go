package lab

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// prosody runs Prosody in the foreground as the prosody user, from a
// generated config, with all its state under dir.
type prosody struct {
	cfg        xmppConfig
	acct       account
	configFile string
}

func newProsody(cfg xmppConfig, ca *CA) (*prosody, error) {
	if _, err := exec.LookPath("prosody"); err != nil {
		return nil, err
	}
	acct, err := lookupAccount("prosody")
	if err != nil {
		return nil, err
	}
	if err := makeOwnedDir(cfg.Dir, acct); err != nil {
		return nil, err
	}
	cfg.DataDir = filepath.Join(cfg.Dir, "data")
	if err := os.Mkdir(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	hosts := append([]string{cfg.Domain}, cfg.OtherDomains...)
	for _, c := range cfg.Components {
		hosts = append(hosts, c.Domain)
	}
	if cfg.CertFile, cfg.KeyFile, err = ca.Issue(cfg.Dir, "server", hosts...); err != nil {
		return nil, err
	}
	p := &prosody{cfg: cfg, acct: acct, configFile: filepath.Join(cfg.Dir, "prosody.cfg.lua")}
	conf, err := render("prosody.cfg.lua.tmpl", cfg)
	if err != nil {
		return nil, err
	}
	if err := writeOwned(p.configFile, conf, acct); err != nil {
		return nil, err
	}
	if err := writeFiles(cfg, acct); err != nil {
		return nil, err
	}
	return p, chownTree(cfg.Dir, acct)
}

func (p *prosody) env() []string { return baseEnv(p.cfg.Dir) }

func (p *prosody) start(ctx context.Context) (*process, error) {
	// A pid file left by a crash (Kill) would make Prosody refuse to
	// start.
	if err := os.Remove(filepath.Join(p.cfg.Dir, "prosody.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	cmd := command(p.acct, p.env(), "prosody", "-F", "--config", p.configFile)
	cmd.Dir = p.cfg.Dir
	return startProcess(cmd, filepath.Join(p.cfg.Dir, "console.log"))
}

// stop sends SIGTERM, Prosody's graceful shutdown: it closes every stream
// and flushes storage, well under a second.
func (p *prosody) stop(ctx context.Context, proc *process) error {
	grace := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		grace = time.Until(dl)
	}
	proc.stop(syscall.SIGTERM, grace)
	return nil
}

// register uses prosodyctl, which writes the account file directly; it
// works whether the server runs or not. The password goes on stdin
// (adduser prompts twice) so that it never shows in a process list.
func (p *prosody) register(ctx context.Context, user, domain, password string) error {
	if strings.ContainsAny(password, "\r\n") {
		return errors.New("password contains a line break")
	}
	cmd := command(p.acct, p.env(), "prosodyctl", "--config", p.configFile, "adduser", user+"@"+domain)
	cmd.Stdin = strings.NewReader(password + "\n" + password + "\n")
	_, err := runOutput(ctx, cmd)
	return err
}

func (p *prosody) dumpStorage(ctx context.Context) ([]byte, error) {
	return dumpDir(p.cfg.DataDir)
}

func (p *prosody) logFiles() []string {
	return []string{filepath.Join(p.cfg.Dir, "console.log"), filepath.Join(p.cfg.Dir, "prosody.log")}
}

func (p *prosody) ports() map[string]string { return nil }
