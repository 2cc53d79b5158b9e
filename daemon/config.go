package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is clinkd's configuration, read from YAML. Every key can be
// overridden by an environment variable named CLINKD_ plus the key's path in
// upper case with dots as underscores: link.secret is CLINKD_LINK_SECRET.
// docs/config.md lists every key; a test keeps the two in step.
type Config struct {
	Log      LogConfig      `yaml:"log"`
	Link     LinkConfig     `yaml:"link"`
	Database DatabaseConfig `yaml:"database"`
	Admin    AdminConfig    `yaml:"admin"`
	Public   PublicConfig   `yaml:"public"`
	TURN     TURNConfig     `yaml:"turn"`
	KeyDir   KeyDirConfig   `yaml:"keydir"`
	Expiry   ExpiryConfig   `yaml:"expiry"`
	Receipts ReceiptsConfig `yaml:"receipts"`
	ClinkID  ClinkIDConfig  `yaml:"clinkid"`
}

// ExpiryConfig is the timed-message relay (docs/expiry.md).
type ExpiryConfig struct {
	Disabled        bool          `yaml:"disabled"`
	MinPeriod       time.Duration `yaml:"min_period"`
	MaxPeriod       time.Duration `yaml:"max_period"`
	PerUserMessages int           `yaml:"per_user_messages"`
	PerUserBytes    int64         `yaml:"per_user_bytes"`
	TotalBytes      int64         `yaml:"total_bytes"`
	DevicesPerUser  int           `yaml:"devices_per_user"`
	LockMemory      bool          `yaml:"lock_memory"`
}

// ReceiptsConfig is delivery and read receipts (docs/receipts.md).
type ReceiptsConfig struct {
	Retention   time.Duration `yaml:"retention"`
	PerUserHeld int           `yaml:"per_user_held"`
}

// LogConfig selects the log format and level.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error (default info)
	Format string `yaml:"format"` // text or json (default text)
}

// LinkConfig is the XEP-0114 link to the XMPP server.
type LinkConfig struct {
	Addr         string `yaml:"addr"`          // host:port of the component listener
	Domain       string `yaml:"domain"`        // the component's domain
	Secret       string `yaml:"secret"`        // the shared secret; prefer secret_file
	SecretFile   string `yaml:"secret_file"`   // a file holding the secret
	ServerDomain string `yaml:"server_domain"` // the users' domain on that server

	Workers        int           `yaml:"workers"`
	QueueDepth     int           `yaml:"queue_depth"`
	MaxStanzaBytes int           `yaml:"max_stanza_bytes"`
	HandlerTimeout time.Duration `yaml:"handler_timeout"`
	BackoffMin     time.Duration `yaml:"backoff_min"`
	BackoffMax     time.Duration `yaml:"backoff_max"`
	PingInterval   time.Duration `yaml:"ping_interval"`
	PingTimeout    time.Duration `yaml:"ping_timeout"`
}

// DatabaseConfig is the PostgreSQL store.
type DatabaseConfig struct {
	URL     string `yaml:"url"`      // postgres://...; may hold a password, so prefer url_file
	URLFile string `yaml:"url_file"` // a file holding the URL
	Migrate bool   `yaml:"migrate"`  // apply pending migrations at start-up
}

// AdminConfig is the admin HTTP listener: /metrics, /healthz, /readyz.
type AdminConfig struct {
	Listen string `yaml:"listen"` // default 127.0.0.1:9465; loopback unless you firewall it
}

// PublicConfig is the public HTTPS listener that serves the ClinkID API and
// the key transparency log. TLS is required unless it listens on loopback
// only (behind a TLS-terminating proxy on the same host, or in the lab).
type PublicConfig struct {
	Listen   string `yaml:"listen"`    // host:port; empty means no public listener
	CertFile string `yaml:"cert_file"` // PEM certificate chain
	KeyFile  string `yaml:"key_file"`  // PEM private key
}

