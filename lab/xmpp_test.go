package lab_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// login opens a c2s session the way a ClinkMe client does: StartTLS with
// the certificate verified against the lab CA, SCRAM-SHA-1 (PLAIN as a
// fallback the server may offer), resource binding.
func login(ctx context.Context, srv *lab.XMPPServer, user, password string) (*xmpp.Session, error) {
	j, err := jid.Parse(user)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", srv.C2SAddr)
	if err != nil {
		return nil, err
	}
	s, err := xmpp.NewClientSession(ctx, j, conn,
		xmpp.StartTLS(&tls.Config{RootCAs: srv.CA.Pool, ServerName: srv.Domain, MinVersion: tls.VersionTLS12}),
		xmpp.SASL("", password, sasl.ScramSha1, sasl.Plain),
		xmpp.BindResource(),
	)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// connectComponent completes the XEP-0114 handshake for c.
func connectComponent(ctx context.Context, srv *lab.XMPPServer, c lab.Component) (*xmpp.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		return nil, err
	}
	s, err := component.NewSession(ctx, jid.MustParse(c.Domain), []byte(c.Secret), conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

func closeSession(s *xmpp.Session) {
	s.Close()
	s.Conn().Close()
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestLogin proves that each shared server accepts a TLS login of a
// registered user with a certificate valid for its domain, and refuses a
// wrong password and a login that skips StartTLS.
func TestLogin(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t, 30*time.Second)
			user, pass := labtest.NewUser(t, srv)

			s, err := login(ctx, srv, user, pass)
			if err != nil {
				t.Fatalf("login(%s) = %v, want a session\n%s", user, err, srv.LogTail())
			}
			defer closeSession(s)
			if got := s.LocalAddr().Bare().String(); got != user {
				t.Errorf("bound JID = %s, want %s/...", s.LocalAddr(), user)
			}
			if v := s.ConnectionState().Version; v < tls.VersionTLS12 {
				t.Errorf("TLS version = %x, want >= TLS 1.2", v)
			}

			if s, err := login(ctx, srv, user, pass+"x"); err == nil {
				closeSession(s)
				t.Errorf("login with a wrong password = nil error, want a SASL failure")
			}

			// Without StartTLS the server must not offer SASL at all.
			conn, err := net.Dial("tcp", srv.C2SAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if s, err := xmpp.NewClientSession(ctx, jid.MustParse(user), conn,
				xmpp.SASL("", pass, sasl.ScramSha1, sasl.Plain), xmpp.BindResource()); err == nil {
				closeSession(s)
				t.Errorf("login without StartTLS = nil error, want a refusal")
			}
		})
	}
}

// TestComponentHandshake proves that every shared server accepts a leased
// component domain with its secret and refuses a wrong secret.
func TestComponentHandshake(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t, 30*time.Second)
			c := labtest.Component(t, srv)

			bad := c
			bad.Secret += "x"
			if s, err := connectComponent(ctx, srv, bad); err == nil {
				closeSession(s)
				t.Errorf("handshake with a wrong secret for %s = nil error, want not-authorized", c.Domain)
			}

			s, err := connectComponent(ctx, srv, c)
			if err != nil {
				t.Fatalf("handshake for %s = %v, want a session\n%s", c.Domain, err, srv.LogTail())
			}
			closeSession(s)
		})
	}
}

// TestLeasesAreExclusive proves that two tests never hold the same
// component domain at once.
func TestLeasesAreExclusive(t *testing.T) {
	t.Parallel()
	srv := labtest.Servers(t)[0]
	seen := map[string]bool{}
	for range labtest.ComponentPool {
		c := labtest.Component(t, srv)
		if seen[c.Domain] {
			t.Fatalf("Component leased %s twice", c.Domain)
		}
		seen[c.Domain] = true
	}
}

