package component

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// checkTLS completes cfg.TLS: TLS 1.2 at least, the server's name taken
// from Addr when none is given. It refuses a config that would not verify
// the server: the link carries every stanza of the component and the
// handshake proves the secret, so an unverified TLS link is one an
// attacker on the path can sit in the middle of.
func (c *Config) checkTLS() error {
	if c.TLS == nil {
		return nil
	}
	if c.TLS.InsecureSkipVerify {
		return errors.New("component: TLS that skips verifying the server is refused")
	}
	t := c.TLS.Clone()
	if t.MinVersion < tls.VersionTLS12 {
		t.MinVersion = tls.VersionTLS12
	}
	if t.ServerName == "" {
		host, _, err := net.SplitHostPort(c.Addr)
		if err != nil || host == "" {
			return fmt.Errorf("component: no TLS server name and none in address %q", c.Addr)
		}
		t.ServerName = host
	}
	c.TLS = t
	return nil
}

// dial connects to the server and, with TLS, completes the TLS handshake
// before anything of XEP-0114 is sent. On failure it names the stage that
// failed, for clinkd_link_failures_total.
func (c *Component) dial(ctx context.Context) (conn net.Conn, stage string, err error) {
	d := net.Dialer{
		Timeout: c.cfg.DialTimeout,
		// The kernel notices a silent peer even when no ping is configured.
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3},
	}
	conn, err = d.DialContext(ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return nil, "dial", fmt.Errorf("component: dial %s: %w", c.cfg.Addr, err)
	}
	if c.cfg.TLS == nil {
		return conn, "", nil
	}
	tconn := tls.Client(conn, c.cfg.TLS)
	hctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	if err := tconn.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, "tls", fmt.Errorf("component: TLS with %s (as %s): %w", c.cfg.Addr, c.cfg.TLS.ServerName, err)
	}
	return tconn, "", nil
}

// tlsVersion names the TLS version of conn, "none" for a plain link.
func tlsVersion(conn net.Conn) string {
	if t, ok := conn.(*tls.Conn); ok {
		return tls.VersionName(t.ConnectionState().Version)
	}
	return "none"
}