// TURNConfig is XEP-0215 service discovery with TURN REST credentials.
type TURNConfig struct {
	Services   []string      `yaml:"services"`    // stun:, turn:, turns: URIs; empty turns the feature off
	Secret     string        `yaml:"secret"`      // coturn's static-auth-secret; prefer secret_file
	SecretFile string        `yaml:"secret_file"` // a file holding it
	Lifetime   time.Duration `yaml:"lifetime"`    // credential lifetime (default 1h)
	PerMinute  float64       `yaml:"per_minute"`  // requests per user per minute (default 30)
	Burst      int           `yaml:"burst"`       // default 10
}

// KeyDirConfig is the verifiable public-key directory (docs/keydir.md).
type KeyDirConfig struct {
	SignerKeyFile    string  `yaml:"signer_key_file"`    // note signer key from `clinkd keys genkey`; empty turns the feature off
	Origin           string  `yaml:"origin"`             // the log's origin; must be the signer key's name (default: that name)
	LookupPerMinute  float64 `yaml:"lookup_per_minute"`  // per requester (default 600)
	LookupBurst      int     `yaml:"lookup_burst"`       // default 100; at least max_batch
	PublishPerMinute float64 `yaml:"publish_per_minute"` // per requester (default 6)
	PublishBurst     int     `yaml:"publish_burst"`      // default 3
	MaxBatch         int     `yaml:"max_batch"`          // JIDs per lookup (default 20)
}

// ClinkIDConfig is the ClinkID account service (docs/clinkid.md): its
// HTTPS API on the public listener, the entitlements IQ, and what the auth
// bridges (`clinkd extauth`, the Prosody module) share. Zero values take
// the defaults in docs/config.md.
type ClinkIDConfig struct {
	Enabled                 bool          `yaml:"enabled"`                    // serve ClinkID in clinkd serve
	Argon2MemoryKiB         int           `yaml:"argon2_memory_kib"`          // m (default 65536: 64 MiB)
	Argon2Iterations        int           `yaml:"argon2_iterations"`          // t (default 3)
	Argon2Parallelism       int           `yaml:"argon2_parallelism"`         // p (default 4)
	HashConcurrency         int           `yaml:"hash_concurrency"`           // concurrent argon2id computations (default 4)
	HashQueue               int           `yaml:"hash_queue"`                 // checks waiting for one, per queue (default 16×concurrency)
	MinPasswordLength       int           `yaml:"min_password_length"`        // characters (default and least 8)
	TokenLifetime           time.Duration `yaml:"token_lifetime"`             // default 720h
	MaxTokens               int           `yaml:"max_tokens"`                 // live tokens per account (default 20)
	LockoutThreshold        int           `yaml:"lockout_threshold"`          // default 5
	LockoutBase             time.Duration `yaml:"lockout_base"`               // default 1m
	LockoutMax              time.Duration `yaml:"lockout_max"`                // default 1h
	LoginPerMinute          float64       `yaml:"login_per_minute"`           // per client address (default 20)
	LoginBurst              int           `yaml:"login_burst"`                // default 10
	LoginNetworkPerMinute   float64       `yaml:"login_network_per_minute"`   // per IPv4 /24 or IPv6 /64 (default 60)
	LoginNetworkBurst       int           `yaml:"login_network_burst"`        // default 30
	GlobalFailuresPerMinute int           `yaml:"global_failures_per_minute"` // server-wide, from unknown networks (default 60)
	KnownNetworkLifetime    time.Duration `yaml:"known_network_lifetime"`     // default 720h
	Registration            string        `yaml:"registration"`               // closed (default), invite or open
	InviteLifetime          time.Duration `yaml:"invite_lifetime"`            // default 168h
	RegisterPerHour         float64       `yaml:"register_per_hour"`          // per client address (default 10)
	RegisterBurst           int           `yaml:"register_burst"`             // default 5
	RegisterNetworkPerHour  float64       `yaml:"register_network_per_hour"`  // per IPv4 /24 or IPv6 /64 (default 30)
	RegisterNetworkBurst    int           `yaml:"register_network_burst"`     // default 10
	NameQuarantine          time.Duration `yaml:"name_quarantine"`            // default 2160h; negative: none
	AdminToken              string        `yaml:"admin_token"`                // bearer token of the admin API (admin listener); prefer admin_token_file
	AdminTokenFile          string        `yaml:"admin_token_file"`
	BridgeSecret            string        `yaml:"bridge_secret"` // bearer secret of the Prosody module; prefer bridge_secret_file
	BridgeSecretFile        string        `yaml:"bridge_secret_file"`
	TrustForwardedFor       bool          `yaml:"trust_forwarded_for"` // X-Forwarded-For from a loopback proxy
	EjabberdAPIURL          string        `yaml:"ejabberd_api_url"`    // ejabberd's mod_http_api, to end sessions; empty: none
}