// TestStorage proves that both servers keep offline messages and the
// archive (MAM) on, and that DumpStorage shows accounts and messages.
func TestStorage(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t, 60*time.Second)
			alice, apass := labtest.NewUser(t, srv)
			bob, _ := labtest.NewUser(t, srv)
			s, err := login(ctx, srv, alice, apass)
			if err != nil {
				t.Fatal(err)
			}
			defer closeSession(s)
			body := "lab-storage-probe-" + strings.Split(bob, "@")[0]
			msg := stanza.Message{To: jid.MustParse(bob), Type: stanza.ChatMessage}
			if err := s.Send(ctx, msg.Wrap(xmlstream.Wrap(xmlstream.Token(xml.CharData(body)), xml.StartElement{Name: xml.Name{Local: "body"}}))); err != nil {
				t.Fatal(err)
			}
			// The server stores asynchronously: poll the dump.
			bobLocal := strings.Split(bob, "@")[0]
			var dump []byte
			for {
				if dump, err = srv.DumpStorage(ctx); err != nil {
					t.Fatal(err)
				}
				// Once in bob's offline store and once in each
				// archive (alice's and bob's).
				if bytes.Count(dump, []byte(body)) >= 3 {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("DumpStorage has %q %d times, want 3 (offline + two MAM archives)\n%s",
						body, bytes.Count(dump, []byte(body)), dump)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if !bytes.Contains(dump, []byte(bobLocal)) {
				t.Errorf("DumpStorage does not name account %s", bobLocal)
			}
			if bytes.Contains(dump, []byte(`"`+apass+`"`)) || bytes.Contains(dump, []byte(`<<"`+apass+`">>`)) {
				t.Errorf("DumpStorage holds alice's password in plain text")
			}
		})
	}
}

// TestRestart proves that Stop/Start and Kill/Start bring a private
// server back on the same ports with the same accounts.
func TestRestart(t *testing.T) {
	t.Parallel()
	for _, kind := range lab.Kinds() {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t, 2*time.Minute)
			srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: kind})
			user, pass := labtest.NewUser(t, srv)
			c := labtest.Component(t, srv)
			c2s, comp := srv.C2SAddr, srv.ComponentAddr

			check := func(step string) {
				t.Helper()
				if srv.C2SAddr != c2s || srv.ComponentAddr != comp {
					t.Errorf("after %s: addrs = %s %s, want %s %s", step, srv.C2SAddr, srv.ComponentAddr, c2s, comp)
				}
				s, err := login(ctx, srv, user, pass)
				if err != nil {
					t.Fatalf("after %s: login = %v\n%s", step, err, srv.LogTail())
				}
				closeSession(s)
				cs, err := connectComponent(ctx, srv, c)
				if err != nil {
					t.Fatalf("after %s: component = %v\n%s", step, err, srv.LogTail())
				}
				closeSession(cs)
			}

			t0 := time.Now()
			if err := srv.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s restart took %v", kind, time.Since(t0))
			check("Restart")

			if err := srv.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := net.DialTimeout("tcp", c2s, time.Second); err == nil {
				t.Errorf("after Stop: c2s port %s still accepts", c2s)
			}
			if err := srv.Start(ctx); err != nil {
				t.Fatal(err)
			}
			check("Stop+Start")

			srv.Kill()
			if err := srv.Start(ctx); err != nil {
				t.Fatal(err)
			}
			check("Kill+Start")
		})
	}
}

// TestCloseLeavesNothing proves that Close stops every process a server
// started (its process group, anything naming its directory, and no new
// epmd), frees its ports, and is idempotent; and that a closed server
// cannot be started again.
func TestCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, kind := range lab.Kinds() {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			epmdBefore := epmds()
			srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: kind})
			pgid := srv.PGID()
			if pgid == 0 {
				t.Fatal("PGID() = 0 for a running server")
			}
			if err := srv.Close(); err != nil {
				t.Fatal(err)
			}
			if err := srv.Close(); err != nil {
				t.Errorf("second Close() = %v, want nil", err)
			}
			assertNoProcesses(t, pgid, srv.Dir)
			for pid, cmd := range epmds() {
				if _, ok := epmdBefore[pid]; !ok {
					t.Errorf("new epmd left running: pid %d %s", pid, cmd)
				}
			}
			for _, addr := range []string{srv.C2SAddr, srv.ComponentAddr} {
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					c.Close()
					t.Errorf("after Close: %s still accepts", addr)
				}
			}
			if err := srv.Start(t.Context()); err == nil {
				t.Error("Start after Close = nil error, want an error")
			}
		})
	}
}

