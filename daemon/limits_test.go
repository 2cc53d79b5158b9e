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

// TestCheckRefuses plays each exposure the configuration could open
// (an unencrypted link off the host, a guessable component secret, the
// unauthenticated admin listener off loopback, a database reached without
// a verified certificate) and proves clinkd refuses it with an error
// naming the key, and the key that lifts the refusal, and never quoting
// a secret; and that what is safe, or explicitly allowed, passes.
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
		// The component secret.
		{"secret short", func(c *daemon.Config) { c.Link.Secret = "0123456789abcdef0123456789abcde" }, []string{"link.secret: 31 bytes, want at least 32", "clinkd secret"}},
		{"secret one character", func(c *daemon.Config) { c.Link.Secret = strings.Repeat("x", 64) }, []string{"link.secret: only 1 different bytes"}},
		{"secret word repeated", func(c *daemon.Config) { c.Link.Secret = strings.Repeat("password", 5) }, []string{"link.secret: only 7 different bytes"}},
		{"secret phrase repeated", func(c *daemon.Config) { c.Link.Secret = strings.Repeat("correct horse ", 3) }, []string{"link.secret: a 14-byte string repeated"}},
		{"secret keyboard repeated", func(c *daemon.Config) { c.Link.Secret = strings.Repeat("qwertyuiop", 4)[:37] }, []string{"link.secret: a 10-byte string repeated"}},
		{"secret 32 random hex", func(c *daemon.Config) { c.Link.Secret = goodSecret[:32] }, nil},
		{"secret base64", func(c *daemon.Config) { c.Link.Secret = "q3Jx0f9Kz2mVb8LwT1sYc4NeH7uAiG6pRd5oZkWl+E=" }, nil},
		// The admin listener.
		{"admin on all interfaces", func(c *daemon.Config) { c.Admin.Listen = ":9465" }, []string{`admin.listen ":9465" is not loopback`, "no authentication", "admin.allow_remote"}},
		{"admin on 0.0.0.0", func(c *daemon.Config) { c.Admin.Listen = "0.0.0.0:9465" }, []string{"admin.allow_remote"}},
		{"admin on a private address", func(c *daemon.Config) { c.Admin.Listen = "10.1.2.3:9465" }, []string{"admin.allow_remote"}},
		{"admin empty", func(c *daemon.Config) { c.Admin.Listen = "" }, []string{"admin.allow_remote"}},
		{"admin remote, allowed", func(c *daemon.Config) { c.Admin.Listen = ":9465"; c.Admin.AllowRemote = true }, nil},
		{"admin on localhost", func(c *daemon.Config) { c.Admin.Listen = "localhost:0" }, nil},
		// The database.
		{"database remote, no sslmode", func(c *daemon.Config) { c.Database.URL = "postgres://clinkd:hunter2@db.example.org/clinkd" }, []string{"database.url reaches db.example.org without sslmode=verify-full", "database.allow_insecure_tls"}},
		{"database remote, prefer", func(c *daemon.Config) { c.Database.URL = "postgres://db.example.org/clinkd?sslmode=prefer" }, []string{"without sslmode=verify-full"}},
		{"database remote, require", func(c *daemon.Config) { c.Database.URL = "postgres://db.example.org/clinkd?sslmode=require" }, []string{"without sslmode=verify-full"}},
		{"database remote, verify-ca", func(c *daemon.Config) { c.Database.URL = "postgres://db.example.org/clinkd?sslmode=verify-ca" }, []string{"without sslmode=verify-full"}},
		{"database remote, disable", func(c *daemon.Config) { c.Database.URL = "postgres://10.0.0.5/clinkd?sslmode=disable" }, []string{"reaches 10.0.0.5"}},
		{"database keyword form, remote", func(c *daemon.Config) { c.Database.URL = "host=db.example.org dbname=clinkd password=hunter2" }, []string{"reaches db.example.org"}},
		{"database second host remote", func(c *daemon.Config) {
			c.Database.URL = "postgres://127.0.0.1,db.example.org/clinkd?sslmode=prefer"
		}, []string{"reaches db.example.org"}},
		{"database remote, verify-full", func(c *daemon.Config) { c.Database.URL = "postgres://db.example.org/clinkd?sslmode=verify-full" }, nil},
		{"database remote, allowed", func(c *daemon.Config) {
			c.Database.URL = "postgres://db.example.org/clinkd"
			c.Database.AllowInsecureTLS = true
		}, nil},
		{"database loopback, no sslmode", func(c *daemon.Config) { c.Database.URL = "postgres://postgres@127.0.0.1:5432/postgres" }, nil},
		{"database localhost, disable", func(c *daemon.Config) { c.Database.URL = "postgres://localhost/clinkd?sslmode=disable" }, nil},
		{"database unix socket", func(c *daemon.Config) { c.Database.URL = "host=/var/run/postgresql dbname=clinkd" }, nil},
		{"database not a URL", func(c *daemon.Config) { c.Database.URL = "postgres://u:hunter2@[bad/x" }, []string{"database.url is not a valid PostgreSQL URL"}},
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