// Defaults returns the configuration used where the file is silent.
func Defaults() Config {
	return Config{
		Log:   LogConfig{Level: "info", Format: "text"},
		Admin: AdminConfig{Listen: "127.0.0.1:9465"},
	}
}

// LoadConfig reads the YAML file at path (none if path is empty) over the
// defaults, then applies environment overrides from env (os.Environ form),
// then resolves the *_file secrets. Unknown keys are errors: a typo must not
// silently leave a default in force.
func LoadConfig(path string, env []string) (Config, error) {
	cfg := Defaults()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		// An empty file (io.EOF) stands for "all defaults".
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return cfg, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, env); err != nil {
		return cfg, err
	}
	if err := cfg.resolveFiles(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func (c *Config) resolveFiles() error {
	read := func(dst *string, file, key string) error {
		if file == "" {
			return nil
		}
		if *dst != "" {
			return fmt.Errorf("config: both %s and %s_file are set", key, key)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config: %s_file: %w", key, err)
		}
		*dst = strings.TrimSpace(string(b))
		return nil
	}
	if err := read(&c.Link.Secret, c.Link.SecretFile, "link.secret"); err != nil {
		return err
	}
	if err := read(&c.Database.URL, c.Database.URLFile, "database.url"); err != nil {
		return err
	}
	if err := read(&c.ClinkID.AdminToken, c.ClinkID.AdminTokenFile, "clinkid.admin_token"); err != nil {
		return err
	}
	if err := read(&c.ClinkID.BridgeSecret, c.ClinkID.BridgeSecretFile, "clinkid.bridge_secret"); err != nil {
		return err
	}
	return read(&c.TURN.Secret, c.TURN.SecretFile, "turn.secret")
}

// EnvName is the environment variable that overrides a config key.
func EnvName(key string) string {
	return "CLINKD_" + strings.ToUpper(strings.NewReplacer(".", "_").Replace(key))
}

// Keys returns every config key in dotted form, in declaration order.
func Keys() []string {
	var keys []string
	walk(reflect.ValueOf(&Config{}).Elem(), "", func(key string, _ reflect.Value) { keys = append(keys, key) })
	return keys
}

func walk(v reflect.Value, prefix string, f func(key string, field reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeFor[time.Duration]() {
			walk(fv, key, f)
			continue
		}
		f(key, fv)
	}
}

func applyEnv(cfg *Config, env []string) error {
	vars := make(map[string]string)
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "CLINKD_") {
			vars[k] = v
		}
	}
	var errs []error
	walk(reflect.ValueOf(cfg).Elem(), "", func(key string, fv reflect.Value) {
		name := EnvName(key)
		s, ok := vars[name]
		if !ok {
			return
		}
		if err := setFromString(fv, s); err != nil {
			// The value is not echoed: it may be a secret.
			errs = append(errs, fmt.Errorf("config: %s: %w", name, err))
		}
	})
	return errors.Join(errs...)
}

func setFromString(fv reflect.Value, s string) error {
	switch {
	case fv.Type() == reflect.TypeFor[time.Duration]():
		d, err := time.ParseDuration(s)
		if err != nil {
			return errors.New("not a duration (e.g. 10s)")
		}
		fv.SetInt(int64(d))
	case fv.Kind() == reflect.String:
		fv.SetString(s)
	case fv.Kind() == reflect.Int || fv.Kind() == reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return errors.New("not an integer")
		}
		fv.SetInt(n)
	case fv.Kind() == reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return errors.New("not a number")
		}
		fv.SetFloat(n)
	case fv.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("not a boolean")
		}
		fv.SetBool(b)
	case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.String:
		var parts []string
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("unsupported type %s", fv.Type())
	}
	return nil
}
