// Package clinkdtest runs clinkd in-process against the lab's real XMPP
// servers, or as a process of its own (StartProcess) where a benchmark
// reads its CPU time apart from the devices', and logs real devices in,
// for end-to-end tests.
//
//	srv := labtest.Server(t, lab.Prosody)
//	d := clinkdtest.Start(t, srv, nil)
//	alice := clinkdtest.NewDevice(t, srv)
//	alice.Ping(ctx, d.Component().Domain())
package clinkdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// Config returns a clinkd config linked to a component domain of srv
// leased for this test, with fast re-link timings and the admin listener
// on a free loopback port.
func Config(t testing.TB, srv *lab.XMPPServer) daemon.Config {
	t.Helper()
	comp := labtest.Component(t, srv)
	cfg := daemon.Defaults()
	cfg.Log.Level = "debug"
	cfg.Link = daemon.LinkConfig{
		Addr:         comp.Addr,
		Domain:       comp.Domain,
		Secret:       comp.Secret,
		ServerDomain: srv.Domain,
		BackoffMin:   50 * time.Millisecond,
		BackoffMax:   time.Second,
	}
	cfg.Admin.Listen = "127.0.0.1:0"
	return cfg
}

// Logger writes clinkd's log to the test log when -v is given, else
// discards it. Either way nothing is written after the test ends.
func Logger(t testing.TB) *slog.Logger {
	if !testing.Verbose() && os.Getenv("CLINKD_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// Start runs clinkd linked to srv until the test ends and waits until it
// is linked. tune, if not nil, adjusts the config first.
func Start(t testing.TB, srv *lab.XMPPServer, tune func(*daemon.Config)) *daemon.Daemon {
	t.Helper()
	cfg := Config(t, srv)
	if tune != nil {
		tune(&cfg)
	}
	return StartConfig(t, cfg, Logger(t))
}

// StartConfig runs clinkd with cfg until the test ends and waits until it
// is linked.
func StartConfig(t testing.TB, cfg daemon.Config, log *slog.Logger) *daemon.Daemon {
	t.Helper()
	d, _ := Run(t, cfg, log)
	return d
}

// Run is StartConfig for a test that stops clinkd itself: stop shuts it
// down gracefully and waits; calling it again, or the test's end, does
// nothing more.
func Run(t testing.TB, cfg daemon.Config, log *slog.Logger) (d *daemon.Daemon, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("clinkd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("clinkd Run = %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("clinkd did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := d.Component().WaitState(wctx, component.Linked); err != nil {
		t.Fatalf("clinkd did not link to %s: %v", cfg.Link.Addr, err)
	}
	return d, stop
}

// TLSConfig trusts the lab's CA for srv's domain.
func TLSConfig(srv *lab.XMPPServer) *tls.Config {
	return &tls.Config{RootCAs: srv.CA.Pool, ServerName: srv.Domain}
}

// NewDevice registers a fresh user on srv and logs a device in as it.
func NewDevice(t testing.TB, srv *lab.XMPPServer) *client.Client {
	t.Helper()
	user, pass := labtest.NewUser(t, srv)
	return Login(t, srv, user, pass)
}

// Login logs a device in as user and logs it out when the test ends.
func Login(t testing.TB, srv *lab.XMPPServer, user, pass string) *client.Client {
	t.Helper()
	c, err := client.Dial(t.Context(), client.Config{
		Addr:     srv.C2SAddr,
		JID:      jid.MustParse(user),
		Password: pass,
		TLS:      TLSConfig(srv),
	})
	if err != nil {
		t.Fatalf("login %s on %s: %v", user, srv.Kind, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// LogBuffer collects a clinkd's log, for tests that prove what it never
// logs.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything logged so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// CaptureLog returns a debug-level logger that writes into the buffer.
func CaptureLog() (*slog.Logger, *LogBuffer) {
	buf := &LogBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// KeyDirKeys are a key directory's keys made for a test: the files
// clinkd reads and the public keys devices are given.
type KeyDirKeys struct {
	SignerFile, VRFFile string
	Verifier, VRFKey    string
}

// NewKeyDirKeys makes the signer and VRF keys of a log named
// clink.lab.localhost/keydir in a temporary directory.
func NewKeyDirKeys(t testing.TB) KeyDirKeys {
	t.Helper()
	dir := t.TempDir()
	k := KeyDirKeys{SignerFile: filepath.Join(dir, "keydir.signer"), VRFFile: filepath.Join(dir, "keydir.vrf")}
	var err error
	if k.Verifier, err = keylog.GenerateKey("clink.lab.localhost/keydir", k.SignerFile); err != nil {
		t.Fatal(err)
	}
	if k.VRFKey, err = keylog.GenerateVRFKey("clink.lab.localhost/keydir", k.VRFFile); err != nil {
		t.Fatal(err)
	}
	return k
}

// Configure turns the key directory on in cfg with these keys.
func (k KeyDirKeys) Configure(cfg *daemon.Config) {
	cfg.KeyDir.SignerKeyFile, cfg.KeyDir.VRFKeyFile = k.SignerFile, k.VRFFile
}
