package component

import (
	"crypto/tls"
	"strings"
	"testing"

	"mellium.im/xmpp/jid"
)

// TestLinkTLSConfig: a TLS link always verifies the server, with TLS 1.2
// at least, by the name in the address unless one is given; a config that
// would skip verification is refused.
func TestLinkTLSConfig(t *testing.T) {
	t.Parallel()
	base := Config{Addr: "192.0.2.7:5347", Domain: jid.MustParse("clink.example"), Secret: []byte("x")}

	cfg := base
	cfg.TLS = &tls.Config{InsecureSkipVerify: true}
	if _, err := New(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "skips verifying") {
		t.Errorf("New with InsecureSkipVerify = %v, want a refusal", err)
	}

	given := &tls.Config{MinVersion: tls.VersionTLS10}
	cfg.TLS = given
	c, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.cfg.TLS; got.MinVersion != tls.VersionTLS12 || got.ServerName != "192.0.2.7" {
		t.Errorf("TLS config = MinVersion %x, ServerName %q; want TLS 1.2 and the address's host", got.MinVersion, got.ServerName)
	}
	if given.MinVersion != tls.VersionTLS10 {
		t.Error("New changed the caller's tls.Config")
	}

	cfg.TLS = &tls.Config{ServerName: "example.org", MinVersion: tls.VersionTLS13}
	if c, err = New(cfg, nil, nil); err != nil || c.cfg.TLS.ServerName != "example.org" || c.cfg.TLS.MinVersion != tls.VersionTLS13 {
		t.Errorf("New with a name and TLS 1.3 = %v, %+v; want them kept", err, c.cfg.TLS)
	}
}
