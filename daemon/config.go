package daemon

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
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
	Access   AccessConfig   `yaml:"access"`
	Relay    RelayConfig    `yaml:"relay"`
	Expiry   ExpiryConfig   `yaml:"expiry"`
	Receipts ReceiptsConfig `yaml:"receipts"`
	ClinkID  ClinkIDConfig  `yaml:"clinkid"`
}

// AccessConfig says whose users clinkd serves: those of
// link.server_domain, and of the federated domains listed here.
type AccessConfig struct {
	FederatedDomains []string `yaml:"federated_domains"` // remote domains served as local ones (default none)
}

// RelayConfig bounds what one user hands the relay (envelopes, receipts,
// announcements), whatever the kind of message.
type RelayConfig struct {
	PerMinute float64 `yaml:"per_minute"` // per sender (default 60)
	Burst     int     `yaml:"burst"`      // default 60
}

// ExpiryConfig is the timed-message relay (docs/expiry.md).
type ExpiryConfig struct {
	Disabled          bool          `yaml:"disabled"`
	MinPeriod         time.Duration `yaml:"min_period"`
	MaxPeriod         time.Duration `yaml:"max_period"`
	UnseenMaxPeriod   time.Duration `yaml:"unseen_max_period"`
	PerUserMessages   int           `yaml:"per_user_messages"`
	PerUserBytes      int64         `yaml:"per_user_bytes"`
	PerSenderMessages int           `yaml:"per_sender_messages"`
	PerSenderBytes    int64         `yaml:"per_sender_bytes"`
	PerPairMessages   int           `yaml:"per_pair_messages"`
	TotalBytes        int64         `yaml:"total_bytes"`
	DevicesPerUser    int           `yaml:"devices_per_user"`
	LockMemory        bool          `yaml:"lock_memory"`
	// HandoffSocket is the Unix socket through which this clinkd hands
	// its timed messages and device registry to one that takes over
	// (clinkd serve --takeover; docs/operators.md, "Restart and upgrade
	// without losing timed messages"), in a directory only clinkd's user
	// can use. Empty: no handoff.
	HandoffSocket string `yaml:"handoff_socket"`
	// ScaleInSocket is a sibling instance's handoff_socket (link.balanced):
	// when this clinkd stops (SIGTERM), it hands its slots, timed messages
	// and device registry to that sibling rather than losing them
	// (docs/operators.md, "Scale-in"). Empty: a stop hands nothing over.
	ScaleInSocket string `yaml:"scale_in_socket"`
}

// ReceiptsConfig is delivery and read receipts (docs/receipts.md).
type ReceiptsConfig struct {
	Retention        time.Duration `yaml:"retention"`
	PerUserHeld      int           `yaml:"per_user_held"`
	PerSenderTracked int           `yaml:"per_sender_tracked"`
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

	// The link is the root of all trust: it carries every stanza of the
	// component. It stays on loopback, or is encrypted, or the operator
	// says in so many words that the network is trusted.
	TLS             bool   `yaml:"tls"`              // TLS from the first byte (ejabberd_service `tls: true`)
	TLSCAFile       string `yaml:"tls_ca_file"`      // PEM CA certificates for the server's; default the system's
	TLSServerName   string `yaml:"tls_server_name"`  // name the server's certificate must carry; default addr's host
	InsecureNetwork bool   `yaml:"insecure_network"` // allow a plaintext link to a non-loopback address

	Workers        int           `yaml:"workers"`
	QueueDepth     int           `yaml:"queue_depth"`
	MaxQueued      int           `yaml:"max_queued"`
	MaxQueuedBytes int           `yaml:"max_queued_bytes"`
	MaxStanzaBytes int           `yaml:"max_stanza_bytes"`
	HandlerTimeout time.Duration `yaml:"handler_timeout"`
	BackoffMin     time.Duration `yaml:"backoff_min"`
	BackoffMax     time.Duration `yaml:"backoff_max"`
	PingInterval   time.Duration `yaml:"ping_interval"`
	PingTimeout    time.Duration `yaml:"ping_timeout"`
	// Balanced: ejabberd shares the component's domain among several
	// clinkd instances by bare destination (domain_balancing,
	// docs/operators.md "Several clinkd instances").
	Balanced bool `yaml:"balanced"`
}

