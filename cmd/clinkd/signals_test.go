package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// serveChild is `clinkd serve` running as a child process, its stderr
// collected line by line.
type serveChild struct {
	cmd    *exec.Cmd
	stderr io.ReadCloser
	mu     sync.Mutex
	lines  []string
	wake   chan struct{}
	done   chan struct{} // closed when the process has exited
	err    error         // its Wait error, set before done is closed
}

func startServe(t *testing.T, config string, flags ...string) *serveChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"serve", "--config", config}, flags...)...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &serveChild{cmd: cmd, stderr: stderr, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
	}()
	go func() {
		// Wait closes the pipe: every line is read first, so that the
		// last lines before an exit are never lost to line.
		<-read
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// line waits for a stderr line matching re and returns its submatches.
func (c *serveChild) line(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.After(time.Minute)
	for seen, exited := 0, false; ; {
		c.mu.Lock()
		lines := c.lines[seen:]
		c.mu.Unlock()
		for _, l := range lines {
			seen++
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		}
		if exited {
			t.Fatalf("clinkd exited (%v) before a line matching %s:\n%s", c.err, re, c.all())
		}
		select {
		case <-c.wake:
		case <-c.done:
			exited = true // every line is in: look once more
		case <-deadline:
			t.Fatalf("no line matching %s:\n%s", re, c.all())
		}
	}
}

func (c *serveChild) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// metric returns the value of an unlabelled metric from /metrics.
func metric(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no metric %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSignals runs `clinkd serve` as a child process against a real
// server, as systemd would: SIGHUP with a renewed certificate, a rotated
// TURN secret and new limits changes what the next client sees without
// dropping the link or a held timed message, names what needs a restart,
// and keeps the running configuration when the new one does not load; a
// log reader that goes away (SIGPIPE) does not kill it; SIGTERM stops it
// with exit status 0. (Before this change SIGHUP killed clinkd on the
// spot, without a log line.)
func TestSignals(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) { testSignals(t, srv) })
	}
}

