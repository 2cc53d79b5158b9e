package clinkdtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
)

// Process is clinkd running in a process of its own: the binary built from
// cmd/clinkd, `clinkd serve` with cfg written to a config file. A
// benchmark runs clinkd this way to read its CPU time from /proc and its
// allocations from its metrics apart from the devices that drive it, which
// an in-process clinkd shares a process with.
type Process struct {
	cmd   *exec.Cmd
	admin string // its admin listener, host:port
	log   *LogBuffer
	done  chan struct{} // closed when the process has exited
	err   error         // its Wait error, set before done is closed
}

// MaxProcsEnv names the variable that sets the GOMAXPROCS of the clinkd
// processes StartProcess starts, and of nothing else.
const MaxProcsEnv = "CLINKDTEST_GOMAXPROCS"

// StartProcess builds clinkd, runs it with cfg until the test ends (then
// stops it with SIGTERM, as systemd does) and waits until it is ready
// (/readyz answers 200: linked, its database reachable). cfg's admin
// listener is replaced with a free loopback port of the lab's. The config
// file, secrets included, is written to a temporary directory that only
// this user can read; nothing secret is put on the command line.
//
// The process inherits the test's environment. GOMAXPROCS in it would
// also set the test's own (the devices'), so CLINKDTEST_GOMAXPROCS, when
// set, is clinkd's GOMAXPROCS alone: the benchmarks measure with it what
// docs/operators.md ("Capacity") advises.
func StartProcess(t testing.TB, cfg daemon.Config) *Process {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "clinkd")
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goCmd, "build", "-o", bin, "github.com/clinkme/clinkd/cmd/clinkd")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("clinkdtest: build clinkd: %v\n%s", err, out)
	}
	port, err := lab.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Listen = "127.0.0.1:" + strconv.Itoa(port)
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatalf("clinkdtest: config: %v", err)
	}
	config := filepath.Join(dir, "clinkd.yaml")
	if err := os.WriteFile(config, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Process{admin: cfg.Admin.Listen, log: &LogBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, "serve", "--config", config)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if n := os.Getenv(MaxProcsEnv); n != "" {
		p.cmd.Env = append(os.Environ(), "GOMAXPROCS="+n)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("clinkdtest: start clinkd: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			if p.err != nil {
				t.Errorf("clinkd (pid %d) exited: %v\n%s", p.cmd.Process.Pid, p.err, p.log)
			}
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
			t.Errorf("clinkd (pid %d) did not stop within 30 s of SIGTERM\n%s", p.cmd.Process.Pid, p.log)
		}
	})
	if err := p.waitReady(30 * time.Second); err != nil {
		t.Fatalf("clinkdtest: %v\n%s", err, p.log)
	}
	return p
}

func (p *Process) waitReady(within time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("clinkd exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return errors.New("clinkd was not ready within " + within.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PID is the process's ID, for lab.CPUTime.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Metric reads an unlabelled metric from the process's /metrics, e.g.
// go_memstats_alloc_bytes_total.
func (p *Process) Metric(ctx context.Context, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("clinkdtest: metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("clinkdtest: metrics: %w", err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("clinkdtest: no metric %s", name)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// Log is what the process wrote to its stdout and stderr so far.
func (p *Process) Log() string { return p.log.String() }
