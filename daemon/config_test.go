package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/daemon"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, []byte("from-file\n"), 0o600)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", "link:\n  addr: 127.0.0.1:5347\n  domain: clink.example\n  secret_file: "+secretFile+"\n  ping_interval: 3s\n")

	tests := []struct {
		name    string
		path    string
		env     []string
		check   func(daemon.Config) string
		wantErr string
	}{
		{"file", good, nil, func(c daemon.Config) string {
			if c.Link.Secret != "from-file" || c.Link.PingInterval != 3*time.Second || c.Admin.Listen != "127.0.0.1:9465" {
				return "file values or defaults not applied"
			}
			return ""
		}, ""},
		{"env overrides file", good, []string{"CLINKD_LINK_ADDR=10.0.0.1:1", "CLINKD_LINK_PING_INTERVAL=1m", "CLINKD_LOG_LEVEL=debug", "OTHER=x"}, func(c daemon.Config) string {
			if c.Link.Addr != "10.0.0.1:1" || c.Link.PingInterval != time.Minute || c.Log.Level != "debug" {
				return "env not applied"
			}
			return ""
		}, ""},
		{"empty file is defaults", write("empty.yaml", ""), nil, func(c daemon.Config) string {
			if c.Log.Format != "text" {
				return "defaults lost"
			}
			return ""
		}, ""},
		{"unknown key", write("typo.yaml", "link:\n  adr: x\n"), nil, nil, "field adr not found"},
		{"bad duration env", good, []string{"CLINKD_LINK_PING_INTERVAL=soon"}, nil, "CLINKD_LINK_PING_INTERVAL: not a duration"},
		{"secret twice", good, []string{"CLINKD_LINK_SECRET=x"}, nil, "both link.secret and link.secret_file"},
		{"missing file", filepath.Join(dir, "nope.yaml"), nil, nil, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := daemon.LoadConfig(tt.path, tt.env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadConfig = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg := tt.check(cfg); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// TestSecretsNotEchoed: a bad value in an environment variable must not be
// quoted back, since the variable may hold a secret.
func TestSecretsNotEchoed(t *testing.T) {
	t.Parallel()
	_, err := daemon.LoadConfig("", []string{"CLINKD_LINK_WORKERS=hunter2"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("LoadConfig = %v; want an error that does not quote the value", err)
	}
}

// TestConfigDocumented keeps docs/config.md in step with the Config type:
// every key and its environment variable must be documented there.
func TestConfigDocumented(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range daemon.Keys() {
		if !strings.Contains(string(doc), "`"+key+"`") {
			t.Errorf("docs/config.md does not document `%s`", key)
		}
		if !strings.Contains(string(doc), daemon.EnvName(key)) {
			t.Errorf("docs/config.md does not name %s", daemon.EnvName(key))
		}
	}
}

// TestClinkIDConfigErrors: clinkd refuses to start ClinkID without what it
// needs, saying which key is missing, and the secrets come from files.
func TestClinkIDConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("too short\n"), 0o600)
	link := daemon.LinkConfig{Addr: "127.0.0.1:1", Domain: "clink.example.org", Secret: goodSecret}
	tests := []struct {
		name    string
		cfg     func(*daemon.Config)
		wantErr string
	}{
		{"no database", func(c *daemon.Config) { c.Link.ServerDomain = "example.org" }, "clinkid needs database.url"},
		{"no server domain", func(c *daemon.Config) {}, "clinkid needs link.server_domain"},
		{"bad argon2", func(c *daemon.Config) { c.Link.ServerDomain = "example.org"; c.ClinkID.Argon2Parallelism = 300 }, "clinkid.argon2_parallelism out of range"},
		{"argon2 memory too small", func(c *daemon.Config) { c.Link.ServerDomain = "example.org"; c.ClinkID.Argon2MemoryKiB = 16 }, "argon2id memory 16 KiB"},
		{"bad registration", func(c *daemon.Config) {
			c.Link.ServerDomain, c.Database.URL = "example.org", "postgres://127.0.0.1:1/x"
			c.ClinkID.Registration = "sometimes"
		}, "registration \"sometimes\": want closed, invite or open"},
		{"short password floor", func(c *daemon.Config) {
			c.Link.ServerDomain, c.Database.URL = "example.org", "postgres://127.0.0.1:1/x"
			c.ClinkID.MinPasswordLength = 6
		}, "min_password_length 6 is below 8"},
		{"bad ejabberd api", func(c *daemon.Config) { c.Link.ServerDomain = "example.org"; c.ClinkID.EjabberdAPIURL = "ftp://x" }, "ejabberd_api_url must be an http:// or https:// URL"},
		{"admin token on a public admin listener", func(c *daemon.Config) {
			c.Link.ServerDomain, c.Database.URL = "example.org", "postgres://127.0.0.1:1/x"
			c.Admin.Listen, c.Admin.AllowRemote = "0.0.0.0:0", true // even when allowed for metrics
			c.ClinkID.AdminToken = strings.Repeat("t", 43)
		}, "admin listener serves the ClinkID admin API and must be loopback"},
	}
	for _, tt := range tests {
		cfg := daemon.Defaults()
		cfg.Link = link
		cfg.Admin.Listen = "127.0.0.1:0"
		cfg.ClinkID.Enabled = true
		tt.cfg(&cfg)
		_, err := daemon.New(t.Context(), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: New = %v, want an error with %q", tt.name, err, tt.wantErr)
		}
	}
	cfg, err := daemon.LoadConfig("", []string{"CLINKD_CLINKID_ADMIN_TOKEN_FILE=" + short, "CLINKD_CLINKID_ENABLED=true",
		"CLINKD_CLINKID_REGISTRATION=invite", "CLINKD_CLINKID_GLOBAL_FAILURES_PER_MINUTE=30", "CLINKD_CLINKID_EJABBERD_API_URL=http://127.0.0.1:5281/api"})
	if err != nil || cfg.ClinkID.AdminToken != "too short" || !cfg.ClinkID.Enabled || cfg.ClinkID.Registration != "invite" ||
		cfg.ClinkID.GlobalFailuresPerMinute != 30 || cfg.ClinkID.EjabberdAPIURL != "http://127.0.0.1:5281/api" {
		t.Fatalf("LoadConfig with clinkid env = %+v, %v", cfg.ClinkID, err)
	}
	// Registration is closed unless the config says otherwise.
	if cfg, _ := daemon.LoadConfig("", nil); cfg.ClinkID.Registration != "" {
		t.Errorf("default clinkid.registration = %q, want unset (closed)", cfg.ClinkID.Registration)
	}
	if _, err := daemon.LoadConfig("", []string{"CLINKD_CLINKID_ADMIN_TOKEN_FILE=" + short, "CLINKD_CLINKID_ADMIN_TOKEN=x"}); err == nil || !strings.Contains(err.Error(), "both clinkid.admin_token and clinkid.admin_token_file") {
		t.Errorf("admin token twice = %v", err)
	}
}

// TestKeyDirSizeLeaseBounds: keydir.size_lease runs 10 ms to 1 min, and
// under half of database.statement_timeout, since an append that gives
// no notice waits up to a lease in one statement.
func TestKeyDirSizeLeaseBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		lease, statement time.Duration
		wantErr          string // "": accepted
	}{
		{0, 0, ""},
		{time.Second, 0, ""},
		{4 * time.Second, 0, ""},
		{5 * time.Second, 0, "must be under half of database.statement_timeout"},
		{time.Second, 2 * time.Second, "must be under half of database.statement_timeout"},
		{time.Millisecond, 0, "keydir.size_lease 1ms is not within 10ms to 1m"},
		{2 * time.Minute, time.Hour, "keydir.size_lease 2m0s is not within 10ms to 1m"},
	}
	for _, tt := range tests {
		cfg := daemon.Defaults()
		cfg.KeyDir.SignerKeyFile = "/nonexistent/keydir.signer"
		cfg.KeyDir.SizeLease, cfg.Database.StatementTimeout = tt.lease, tt.statement
		err := cfg.Check()
		switch {
		case tt.wantErr == "" && err != nil && strings.Contains(err.Error(), "size_lease"):
			t.Errorf("size_lease %v, statement_timeout %v: %v, want accepted", tt.lease, tt.statement, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("size_lease %v, statement_timeout %v: %v, want %q", tt.lease, tt.statement, err, tt.wantErr)
		}
	}
}

// TestNegativeNumbers: a negative number or duration is refused, since
// zero already takes the default, except where docs/config.md gives
// negative a meaning (clinkid.name_quarantine: none).
func TestNegativeNumbers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		env     string
		wantErr string // "": accepted
	}{
		{"CLINKD_CLINKID_NAME_QUARANTINE=-1s", ""},
		{"CLINKD_KEYDIR_TICK_INTERVAL=-1s", "keydir.tick_interval is negative"},
		{"CLINKD_KEYDIR_MAX_BATCH=-1", "keydir.max_batch is negative"},
	} {
		cfg, err := daemon.LoadConfig("", []string{tt.env})
		if err != nil {
			t.Fatalf("%s: %v", tt.env, err)
		}
		err = cfg.Check()
		switch {
		case tt.wantErr == "" && err != nil && strings.Contains(err.Error(), "negative"):
			t.Errorf("%s: %v, want accepted", tt.env, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: %v, want %q", tt.env, err, tt.wantErr)
		}
	}
}
