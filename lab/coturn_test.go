package lab_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/clinkme/clinkd/internal/turnprobe"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// uclient runs coturn's own test client against addr: one client, one
// message to a loopback peer through a relay allocated with TURN REST
// credentials for user derived from secret (each user may hold only a few
// allocations at once: the quota). extra adds flags (-t for TCP).
func uclient(ctx context.Context, user, secret, addr string, extra ...string) ([]byte, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	args := []string{"-y", "-n", "1", "-m", "1", "-l", "100", "-p", port}
	if secret != "" {
		args = append(args, "-W", secret, "-u", user)
	}
	args = append(args, extra...)
	args = append(args, "127.0.0.1")
	return exec.CommandContext(ctx, "turnutils_uclient", args...).CombinedOutput()
}

// TestCoturnAllocation proves that the shared coturn grants a relay
// allocation (and relays to a loopback peer) to TURN REST credentials
// made with its secret, over UDP and TCP, and refuses another secret.
// TURN over TLS is not in the table: turnutils_uclient -S -t -y completed
// the TLS handshake and then hung in most runs here (it passed once), so
// the TLS listener is proved by TestCoturnTLSCertificate and the Go TURN
// client's tests.
func TestCoturnAllocation(t *testing.T) {
	t.Parallel()
	c := labtest.Coturn(t)
	for _, tc := range []struct {
		name   string
		secret string
		addr   string
		extra  []string
		ok     bool
	}{
		{"udp", c.Secret, c.UDPAddr, nil, true},
		{"tcp", c.Secret, c.TCPAddr, []string{"-t"}, true},
		{"wrong-secret", c.Secret + "x", c.UDPAddr, nil, false},
		// Credentials must compute what coturn expects: pass them as a
		// long-term username and password instead of the secret.
		{"credentials", "", c.UDPAddr, credentialFlags(c), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			out, err := uclient(ctx, "alice-"+tc.name, tc.secret, tc.addr, tc.extra...)
			if (err == nil) != tc.ok {
				t.Errorf("turnutils_uclient %s = %v, want ok=%v\n%s\n%s", tc.name, err, tc.ok, out, c.LogTail())
			}
		})
	}
}

// TestCoturnTLSCertificate proves that coturn's TLS listener presents a
// certificate for its realm issued by the lab CA.
func TestCoturnTLSCertificate(t *testing.T) {
	t.Parallel()
	c := labtest.Coturn(t)
	conn, err := tls.Dial("tcp", c.TLSAddr, &tls.Config{RootCAs: labtest.CA(t).Pool, ServerName: c.Realm})
	if err != nil {
		t.Fatalf("TLS to %s as %s: %v", c.TLSAddr, c.Realm, err)
	}
	conn.Close()
}

// TestCoturnClose proves that Close stops a private coturn, removes the
// pid file it leaves behind and frees its ports.
func TestCoturnClose(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("real server")
	}
	c, err := lab.StartCoturn(t.Context(), lab.CoturnOptions{Dir: t.TempDir(), Realm: "turn.lab.localhost", Secret: "s", CA: labtest.CA(t)})
	if err != nil {
		t.Fatal(err)
	}
	pgid := c.PGID()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	assertNoProcesses(t, pgid, c.Dir)
	if _, err := os.Stat(filepath.Join(c.Dir, "turnserver.pid")); !os.IsNotExist(err) {
		t.Errorf("pid file after Close: %v, want it removed", err)
	}
	if conn, err := net.DialTimeout("tcp", c.TCPAddr, time.Second); err == nil {
		conn.Close()
		t.Errorf("after Close: %s still accepts", c.TCPAddr)
	}
}

func credentialFlags(c *lab.Coturn) []string {
	user, pass := c.Credentials("carol", time.Hour)
	return []string{"-u", user, "-w", pass}
}

// TestShippedCoturnConfigsRun starts real coturn with each config we ship
// (the container's and the host's), their deployment lines replaced by the
// lab's, and allocates a relay with TURN REST credentials: the files as
// shipped start, serve TLS and relay.
func TestShippedCoturnConfigsRun(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"../docker/coturn/turnserver.conf", "../packaging/coturn/turnserver.conf"} {
		t.Run(filepath.Base(filepath.Dir(filepath.Dir(path))), func(t *testing.T) {
			t.Parallel()
			shipped, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			c, err := lab.StartCoturn(t.Context(), lab.CoturnOptions{
				Dir: t.TempDir(), Realm: "turn.lab.localhost", Secret: "a shipped-config secret", CA: labtest.CA(t),
				Shipped: string(shipped),
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			user, pass := c.Credentials("alice@lab.localhost", time.Hour)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a, err := turnprobe.Allocate(ctx, "udp", c.UDPAddr, nil, user, pass)
			if err != nil {
				t.Fatalf("allocate with %s: %v\n%s", path, err, c.LogTail())
			}
			a.Close()
		})
	}
}