func testSignals(t *testing.T, srv *lab.XMPPServer) {
	t.Parallel()
	dir := t.TempDir()
	comp := labtest.Component(t, srv)
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ca := labtest.CA(t)
	issue := func(name string) (cert, key []byte) {
		t.Helper()
		c, k, err := ca.Issue(filepath.Join(dir, name), "public", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		cert, _ = os.ReadFile(c)
		key, _ = os.ReadFile(k)
		return cert, key
	}
	os.Mkdir(filepath.Join(dir, "a"), 0o700)
	os.Mkdir(filepath.Join(dir, "b"), 0o700)
	certA, keyA := issue("a")
	certB, keyB := issue("b")
	certFile, keyFile := write("public.pem", string(certA)), write("public.key", string(keyA))
	secretA, secretB := "turn secret one, long enough", "turn secret two, long enough"
	turnFile := write("turn.secret", secretA)
	secretFile := write("component.secret", comp.Secret)
	configText := func(level string, extra string) string {
		return fmt.Sprintf(`log:
  level: %s
link:
  addr: %s
  domain: %s
  secret_file: %s
  server_domain: %s
  backoff_min: 50ms
admin:
  listen: 127.0.0.1:0
public:
  listen: 127.0.0.1:0
  cert_file: %s
  key_file: %s
turn:
  services: ["turn:127.0.0.1:3478"]
  secret_file: %s
expiry:
  min_period: 1s
%s`, level, comp.Addr, comp.Domain, secretFile, srv.Domain, certFile, keyFile, turnFile, extra)
	}
	config := write("clinkd.yaml", configText("info", ""))

	c := startServe(t, config)
	m := c.line(t, regexp.MustCompile(`msg="clinkd serving".* admin=(\S+) public=https://(\S+)`))
	admin, public := m[1], m[2]
	c.line(t, regexp.MustCompile(`msg="xmpp link up"`))

	// A held timed message, and a device that asks for TURN credentials.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	domain := jid.MustParse(comp.Domain)
	aj, ap := labtest.NewUser(t, srv)
	bj, _ := labtest.NewUser(t, srv)
	a := clinkdtest.Login(t, srv, aj, ap)
	alice, bob := clinkdtest.Identity(t, "alice", aj), clinkdtest.Identity(t, "bob", bj)
	now := time.Now().UTC().Truncate(time.Second)
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: bj, Key: bob.PublicKey()}},
		envelope.Header{ID: "held-1", Time: now, Expires: now.Add(10 * time.Minute)}, envelope.Content{Kind: envelope.KindText, Text: "held"})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SendEnvelope(ctx, domain, jid.MustParse(bj), env); err != nil {
		t.Fatal(err)
	}
	own, _ := address.AtComponent(jid.MustParse(aj), domain)
	if err := a.Ping(ctx, own); err != nil {
		t.Fatal(err)
	}
	// The message for bob and, once it has come back through the server,
	// the copy for alice's other devices.
	const held = 2
	for deadline := time.Now().Add(time.Minute); metric(t, admin, "clinkd_expiry_held_messages") != held; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v held before SIGHUP, want the timed message and its copy", metric(t, admin, "clinkd_expiry_held_messages"))
		}
	}
	turnPassword := func() (user, pass string) {
		t.Helper()
		svcs, err := a.ExternalServices(ctx, domain)
		if err != nil || len(svcs) == 0 {
			t.Fatalf("XEP-0215: %v, %v", svcs, err)
		}
		return svcs[0].Username, svcs[0].Password
	}
	mac := func(secret, user string) string {
		h := hmac.New(sha1.New, []byte(secret))
		h.Write([]byte(user))
		return base64.StdEncoding.EncodeToString(h.Sum(nil))
	}
	if u, p := turnPassword(); p != mac(secretA, u) {
		t.Fatal("TURN credential not made with the first secret")
	}
	servedCert := func() []byte {
		t.Helper()
		conn, err := tls.Dial("tcp", public, &tls.Config{RootCAs: ca.Pool})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	before := servedCert()

	// Renew the certificate, rotate the TURN secret, change the log
	// level and a limit, and a setting that needs a restart; then SIGHUP.
	write("public.pem", string(certB))
	write("public.key", string(keyB))
	write("turn.secret", secretB)
	write("clinkd.yaml", strings.Replace(configText("debug", "relay:\n  per_minute: 30\n"), "backoff_min: 50ms", "backoff_min: 60ms", 1))
	reconnects := metric(t, admin, "clinkd_link_reconnects_total")
	if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	r := c.line(t, regexp.MustCompile(`msg="configuration reloaded".*needs_restart=(\S+)`))
	if !strings.Contains(r[0], "relay.per_minute") || !strings.Contains(r[0], "log.level") || !strings.Contains(r[1], "link.backoff_min") {
		t.Errorf("reload line %q: want relay.per_minute and log.level changed, link.backoff_min named as needing a restart", r[0])
	}
	if after := servedCert(); string(after) == string(before) {
		t.Error("the public listener serves the old certificate after SIGHUP")
	}
	if u, p := turnPassword(); p != mac(secretB, u) {
		t.Error("TURN credentials after SIGHUP are not made with the rotated secret")
	}
	if got := metric(t, admin, "clinkd_link_reconnects_total"); got != reconnects {
		t.Errorf("the link was re-made on SIGHUP (%v reconnects, was %v)", got, reconnects)
	}
	if got := metric(t, admin, "clinkd_expiry_held_messages"); got != held {
		t.Errorf("%v timed messages held after SIGHUP, want %v", got, held)
	}

	// A configuration that does not load is refused whole.
	write("clinkd.yaml", "link: [this is not a map\n")
	c.cmd.Process.Signal(syscall.SIGHUP)
	c.line(t, regexp.MustCompile(`msg="SIGHUP: configuration not reloaded; the running one stays"`))
	if err := a.Ping(ctx, own); err != nil {
		t.Fatalf("clinkd stopped serving after a bad reload: %v", err)
	}

	// The log reader goes away; the next log line (another SIGHUP) meets
	// a closed pipe, and clinkd serves on.
	c.stderr.Close()
	c.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(200 * time.Millisecond)
	if err := a.Ping(ctx, own); err != nil {
		t.Fatalf("clinkd stopped serving after its log reader went away: %v", err)
	}
	if got := metric(t, admin, "clinkd_expiry_held_messages"); got != held {
		t.Errorf("%v timed messages held after SIGPIPE, want %v", got, held)
	}

	// SIGTERM: a clean stop, exit status 0.
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.done:
		if c.err != nil {
			t.Errorf("clinkd serve after SIGTERM: %v, want exit status 0", c.err)
		}
	case <-time.After(time.Minute):
		t.Fatal("clinkd did not stop within a minute of SIGTERM")
	}
}