// TestStartFailure proves that a server that cannot start returns at
// once with a clear error: naming the taken port, or carrying the tail of
// the server's log when the server itself gives up.
func TestStartFailure(t *testing.T) {
	t.Parallel()
	for _, kind := range lab.Kinds() {
		t.Run(string(kind)+"/port-taken", func(t *testing.T) {
			t.Parallel()
			srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: kind})
			if err := srv.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("tcp", srv.C2SAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			err = srv.Start(ctxFor(t, time.Minute))
			if err == nil || !strings.Contains(err.Error(), srv.C2SAddr) {
				t.Errorf("Start with the c2s port taken = %v, want an error naming %s", err, srv.C2SAddr)
			}
			if srv.Running() {
				t.Error("Running() = true after a failed Start")
			}
		})
		t.Run(string(kind)+"/bad-config", func(t *testing.T) {
			t.Parallel()
			// ejabberd's config check rejects a component domain
			// with a space (Prosody takes it); Prosody cannot parse a
			// config line that is not Lua.
			opts := lab.XMPPOptions{
				Kind: kind, Dir: t.TempDir(), Domain: labtest.Domain, CA: labtest.CA(t),
				Components: []lab.Component{{Domain: "not a domain", Secret: "x"}},
			}
			if kind == lab.Prosody {
				opts.Components = labtest.NewComponents(1)
				opts.ProsodyAuth = &lab.ProsodyAuth{Module: "internal_hashed", PluginDir: t.TempDir(), Config: []string{"this is not Lua"}}
			}
			_, err := lab.StartXMPP(ctxFor(t, time.Minute), opts)
			if err == nil {
				t.Fatal("StartXMPP with a bad component domain = nil error, want an error")
			}
			t.Logf("StartXMPP error (as a user sees it):\n%v", err)
			if !strings.Contains(err.Error(), "==> ") {
				t.Errorf("StartXMPP error = %q, want the tail of the server log", err)
			}
		})
	}
}

func epmds() map[int]string {
	m := map[int]string{}
	for _, p := range lab.Processes() {
		if f := strings.Fields(p.Cmdline); len(f) > 0 && filepath.Base(f[0]) == "epmd" {
			m[p.PID] = p.Cmdline
		}
	}
	return m
}

// assertNoProcesses fails t if any live process is in group pgid or
// mentions dir on its command line.
func assertNoProcesses(t *testing.T, pgid int, dir string) {
	t.Helper()
	for _, p := range lab.Processes() {
		if p.State == "Z" {
			continue
		}
		if p.PGID == pgid || (dir != "" && strings.Contains(p.Cmdline, dir)) {
			t.Errorf("process left behind: %s", fmt.Sprintf("pid %d pgid %d %q", p.PID, p.PGID, p.Cmdline))
		}
	}
}

// TestFast proves that Fast lifts the c2s shapers and rate limits in the
// generated configs (and only then), and that a Fast server still serves
// logins.
func TestFast(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		kind       lab.ServerKind
		file       string
		slow, fast string // present only without Fast, only with Fast
	}{
		{lab.Prosody, "prosody.cfg.lua", `rate = "10kb/s"`, ""},
		{lab.Ejabberd, "ejabberd.yml", "c2s_shaper: normal", "c2s_shaper: none"},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			t.Parallel()
			shared, err := os.ReadFile(filepath.Join(labtest.Server(t, tc.kind).Dir, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: tc.kind, Fast: true})
			fast, err := os.ReadFile(filepath.Join(srv.Dir, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(shared, []byte(tc.slow)) || bytes.Contains(fast, []byte(tc.slow)) {
				t.Errorf("%q: in the default config = %v, in the Fast one = %v; want true, false",
					tc.slow, bytes.Contains(shared, []byte(tc.slow)), bytes.Contains(fast, []byte(tc.slow)))
			}
			if tc.fast != "" && (!bytes.Contains(fast, []byte(tc.fast)) || bytes.Contains(shared, []byte(tc.fast))) {
				t.Errorf("%q: in the Fast config = %v, in the default one = %v; want true, false",
					tc.fast, bytes.Contains(fast, []byte(tc.fast)), bytes.Contains(shared, []byte(tc.fast)))
			}
			user, pass := labtest.NewUser(t, srv)
			s, err := login(ctxFor(t, 30*time.Second), srv, user, pass)
			if err != nil {
				t.Fatalf("login on a Fast server = %v", err)
			}
			closeSession(s)
		})
	}
}

