package daemon_test

import (
	"strings"
	"testing"

	"github.com/clinkme/clinkd/daemon"
)

// goodSecret is what `clinkd secret` prints: 256 random bits in hex.
const goodSecret = "6d1c0e5f3a9b27c48e0f1d2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e"

// validConfig passes Check: a loopback link with a good secret, the
// default admin listener, no database.
func validConfig() daemon.Config {
	cfg := daemon.Defaults()
	cfg.Link = daemon.LinkConfig{Addr: "127.0.0.1:5347", Domain: "clink.example.org", Secret: goodSecret}
	return cfg
}

// TestCheckRefuses plays each exposure the configuration could open (an
// unencrypted link off the host) and proves clinkd refuses it with an
// error naming the key, and the key that lifts the refusal, and never
// quoting a secret; and that what is safe, or explicitly allowed, passes.
func TestCheckRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		tune func(*daemon.Config)
		// want: substrings of the error; none means Check passes.
		want []string
	}{
		{"valid", func(*daemon.Config) {}, nil},
		// The link.
		{"link off loopback, plaintext", func(c *daemon.Config) { c.Link.Addr = "192.0.2.10:5347" }, []string{"link.addr 192.0.2.10:5347 is not loopback", "link.tls", "link.insecure_network"}},
		{"link to a host name, plaintext", func(c *daemon.Config) { c.Link.Addr = "xmpp.example.org:5347" }, []string{"link.addr xmpp.example.org:5347 is not loopback"}},
		{"link to all-interfaces address", func(c *daemon.Config) { c.Link.Addr = ":5347" }, []string{"link.addr :5347 is not loopback"}},
		{"link off loopback, TLS", func(c *daemon.Config) { c.Link.Addr = "192.0.2.10:5347"; c.Link.TLS = true }, nil},
		{"link off loopback, insecure_network", func(c *daemon.Config) { c.Link.Addr = "192.0.2.10:5347"; c.Link.InsecureNetwork = true }, nil},
		{"link on localhost", func(c *daemon.Config) { c.Link.Addr = "localhost:5347" }, nil},
		{"link on ::1", func(c *daemon.Config) { c.Link.Addr = "[::1]:5347" }, nil},
		{"link on 127.0.0.2", func(c *daemon.Config) { c.Link.Addr = "127.0.0.2:5347" }, nil},
		{"TLS CA without TLS", func(c *daemon.Config) { c.Link.TLSCAFile = "/etc/ca.pem" }, []string{"link.tls_ca_file and link.tls_server_name need link.tls: true"}},
		{"TLS name without TLS", func(c *daemon.Config) { c.Link.TLSServerName = "example.org" }, []string{"need link.tls: true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := validConfig()
			tt.tune(&cfg)
			err := cfg.Check()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Check() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check() = nil, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check() = %q, want it to say %q", err, w)
				}
			}
			for _, secret := range []string{cfg.Link.Secret, "hunter2"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("Check() = %q quotes a secret", err)
				}
			}
		})
	}
}

// TestNewRefusesInsecure proves the refusal holds where clinkd starts:
// daemon.New fails before it binds or dials anything.
func TestNewRefusesInsecure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		tune func(*daemon.Config)
		want string
	}{
		{"link", func(c *daemon.Config) { c.Link.Addr = "192.0.2.10:5347" }, "link.insecure_network"},
	} {
		cfg := validConfig()
		cfg.Admin.Listen = "127.0.0.1:0"
		tc.tune(&cfg)
		d, err := daemon.New(t.Context(), cfg, nil)
		if err == nil {
			d.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
