package daemon_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// A wiretap forwards TCP connections to a target and keeps every byte
// that crosses it, per connection and direction: what an observer on the
// network between clinkd and the XMPP server would see.
type wiretap struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*tapped
	open  []net.Conn
}

type tapped struct {
	mu             sync.Mutex
	toServer, back bytes.Buffer
}

func newWiretap(t *testing.T, target string) *wiretap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wiretap{ln: ln, target: target}
	w.wg.Go(w.accept)
	t.Cleanup(func() {
		ln.Close()
		w.mu.Lock()
		for _, c := range w.open {
			c.Close()
		}
		w.mu.Unlock()
		w.wg.Wait()
	})
	return w
}

func (w *wiretap) Addr() string { return w.ln.Addr().String() }

func (w *wiretap) accept() {
	for {
		a, err := w.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", w.target)
		if err != nil {
			a.Close()
			continue
		}
		tc := &tapped{}
		w.mu.Lock()
		w.conns = append(w.conns, tc)
		w.open = append(w.open, a, b)
		w.mu.Unlock()
		w.wg.Go(func() { tc.copy(b, a, &tc.toServer) })
		w.wg.Go(func() { tc.copy(a, b, &tc.back) })
	}
}

func (tc *tapped) copy(dst, src net.Conn, rec *bytes.Buffer) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			tc.mu.Lock()
			rec.Write(buf[:n])
			tc.mu.Unlock()
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

// captures returns a copy of what crossed each connection so far: bytes
// sent towards the server, and back.
func (w *wiretap) captures() (toServer, back [][]byte) {
	w.mu.Lock()
	conns := append([]*tapped(nil), w.conns...)
	w.mu.Unlock()
	for _, tc := range conns {
		tc.mu.Lock()
		toServer = append(toServer, bytes.Clone(tc.toServer.Bytes()))
		back = append(back, bytes.Clone(tc.back.Bytes()))
		tc.mu.Unlock()
	}
	return toServer, back
}

// isTLSRecord reports whether b starts with a TLS handshake record
// (content type 22, version 3.x): a ClientHello or ServerHello.
func isTLSRecord(b []byte) bool {
	return len(b) >= 5 && b[0] == 0x16 && b[1] == 0x03
}

// TestLinkTLS proves the XEP-0114 link over TLS against the real ejabberd
// (an ejabberd_service listener with tls: true): clinkd verifies the
// server against the lab CA, links, serves a device, re-links by itself
// after ejabberd restarts and serves again; and a wiretap between the two
// sees only TLS records, never the stream, the handshake, the secret, the
// component's domain or a stanza. A server clinkd cannot verify (another
// CA, another name) gets no handshake: clinkd refuses it at the TLS
// stage, counted in clinkd_link_failures_total{stage="tls"}.
func TestLinkTLS(t *testing.T) {
	t.Parallel()
	srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: lab.Ejabberd, ComponentTLS: true})

	t.Run("links, re-links and serves", func(t *testing.T) {
		cfg := clinkdtest.Config(t, srv)
		tap := newWiretap(t, cfg.Link.Addr)
		cfg.Link.Addr = tap.Addr()
		cfg.Link.TLS = true
		cfg.Link.TLSCAFile = srv.CA.CertFile
		cfg.Link.TLSServerName = srv.Domain
		d := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
		pingThrough(t, srv, d)

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		waitMetric(t, d, "clinkd_link_reconnects_total", 1, 2*time.Minute)
		pingThrough(t, srv, d)
		if n := metric(t, d, "clinkd_link_up"); n != 1 {
			t.Errorf("clinkd_link_up = %v after re-linking, want 1", n)
		}

		toServer, back := tap.captures()
		if len(toServer) < 2 {
			t.Fatalf("the wiretap saw %d connections, want the first link and the re-link", len(toServer))
		}
		for i := range toServer {
			if len(toServer[i]) == 0 {
				continue // a connection attempt while ejabberd was down
			}
			if !isTLSRecord(toServer[i]) {
				t.Errorf("connection %d: clinkd's first bytes %q are not a TLS handshake record", i, head(toServer[i]))
			}
			if len(back[i]) > 0 && !isTLSRecord(back[i]) {
				t.Errorf("connection %d: the server's first bytes %q are not a TLS handshake record", i, head(back[i]))
			}
			for _, plain := range []string{"jabber:component:accept", "stream:stream", "<handshake", "urn:xmpp:ping",
				"disco#info", cfg.Link.Secret, cfg.Link.Domain} {
				if bytes.Contains(toServer[i], []byte(plain)) || bytes.Contains(back[i], []byte(plain)) {
					t.Errorf("connection %d: %q crossed the network in plaintext", i, plain)
				}
			}
		}
	})

	// The control: the same wiretap on a plaintext link (Prosody, which
	// cannot do better) reads the stream and the handshake, so what the
	// wiretap did not see above was hidden by TLS.
	t.Run("control: plaintext is readable", func(t *testing.T) {
		prosody := labtest.Server(t, lab.Prosody)
		cfg := clinkdtest.Config(t, prosody)
		tap := newWiretap(t, cfg.Link.Addr)
		cfg.Link.Addr = tap.Addr()
		d := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
		pingThrough(t, prosody, d)
		toServer, _ := tap.captures()
		if len(toServer) == 0 || !bytes.Contains(toServer[0], []byte("jabber:component:accept")) || !bytes.Contains(toServer[0], []byte("<handshake")) {
			t.Errorf("the wiretap did not read a plaintext link: %q", toServer)
		}
	})

	refused := func(t *testing.T, tune func(*daemon.Config)) {
		t.Helper()
		cfg := clinkdtest.Config(t, srv)
		cfg.Link.TLS = true
		cfg.Link.TLSCAFile = srv.CA.CertFile
		cfg.Link.TLSServerName = srv.Domain
		tune(&cfg)
		ctx, cancel := context.WithCancel(context.Background())
		d, err := daemon.New(ctx, cfg, clinkdtest.Logger(t))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		defer func() {
			cancel()
			<-done
		}()
		// Two failures: the first attempt and a retry after backoff.
		deadline := time.Now().Add(time.Minute)
		for sample(t, d, `clinkd_link_failures_total{stage="tls"}`) < 2 {
			if time.Now().After(deadline) {
				t.Fatalf(`clinkd_link_failures_total{stage="tls"} < 2 after a minute`)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := sample(t, d, "clinkd_link_reconnects_total"); n != 0 {
			t.Errorf("clinkd_link_reconnects_total = %v with a server clinkd cannot verify, want 0", n)
		}
		if s := d.Component().State(); s == component.Linked {
			t.Errorf("link state = %s with a server clinkd cannot verify", s)
		}
	}
	t.Run("another CA", func(t *testing.T) {
		other, err := lab.NewCA(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		refused(t, func(c *daemon.Config) { c.Link.TLSCAFile = other.CertFile })
	})
	t.Run("another name", func(t *testing.T) {
		refused(t, func(c *daemon.Config) { c.Link.TLSServerName = "xmpp.example.org" })
	})
}

func head(b []byte) []byte { return b[:min(len(b), 40)] }

// sample reads one sample of /metrics, 0 when it is absent (a counter
// vector has no sample for a label until it is first counted).
func sample(t *testing.T, d *daemon.Daemon, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s = %q", name, v)
			}
			return f
		}
	}
	return 0
}