// DatabaseConfig is the PostgreSQL store.
type DatabaseConfig struct {
	URL     string `yaml:"url"`      // postgres://...; may hold a password, so prefer url_file
	URLFile string `yaml:"url_file"` // a file holding the URL
	// Password is the role's password, kept apart from the URL so that
	// it can be rotated: SIGHUP re-reads it, and every new connection
	// uses it (those open stay, as PostgreSQL keeps them).
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	Migrate      bool   `yaml:"migrate"` // apply pending migrations at start-up
	// AllowInsecureTLS accepts a URL that reaches a host other than
	// loopback or a unix socket without sslmode=verify-full.
	AllowInsecureTLS bool `yaml:"allow_insecure_tls"`
	// MaxConns bounds the pool (default 16); ConnectTimeout bounds a new
	// connection (default 5s); StatementTimeout is PostgreSQL's own bound
	// on one statement (default 10s, link.handler_timeout's default).
	MaxConns         int           `yaml:"max_conns"`
	ConnectTimeout   time.Duration `yaml:"connect_timeout"`
	StatementTimeout time.Duration `yaml:"statement_timeout"`
}

// AdminConfig is the admin HTTP listener: /metrics, /healthz, /readyz.
type AdminConfig struct {
	Listen string `yaml:"listen"` // default 127.0.0.1:9465; loopback unless allow_remote
	// AllowRemote accepts a listen address other than loopback. The
	// listener has no authentication.
	AllowRemote bool `yaml:"allow_remote"`
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
	SignerKeyFile    string        `yaml:"signer_key_file"`    // note signer key from `clinkd keys genkey`; empty turns the feature off
	VRFKeyFile       string        `yaml:"vrf_key_file"`       // private VRF key from `clinkd keys genkey` (required with signer_key_file)
	SignerStateFile  string        `yaml:"signer_state_file"`  // the last signed checkpoint (default: signer_key_file + ".state")
	TickInterval     time.Duration `yaml:"tick_interval"`      // a tick entry after this long without an entry (default 1h)
	Origin           string        `yaml:"origin"`             // the log's origin; must be the signer key's name (default: that name)
	LookupPerMinute  float64       `yaml:"lookup_per_minute"`  // per requester (default 600)
	LookupBurst      int           `yaml:"lookup_burst"`       // default 100; at least max_batch
	PublishPerMinute float64       `yaml:"publish_per_minute"` // per requester (default 6)
	PublishBurst     int           `yaml:"publish_burst"`      // default 3
	MaxBatch         int           `yaml:"max_batch"`          // JIDs per lookup (default 20)
	SizeLease        time.Duration `yaml:"size_lease"`         // lookups answered from memory under a lease this long (default 1s; 10ms to 1m)
	Witness          WitnessConfig `yaml:"witness"`            // witnesses that cosign every checkpoint (docs/keydir.md, "Witnesses")
}