// TestFiles: Files land where FilePath says, owned by the server's user
// and readable by it alone; a name that is not a base name is refused.
func TestFiles(t *testing.T) {
	t.Parallel()
	opts := lab.XMPPOptions{
		Kind: lab.Prosody, Dir: t.TempDir(),
		Files: []lab.File{
			{Name: "secret", Data: []byte("s3cret")},
			{Name: "program", Data: []byte("#!/bin/sh\n"), Mode: 0o700},
		},
	}
	srv := labtest.NewXMPP(t, opts)
	want := filepath.Join(srv.Dir, "files", "secret")
	if got := opts.FilePath("secret"); got != want {
		t.Errorf("FilePath(secret) = %s, want %s", got, want)
	}
	for name, mode := range map[string]os.FileMode{"secret": 0o600, "program": 0o700} {
		fi, err := os.Stat(opts.FilePath(name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), mode)
		}
		if os.Geteuid() == 0 {
			st := fi.Sys().(*syscall.Stat_t)
			u, err := user.Lookup("prosody")
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(st.Uid) != u.Uid {
				t.Errorf("%s owner uid = %d, want the prosody user's %s", name, st.Uid, u.Uid)
			}
		}
	}
	bad := lab.XMPPOptions{Kind: lab.Prosody, Dir: t.TempDir(), Domain: labtest.Domain, CA: labtest.CA(t), Files: []lab.File{{Name: "../escape"}}}
	if _, err := lab.StartXMPP(ctxFor(t, time.Minute), bad); err == nil || !strings.Contains(err.Error(), "not a base name") {
		t.Errorf("StartXMPP with file ../escape = %v, want a refusal", err)
	}
}

// TestComponentTLS proves that the lab's ejabberd with ComponentTLS speaks
// TLS 1.2 or newer on its component port, with a certificate the lab CA
// vouches for, completes the XEP-0114 handshake inside it, and refuses a
// plaintext stream header; and that Prosody, which has no TLS on
// component ports, is refused at once.
func TestComponentTLS(t *testing.T) {
	t.Parallel()
	srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: lab.Ejabberd, ComponentTLS: true})
	if !srv.ComponentTLS {
		t.Fatal("ComponentTLS not reported by the server")
	}
	ctx := ctxFor(t, time.Minute)
	c := labtest.Component(t, srv)
	for _, name := range []string{srv.Domain, "localhost", "127.0.0.1"} {
		d := tls.Dialer{Config: &tls.Config{RootCAs: srv.CA.Pool, ServerName: name, MinVersion: tls.VersionTLS12}}
		conn, err := d.DialContext(ctx, "tcp", c.Addr)
		if err != nil {
			t.Fatalf("TLS to the component port as %s: %v\n%s", name, err, srv.LogTail())
		}
		if name != srv.Domain {
			conn.Close()
			continue
		}
		s, err := component.NewSession(ctx, jid.MustParse(c.Domain), []byte(c.Secret), conn)
		if err != nil {
			conn.Close()
			t.Fatalf("handshake inside TLS for %s = %v, want a session\n%s", c.Domain, err, srv.LogTail())
		}
		closeSession(s)
	}
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		d := tls.Dialer{Config: &tls.Config{RootCAs: srv.CA.Pool, ServerName: srv.Domain, MinVersion: v, MaxVersion: v}}
		if conn, err := d.DialContext(ctx, "tcp", c.Addr); err == nil {
			conn.Close()
			t.Errorf("TLS version %x accepted on the component port, want TLS 1.2 or newer only", v)
		}
	}
	// A plaintext component stream is not answered as XMPP.
	if s, err := connectComponent(ctxFor(t, 10*time.Second), srv, c); err == nil {
		closeSession(s)
		t.Error("plaintext handshake on a TLS component port = nil error, want a failure")
	}

	_, err := lab.StartXMPP(ctx, lab.XMPPOptions{Kind: lab.Prosody, Dir: t.TempDir(), Domain: labtest.Domain, CA: labtest.CA(t), ComponentTLS: true})
	if err == nil || !strings.Contains(err.Error(), "no TLS on component ports") {
		t.Errorf("StartXMPP(Prosody, ComponentTLS) = %v, want a refusal", err)
	}
}