// TestNewRefusesInsecure proves the refusals hold where clinkd starts:
// daemon.New fails before it binds or dials anything, and LoadConfig (every
// command that may open the database) refuses an unverified remote
// database.
func TestNewRefusesInsecure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		tune func(*daemon.Config)
		want string
	}{
		{"link", func(c *daemon.Config) { c.Link.Addr = "192.0.2.10:5347" }, "link.insecure_network"},
		{"secret", func(c *daemon.Config) { c.Link.Secret = "hunter2" }, "link.secret: 7 bytes"},
		{"admin", func(c *daemon.Config) { c.Admin.Listen = "0.0.0.0:0" }, "admin.allow_remote"},
		{"database", func(c *daemon.Config) { c.Database.URL = "postgres://192.0.2.20/clinkd" }, "database.allow_insecure_tls"},
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
	_, err := daemon.LoadConfig("", []string{"CLINKD_DATABASE_URL=postgres://clinkd:hunter2@db.example.org/clinkd"})
	if err == nil || !strings.Contains(err.Error(), "database.allow_insecure_tls") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("LoadConfig with a remote database without sslmode = %v, want a refusal that does not quote the password", err)
	}
	cfg, err := daemon.LoadConfig("", []string{"CLINKD_DATABASE_URL=postgres://db.example.org/clinkd", "CLINKD_DATABASE_ALLOW_INSECURE_TLS=true"})
	if err != nil || !cfg.Database.AllowInsecureTLS {
		t.Errorf("LoadConfig with database.allow_insecure_tls = %v, want it accepted", err)
	}
}

// TestCheckLinkSecret is the secret rule alone, on values an operator
// might write.
func TestCheckLinkSecret(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		secret string
		ok     bool
	}{
		{"", false},
		{strings.Repeat("ab", 32), false},
		{strings.Repeat("changeme", 8), false},
		{strings.Repeat("0123456789", 4), false},       // a run repeated
		{"0123456789abcdefghijklmnopqrstuvwxyz", true}, // long enough, 36 different bytes: the rule is simple, not an entropy meter
		{"abcdefgabcdefgabcdefgabcdefgabcdefgX", true}, // not a whole repetition: passes
		{"abcdefghabcdefghabcdefghabcdefgh", false},    // 8 distinct, period 8
		{goodSecret, true},
		{"K7#pL2@vQ9!mX4$rT6&wZ1*yB8^nC3%d", true},
	} {
		err := daemon.CheckLinkSecret(tc.secret)
		if (err == nil) != tc.ok {
			t.Errorf("CheckLinkSecret(%q) = %v, want ok=%v", tc.secret, err, tc.ok)
		}
	}
}

// FuzzCheckLinkSecret checks the rule against a brute-force reading of
// it: whatever passes has at least 32 bytes, at least 8 different ones,
// and is not a shorter string repeated; nothing panics; the error never
// quotes the input.
func FuzzCheckLinkSecret(f *testing.F) {
	for _, s := range []string{goodSecret, strings.Repeat("a", 40), strings.Repeat("password", 5), "abcdefgabcdefgabcdefgabcdefgabcdefgX"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := daemon.CheckLinkSecret(s)
		if err != nil {
			if len(s) >= 4 && strings.Contains(err.Error(), s) {
				t.Fatalf("CheckLinkSecret(%q) = %q quotes the secret", s, err)
			}
			return
		}
		if len(s) < 32 {
			t.Fatalf("CheckLinkSecret(%q) = nil for %d bytes", s, len(s))
		}
		distinct := map[byte]bool{}
		for i := range len(s) {
			distinct[s[i]] = true
		}
		if len(distinct) < 8 {
			t.Fatalf("CheckLinkSecret(%q) = nil with %d different bytes", s, len(distinct))
		}
		for p := 1; p <= len(s)/2; p++ {
			if s[p:] == s[:len(s)-p] {
				t.Fatalf("CheckLinkSecret(%q) = nil, but it is its first %d bytes repeated", s, p)
			}
		}
	})
}