// WitnessConfig lists the C2SP tlog-witnesses that cosign the key
// directory's checkpoints: urls[i] is the submission prefix of the
// witness whose verifier key is keys[i].
type WitnessConfig struct {
	URLs      []string      `yaml:"urls"`      // submission prefixes (POST URL/add-checkpoint)
	Keys      []string      `yaml:"keys"`      // their cosignature/v1 verifier keys, in the same order
	Threshold int           `yaml:"threshold"` // cosignatures a checkpoint should carry: what devices are given (default: all)
	Timeout   time.Duration `yaml:"timeout"`   // bound on cosigning one checkpoint (default 5s)
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
	// Every command that reads this file may open the database (serve,
	// migrate, extauth, accounts), so its URL is checked here.
	if err := checkDatabase(cfg.Database); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Check refuses a configuration that would expose what clinkd guards:
// a link that leaves this host unencrypted, a weak component secret, an
// admin listener off loopback, a database reached without a verified TLS
// certificate. Each refusal names its key and the key that lifts it, if
// any. New calls it; docs/operators.md ("Limits and abuse") explains each.
//
// It also refuses what would make no sense: a negative number, a validity
// window whose bounds are out of order, a limit or service a feature would
// refuse, a secret or key file that cannot be read or that every local
// user can read. Every problem is reported, not only the first.
func (c Config) Check() error {
	errs := []error{checkLink(c.Link), checkAdmin(c.Admin), checkDatabase(c.Database), c.checkNumbers(), c.checkFiles()}
	if !c.Expiry.Disabled {
		if err := expiryLimits(c).Check(); err != nil {
			errs = append(errs, fmt.Errorf("config: expiry: %w", err))
		}
		if c.Expiry.HandoffSocket != "" {
			errs = append(errs, checkHandoffDir(c.Expiry.HandoffSocket))
		}
		if s := c.Expiry.ScaleInSocket; s != "" {
			switch {
			case !c.Link.Balanced:
				errs = append(errs, errors.New("config: expiry.scale_in_socket needs link.balanced: a sibling takes over this clinkd's slots only where ejabberd balances the domain among several instances"))
			case !filepath.IsAbs(s):
				errs = append(errs, fmt.Errorf("config: expiry.scale_in_socket %q is not an absolute path", s))
			case filepath.Clean(s) == filepath.Clean(c.Expiry.HandoffSocket):
				errs = append(errs, errors.New("config: expiry.scale_in_socket is this clinkd's own expiry.handoff_socket; name a sibling's"))
			}
		}
		if c.Link.ServerDomain != "" {
			if err := dispatchAccess(c).Check(); err != nil {
				errs = append(errs, fmt.Errorf("config: access: %w", err))
			}
		}
	}
	if len(c.TURN.Services) > 0 {
		if err := turnConfig(c).Check(); err != nil {
			errs = append(errs, fmt.Errorf("config: turn: %w", err))
		}
	}
	if c.ClinkID.Enabled {
		if _, err := c.clinkIDConfig(); err != nil {
			errs = append(errs, err)
		}
	}
	if l := c.KeyDir.SizeLease; l != 0 && (l < 10*time.Millisecond || l > time.Minute) {
		errs = append(errs, fmt.Errorf("config: keydir.size_lease %v is not within 10ms to 1m", l))
	}
	// A writer that gives no notice waits up to a lease in one statement.
	if l, st := cmp.Or(c.KeyDir.SizeLease, time.Second), cmp.Or(c.Database.StatementTimeout, 10*time.Second); c.KeyDir.SignerKeyFile != "" && l >= st/2 {
		errs = append(errs, fmt.Errorf("config: keydir.size_lease %v must be under half of database.statement_timeout (%v): an append waits up to a lease in one statement", l, st))
	}
	if len(c.KeyDir.Witness.URLs)+len(c.KeyDir.Witness.Keys) > 0 {
		if _, err := keyDirWitnesses(c.KeyDir.Witness); err != nil {
			errs = append(errs, err)
		}
	}
	if (c.Public.CertFile == "") != (c.Public.KeyFile == "") {
		errs = append(errs, errors.New("config: public.cert_file and public.key_file go together"))
	}
	return errors.Join(errs...)
}

// checkNumbers refuses negative numbers and durations: every bound in the
// file counts something, and zero already means "the default". The keys
// of negativeMeansNone are the exceptions, where negative turns a policy
// off (docs/config.md says so for each).
func (c Config) checkNumbers() error {
	var errs []error
	walk(reflect.ValueOf(&c).Elem(), "", func(key string, v reflect.Value) {
		if negativeMeansNone[key] {
			return
		}
		switch v.Kind() {
		case reflect.Int, reflect.Int64:
			if v.Int() < 0 {
				errs = append(errs, fmt.Errorf("config: %s is negative; zero takes the default", key))
			}
		case reflect.Float64:
			if v.Float() < 0 {
				errs = append(errs, fmt.Errorf("config: %s is negative; zero takes the default", key))
			}
		}
	})
	return errors.Join(errs...)
}

// negativeMeansNone are the keys whose negative value turns a policy off.
var negativeMeansNone = map[string]bool{
	"clinkid.name_quarantine": true, // names of deleted accounts free at once
}

// secretFiles are the keys that name a file holding a secret or a private
// key.
func (c Config) secretFiles() map[string]string {
	return map[string]string{
		"link.secret_file":           c.Link.SecretFile,
		"database.url_file":          c.Database.URLFile,
		"database.password_file":     c.Database.PasswordFile,
		"turn.secret_file":           c.TURN.SecretFile,
		"clinkid.admin_token_file":   c.ClinkID.AdminTokenFile,
		"clinkid.bridge_secret_file": c.ClinkID.BridgeSecretFile,
		"keydir.signer_key_file":     c.KeyDir.SignerKeyFile,
		"keydir.vrf_key_file":        c.KeyDir.VRFKeyFile,
		"public.key_file":            c.Public.KeyFile,
	}
}

// checkFiles refuses a file named by the config that cannot be read, and
// a secret or private key that every local user can read. It opens each
// one, as the process that checks (the service's user) would when it
// serves: a key file that exists but is root's alone is refused here, not
// at start-up.
func (c Config) checkFiles() error {
	var errs []error
	for key, path := range c.secretFiles() {
		if path == "" {
			continue
		}
		fi, err := statReadable(path)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("config: %s: %w", key, err))
		case fi.Mode().Perm()&0o004 != 0:
			errs = append(errs, fmt.Errorf("config: %s %s is readable by every local user (mode %04o); chmod o-r it", key, path, fi.Mode().Perm()))
		}
	}
	for key, path := range map[string]string{"public.cert_file": c.Public.CertFile, "link.tls_ca_file": c.Link.TLSCAFile} {
		if path == "" {
			continue
		}
		if _, err := statReadable(path); err != nil {
			errs = append(errs, fmt.Errorf("config: %s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

// statReadable opens path for reading without reading it (a FIFO does not
// block) and returns what it is.
func statReadable(path string) (os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

func checkLink(c LinkConfig) error {
	var errs []error
	if c.Addr == "" || c.Domain == "" || c.Secret == "" {
		errs = append(errs, errors.New("config: link.addr, link.domain and link.secret (or link.secret_file) are required"))
	}
	if c.Secret != "" {
		if err := CheckLinkSecret(c.Secret); err != nil {
			errs = append(errs, fmt.Errorf("config: link.secret: %w", err))
		}
	}
	if !c.TLS && (c.TLSCAFile != "" || c.TLSServerName != "") {
		errs = append(errs, errors.New("config: link.tls_ca_file and link.tls_server_name need link.tls: true"))
	}
	if c.Addr != "" && !c.TLS && !c.InsecureNetwork && !isLoopback(c.Addr) {
		errs = append(errs, fmt.Errorf("config: link.addr %s is not loopback and the link is not encrypted: "+
			"XEP-0114 is plaintext and carries every stanza of the component; set link.tls: true (ejabberd), "+
			"or tunnel the link to a loopback address (docs/operators.md), or set link.insecure_network: true "+
			"if every host on the path is yours", c.Addr))
	}
	return errors.Join(errs...)
}

func checkAdmin(c AdminConfig) error {
	if c.AllowRemote || isLoopback(c.Listen) {
		return nil
	}
	return fmt.Errorf("config: admin.listen %q is not loopback: the admin listener has no authentication and "+
		"tells anyone who reaches it clinkd's traffic, load and link state (/metrics, /readyz); bind it to "+
		"127.0.0.1, or set admin.allow_remote: true if only your monitoring network can reach it", c.Listen)
}

// checkDatabase refuses a URL under which pgx would talk to a host other
// than loopback or a unix socket without verifying its certificate and
// name: with no sslmode pgx uses "prefer", which takes any certificate
// and falls back to plaintext. The URL is never quoted: it may hold a
// password.
func checkDatabase(c DatabaseConfig) error {
	if c.URL == "" {
		return nil
	}
	pcfg, err := pgxpool.ParseConfig(c.URL)
	if err != nil {
		return errors.New("config: database.url is not a valid PostgreSQL URL")
	}
	if c.Password != "" && pcfg.ConnConfig.Password != "" {
		return errors.New("config: database.url holds a password and database.password(_file) is set too: give it once, in database.password_file, which a reload re-reads")
	}
	if c.AllowInsecureTLS {
		return nil
	}
	pc := pcfg.ConnConfig.Config
	tries := []*pgconn.FallbackConfig{{Host: pc.Host, Port: pc.Port, TLSConfig: pc.TLSConfig}}
	tries = append(tries, pc.Fallbacks...)
	for _, f := range tries {
		if localHost(f.Host) || f.TLSConfig != nil && !f.TLSConfig.InsecureSkipVerify {
			continue
		}
		return fmt.Errorf("config: database.url reaches %s without sslmode=verify-full, so the connection "+
			"(and the password) could go to whoever answers: add sslmode=verify-full (sslrootcert=FILE for a "+
			"private CA), or set database.allow_insecure_tls: true if the network to it is yours", f.Host)
	}
	return nil
}

// localHost reports whether a database host is this machine: a unix
// socket directory, localhost or a loopback address.
func localHost(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// isLoopback reports whether host:port names loopback only: localhost or
// a loopback address. An empty host (all interfaces) is not.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// MinLinkSecretBytes is the shortest component secret clinkd accepts.
const MinLinkSecretBytes = 32

// CheckLinkSecret says why s will not do as the XEP-0114 secret, or
// returns nil. The handshake sends SHA-1(stream id + secret), so whoever
// sees one handshake (or connects once) can guess the secret offline as
// fast as SHA-1 runs: it must be long and random. The rule is simple on
// purpose (docs/config.md): at least 32 bytes; at least 8 different
// bytes (a random 32-character hex string has fewer with a chance of
// about 4 in 100 million); and not a shorter string repeated ("aaaa…",
// "passwordpassword…"). It catches the obvious; it does not measure
// entropy. `clinkd secret` makes one that passes: 256 random bits in hex.
// The error never quotes the secret.
func CheckLinkSecret(s string) error {
	if len(s) < MinLinkSecretBytes {
		return fmt.Errorf("%d bytes, want at least %d random ones (make one with `clinkd secret`)", len(s), MinLinkSecretBytes)
	}
	var seen [256]bool
	distinct := 0
	for i := range len(s) {
		if !seen[s[i]] {
			seen[s[i]] = true
			distinct++
		}
	}
	if distinct < 8 {
		return fmt.Errorf("only %d different bytes, want at least 8: it does not look random (make one with `clinkd secret`)", distinct)
	}
	if p := period(s); p <= len(s)/2 {
		return fmt.Errorf("a %d-byte string repeated: it does not look random (make one with `clinkd secret`)", p)
	}
	return nil
}

// period returns the smallest p > 0 with s[i] == s[i+p] for every i: s is
// its first p bytes repeated (the last repetition possibly cut short).
// It is the Knuth–Morris–Pratt failure function's complement.
func period(s string) int {
	fail := make([]int, len(s)+1)
	fail[0] = -1
	k := -1
	for i := range len(s) {
		for k >= 0 && s[k] != s[i] {
			k = fail[k]
		}
		k++
		fail[i+1] = k
	}
	return len(s) - fail[len(s)]
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
	if err := read(&c.Database.Password, c.Database.PasswordFile, "database.password"); err != nil {
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
