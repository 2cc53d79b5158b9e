// Package daemon assembles clinkd from its configuration (the XMPP link, the
// feature handlers, the PostgreSQL store and the admin HTTP listener) and
// runs it until shutdown. cmd/clinkd is a thin main around it; tests and
// `clinkd lab` run it in-process.
package daemon

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/expiry"
	"github.com/clinkme/clinkd/internal/certpool"
	"github.com/clinkme/clinkd/internal/httpjson"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/receipts"
	"github.com/clinkme/clinkd/turncred"
)

// Version is set at build time with -ldflags "-X github.com/clinkme/clinkd/daemon.Version=...".
var Version = "devel"

// BuildInfo says what this binary is.
type BuildInfo struct {
	Version   string // Version, or "devel"
	GoVersion string // the Go toolchain that built it
	Revision  string // the VCS revision it was built from, "unknown" outside a checkout
}

// Build returns what this binary is, from Version and the build
// information Go embeds.
func Build() BuildInfo {
	b := BuildInfo{Version: Version, GoVersion: runtime.Version(), Revision: "unknown"}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				b.Revision = s.Value
			}
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.modified" && s.Value == "true" {
				b.Revision += "+modified"
			}
		}
	}
	return b
}

// A Daemon is one clinkd: built by New, run by Run.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	comp     *component.Component
	// extra are the links this clinkd holds beside comp (link.balanced:
	// the slots of a sibling that stopped, or of a predecessor that held
	// several); guarded by extraMu.
	extraMu sync.Mutex
	extra   []*extraLink
	relay   *expiry.Relay
	devices *dispatch.Devices
	// entitlements answers whether an account has ClinkMe Secure.
	entitlements expiry.Entitlements
	db           *pgxpool.Pool          // nil when no database is configured
	dbPassword   atomic.Pointer[string] // database.password, which Reload may change
	admin        net.Listener
	public       *http.ServeMux                  // features mount their HTTP handlers here
	publicLn     net.Listener                    // nil when no public listener is configured
	tlsCfg       *tls.Config                     // nil when the public listener is plain (loopback)
	publicCert   atomic.Pointer[tls.Certificate] // the public listener's certificate; Reload replaces it
	keydir       *keydir.Directory               // nil when the feature is off
	clinkid      *clinkid.Service                // nil unless clinkid.enabled
	turn         *turncred.Service               // nil when the feature is off
	router       *dispatch.Router                // nil when the relay is off
	tracker      *receipts.Tracker               // nil without a database or relay
	accounts     *clinkid.Service                // nil when ClinkID is off
	closers      []func()
	// runners are features' background loops (expiry timers, sweeps),
	// run beside the link for as long as Run runs.
	runners []func(context.Context) error
}

// NewLogger makes the process logger from the log config.
func NewLogger(cfg LogConfig, w io.Writer) (*slog.Logger, error) {
	log, _, err := NewLevelLogger(cfg, w)
	return log, err
}

// NewLevelLogger is NewLogger with the level's variable, which Reload
// sets when log.level changes.
func NewLevelLogger(cfg LogConfig, w io.Writer) (*slog.Logger, *slog.LevelVar, error) {
	level := new(slog.LevelVar)
	var l slog.Level
	if err := l.UnmarshalText([]byte(cfg.Level)); err != nil {
		return nil, nil, fmt.Errorf("config: log.level %q: want debug, info, warn or error", cfg.Level)
	}
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(cfg.Format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), level, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), level, nil
	}
	return nil, nil, fmt.Errorf("config: log.format %q: want text or json", cfg.Format)
}

// New checks the configuration and builds everything Run needs: it
// connects the database pool, applies migrations when configured, and binds
// the admin listener, so that errors show before anything is served.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{cfg: cfg, log: log, registry: prometheus.NewRegistry(), public: http.NewServeMux(),
		entitlements: expiry.NoEntitlementCheck{}}
	d.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b := Build()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "clinkd_build_info",
		Help: "Always 1; its labels say which clinkd runs (Prometheus exporters' convention).",
	}, []string{"version", "goversion", "revision"})
	buildInfo.WithLabelValues(b.Version, b.GoVersion, b.Revision).Set(1)
	d.registry.MustRegister(buildInfo)
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()

	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if c := cfg.Link; c.InsecureNetwork && !c.TLS && !isLoopback(c.Addr) {
		log.Warn("the XEP-0114 link leaves this host unencrypted (link.insecure_network is set): "+
			"whoever is on the path sees every stanza and can guess the secret offline", "addr", c.Addr)
	}
	if !isLoopback(cfg.Admin.Listen) {
		log.Warn("the admin listener is not on loopback (admin.allow_remote is set): it has no authentication", "listen", cfg.Admin.Listen)
	}
	compCfg, err := componentConfig(cfg.Link)
	if err != nil {
		return nil, err
	}
	d.comp, err = component.New(compCfg, log.With("part", "link"), component.NewMetrics(d.registry))
	if err != nil {
		return nil, err
	}
	// clinkd_link_up and the link's counters speak for the first link;
	// this counts every link that is up, extra ones included (1 when all
	// is well, more on an instance that took a sibling's slot).
	d.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clinkd_links_up",
		Help: "Links to the XMPP server that are up, the first and any taken over from a stopped sibling (link.balanced).",
	}, func() float64 {
		up := 0
		for _, l := range d.links() {
			if l.State() == component.Linked {
				up++
			}
		}
		return float64(up)
	}))

	if cfg.Database.URL != "" {
		d.dbPassword.Store(&cfg.Database.Password)
		d.db, err = openDatabase(ctx, cfg.Database, func() string { return *d.dbPassword.Load() })
		if err != nil {
			return nil, err
		}
		d.closers = append(d.closers, d.db.Close)
		if cfg.Database.Migrate {
			if err := Migrate(ctx, d.db, log); err != nil {
				return nil, err
			}
		}
	}

	if err := d.registerFeatures(ctx); err != nil {
		return nil, err
	}

	d.admin, err = d.listenTCP(ctx, cfg.Admin.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin: listen: %w", err)
	}
	d.closers = append(d.closers, func() { d.admin.Close() })
	if err := d.listenPublic(); err != nil {
		return nil, err
	}
	ok = true
	return d, nil
}

func componentConfig(c LinkConfig) (component.Config, error) {
	domain, err := jid.Parse(c.Domain)
	if err != nil {
		return component.Config{}, fmt.Errorf("config: link.domain: %w", err)
	}
	var server jid.JID
	if c.ServerDomain != "" {
		if server, err = jid.Parse(c.ServerDomain); err != nil {
			return component.Config{}, fmt.Errorf("config: link.server_domain: %w", err)
		}
	}
	linkTLS, err := linkTLSConfig(c)
	if err != nil {
		return component.Config{}, err
	}
	return component.Config{
		Addr:           c.Addr,
		TLS:            linkTLS,
		Domain:         domain,
		Secret:         []byte(c.Secret),
		ServerDomain:   server,
		Workers:        c.Workers,
		QueueDepth:     c.QueueDepth,
		MaxQueued:      c.MaxQueued,
		MaxQueuedBytes: c.MaxQueuedBytes,
		MaxStanzaBytes: c.MaxStanzaBytes,
		HandlerTimeout: c.HandlerTimeout,
		BackoffMin:     c.BackoffMin,
		BackoffMax:     c.BackoffMax,
		PingInterval:   c.PingInterval,
		PingTimeout:    c.PingTimeout,
		Balanced:       c.Balanced,
		Transient:      transientStoreError,
	}, nil
}

// transientStoreError says whether err is a passing outage of PostgreSQL
// (unreachable, a dropped connection, a statement cut by its timeout, the
// server shutting down) rather than a fault of the request: the requester
// is told to try again.
func transientStoreError(err error) bool {
	var ne net.Error
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &ne), errors.As(err, &ce), pgconn.Timeout(err), pgconn.SafeToRetry(err):
		return true
	case errors.As(err, &pe):
		// Class 08: connection exception; 57014 query_canceled (the
		// statement timeout); 57P01-57P03: shutdown, crash, cannot connect.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57014" || strings.HasPrefix(pe.Code, "57P0")
	}
	return false
}

// linkTLSConfig is the link's TLS config, nil without link.tls: TLS 1.2
// or newer, the server verified against link.tls_ca_file (else the
// system's roots) for link.tls_server_name (else link.addr's host).
func linkTLSConfig(c LinkConfig) (*tls.Config, error) {
	if !c.TLS {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
	if c.TLSCAFile != "" {
		pool, err := certpool.Load(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("config: link.tls_ca_file: %w", err)
		}
		t.RootCAs = pool
	}
	return t, nil
}

// registerFeatures wires the feature handlers into the component. Each
// feature package adds itself here; docs/DEVELOPING.md draws the calls.
func (d *Daemon) registerFeatures(ctx context.Context) error {
	if t := d.cfg.TURN; len(t.Services) > 0 {
		if d.cfg.Link.ServerDomain == "" {
			return errors.New("config: turn needs link.server_domain (only its users get credentials)")
		}
		svc, err := turncred.New(turnConfig(d.cfg), d.log.With("part", "turn"), d.registry)
		if err != nil {
			return fmt.Errorf("config: turn: %w", err)
		}
		svc.Register(d.comp)
		d.turn = svc
	}
	// The key log's store comes first: ClinkID ends bindings in it when an
	// account is deleted, and the directory asks ClinkID which accounts
	// exist. Both calls go down into a store; neither calls back.
	var keyStore *logdb.Store
	if d.cfg.KeyDir.SignerKeyFile != "" {
		if d.db == nil {
			return errors.New("config: keydir needs a database (database.url)")
		}
		var err error
		if d.cfg.KeyDir.VRFKeyFile == "" {
			return errors.New("config: keydir needs keydir.vrf_key_file (clinkd keys genkey makes it beside the signer key)")
		}
		vrf, err := keylog.LoadVRFSigner(d.cfg.KeyDir.VRFKeyFile)
		if err != nil {
			return fmt.Errorf("config: keydir.vrf_key_file: %w", err)
		}
		if keyStore, err = logdb.New(logdb.Config{DB: d.db, Log: d.log.With("part", "keydir"), VRF: vrf,
			SizeLease: cmp.Or(d.cfg.KeyDir.SizeLease, time.Second)}); err != nil {
			return fmt.Errorf("keydir: %w", err)
		}
	}
	var accounts keydir.Accounts = keydir.ServerAccounts{}
	if d.cfg.ClinkID.Enabled {
		var with []func(*clinkid.Config)
		if keyStore != nil {
			// Deleting an account ends its key binding, visibly, in the log.
			with = append(with, func(c *clinkid.Config) { c.KeyBindings = keyBindings{keyStore} })
		}
		svc, err := ClinkIDService(d.cfg, d.db, d.log.With("part", "clinkid"), d.registry, with...)
		if err != nil {
			return err
		}
		svc.Register(d.comp)
		d.accounts = svc
		d.public.Handle(clinkid.PathPrefix, svc.Handler())
		if d.cfg.ClinkID.AdminToken != "" && !isLoopback(d.cfg.Admin.Listen) {
			// The admin API is served on the admin listener only, which
			// is plain HTTP: the token must not cross a network in clear.
			return fmt.Errorf("config: clinkid.admin_token is set, so the admin listener serves the ClinkID admin API and must be loopback, not %s (reach it through SSH or a TLS proxy on this host)", d.cfg.Admin.Listen)
		}
		if d.cfg.ClinkID.EjabberdAPIURL != "" {
			// Deletions and password changes end sessions on ejabberd.
			d.runners = append(d.runners, svc.Run)
		}
		if d.cfg.Public.Listen == "" {
			d.log.Warn("clinkid is enabled but public.listen is not set: the account API is not served")
		}
		d.clinkid = svc
		// Timed messages need ClinkMe Secure.
		d.entitlements = svc
		accounts = clinkidAccounts{svc: svc, domain: d.cfg.Link.ServerDomain}
	}
	if keyStore != nil {
		if err := d.registerKeyDir(ctx, keyStore, accounts); err != nil {
			return err
		}
	}
	if !d.cfg.Expiry.Disabled {
		if err := d.registerRelay(); err != nil {
			return err
		}
	}
	return nil
}

// keyBindings lets ClinkID end an account's binding in the key directory,
// through the store's End like every other end of a binding, so it is
// logged.
type keyBindings struct{ store *logdb.Store }

func (k keyBindings) End(ctx context.Context, bareJID, reason string) error {
	_, err := k.store.End(ctx, bareJID, keylog.KindDelete, reason, time.Now())
	if errors.Is(err, logdb.ErrNoBinding) {
		return nil // an account that never published a key
	}
	return err
}

// clinkidAccounts lets the key directory ask ClinkID whether an account
// exists.
type clinkidAccounts struct {
	svc    *clinkid.Service
	domain string
}

func (a clinkidAccounts) AccountExists(ctx context.Context, bare jid.JID) (bool, error) {
	if bare.Domainpart() != a.domain {
		return false, nil
	}
	return a.svc.Exists(ctx, bare.Localpart())
}

// KeyDirLogPrefix is where the public listener serves the key
// directory's log (C2SP tlog-tiles): PREFIX/checkpoint, PREFIX/tile/...
const KeyDirLogPrefix = "/keydir/log"

func (d *Daemon) registerKeyDir(ctx context.Context, store *logdb.Store, accounts keydir.Accounts) error {
	c := d.cfg.KeyDir
	if d.cfg.Link.ServerDomain == "" {
		return errors.New("config: keydir needs link.server_domain (only its users publish keys)")
	}
	signer, verifier, err := keylog.LoadSignerKey(c.SignerKeyFile)
	if err != nil {
		return fmt.Errorf("config: keydir.signer_key_file: %w", err)
	}
	if c.Origin != "" && c.Origin != signer.Name() {
		return fmt.Errorf("config: keydir.origin %q is not the signer key's name %q", c.Origin, signer.Name())
	}
	if vrf := store.VRF().Public().Name; vrf != signer.Name() {
		return fmt.Errorf("config: keydir.vrf_key_file is the key of %q, the signer key of %q", vrf, signer.Name())
	}
	witnesses, err := keyDirWitnesses(c.Witness)
	if err != nil {
		return err
	}
	dir, err := keydir.New(keydir.Config{
		Witnesses:        witnesses,
		Signer:           signer,
		Verifier:         verifier,
		StateFile:        KeyDirStateFile(c),
		TickInterval:     c.TickInterval,
		LocalDomain:      d.cfg.Link.ServerDomain,
		Federated:        d.cfg.Access.FederatedDomains,
		Accounts:         accounts,
		LookupPerMinute:  c.LookupPerMinute,
		LookupBurst:      c.LookupBurst,
		PublishPerMinute: c.PublishPerMinute,
		PublishBurst:     c.PublishBurst,
		MaxBatch:         c.MaxBatch,
	}, store, d.log.With("part", "keydir"), d.registry)
	if err != nil {
		return fmt.Errorf("config: keydir: %w", err)
	}
	// The start-up check against the last signed checkpoint: a fault
	// (a rolled-back database) does not stop clinkd, it makes /readyz say
	// why and the directory refuse to serve.
	if err := dir.Start(ctx); err != nil {
		return err
	}
	if reason := dir.Ready(ctx); reason != "" {
		d.log.Error("keydir: not ready: " + reason)
	}
	// The size lease lets lookups skip their read of the size row
	// (docs/keydir.md, "Size leases").
	d.runners = append(d.runners, dir.Run, store.HoldLease)
	dir.Register(d.comp)
	if d.cfg.Public.Listen == "" {
		d.log.Warn("keydir: public.listen is not set, so the log is not served to auditors")
	}
	d.public.Handle("GET "+KeyDirLogPrefix+"/", http.StripPrefix(KeyDirLogPrefix, dir.LogHandler()))
	d.keydir = dir
	return nil
}

// keyDirWitnesses parses keydir.witness.
func keyDirWitnesses(c WitnessConfig) (keydir.WitnessConfig, error) {
	if len(c.URLs) != len(c.Keys) {
		return keydir.WitnessConfig{}, fmt.Errorf("config: keydir.witness: %d urls and %d keys (one key per url)", len(c.URLs), len(c.Keys))
	}
	if _, err := keylog.NewWitnessPolicy(c.Keys, max(c.Threshold, 0)); err != nil {
		return keydir.WitnessConfig{}, fmt.Errorf("config: keydir.witness: %w", err)
	}
	out := keydir.WitnessConfig{Threshold: c.Threshold, Timeout: c.Timeout}
	for i, u := range c.URLs {
		v, err := keylog.ParseCosignatureVerifier(c.Keys[i])
		if err != nil {
			return keydir.WitnessConfig{}, fmt.Errorf("config: keydir.witness.keys: %w", err)
		}
		out.Witnesses = append(out.Witnesses, keydir.Witness{URL: u, Verifier: v})
	}
	return out, nil
}

// KeyDirStateFile is where the key directory keeps the last checkpoint
// it signed: keydir.signer_state_file, else the signer key file's path
// plus ".state".
func KeyDirStateFile(c KeyDirConfig) string {
	if c.SignerStateFile != "" {
		return c.SignerStateFile
	}
	return c.SignerKeyFile + ".state"
}

// KeyDir is the key directory, nil when it is not configured. Its store
// (KeyDir().Store()) is where bindings end.
func (d *Daemon) KeyDir() *keydir.Directory { return d.keydir }

// listenPublic binds the public listener, refusing plain HTTP anywhere but
// on loopback: account passwords and tokens cross it.
func (d *Daemon) listenPublic() error {
	c := d.cfg.Public
	if c.Listen == "" {
		return nil
	}
	if c.CertFile == "" || c.KeyFile == "" {
		if !isLoopback(c.Listen) {
			return fmt.Errorf("config: public.listen %s is not loopback, so public.cert_file and public.key_file are required", c.Listen)
		}
	} else {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return fmt.Errorf("config: public TLS certificate: %w", err)
		}
		d.publicCert.Store(&cert)
		// The certificate is looked up per handshake, so that a renewed one
		// (SIGHUP) is served to the next client without a new listener.
		d.tlsCfg = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return d.publicCert.Load(), nil
			},
		}
	}
	ln, err := d.listenTCP(context.Background(), c.Listen)
	if err != nil {
		return fmt.Errorf("public: listen: %w", err)
	}
	d.publicLn = ln
	d.closers = append(d.closers, func() { ln.Close() })
	return nil
}

// listenTCP binds a TCP listener. With expiry.handoff_socket, a clinkd
// that takes over binds its listeners while the one it takes over from
// still serves on them: both set SO_REUSEPORT, and the kernel shares new
// connections between them until the older one closes its own.
func (d *Daemon) listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	if d.cfg.Expiry.HandoffSocket != "" {
		lc.Control = reusePort
	}
	return lc.Listen(ctx, "tcp", addr)
}

// PublicURL is the base URL of the public listener ("" when there is none).
func (d *Daemon) PublicURL() string {
	if d.publicLn == nil {
		return ""
	}
	scheme := "http"
	if d.tlsCfg != nil {
		scheme = "https"
	}
	return scheme + "://" + d.publicLn.Addr().String()
}

// registerRelay wires the envelope router, the registry of online
// devices, the timed-message relay and the receipts tracker (the drawing
// is in docs/DEVELOPING.md): the router hands each envelope and receipt to
// exactly one of the two features and tells the relay of announcements;
// both features read the registry and send through the link. Without a
// database ordinary messages are refused: their state lives in PostgreSQL.
func (d *Daemon) registerRelay() error {
	if err := protectMemory(d.cfg.Expiry.LockMemory); err != nil {
		return err
	}
	domain := d.comp.Domain()
	devs := dispatch.NewDevices(dispatch.DevicesConfig{MaxPerUser: d.cfg.Expiry.DevicesPerUser, Registerer: d.registry})
	if d.cfg.Link.ServerDomain == "" {
		return errors.New("config: the relay needs link.server_domain (it serves that domain's users only)")
	}
	relay, err := expiry.New(expiry.Config{
		Component: domain, Send: d.comp, Devices: devs, Entitlements: d.entitlements,
		Limits: expiryLimits(d.cfg),
		Log:    d.log.With("part", "expiry"), Registerer: d.registry,
	})
	if err != nil {
		return fmt.Errorf("config: expiry: %w", err)
	}
	var ordinary dispatch.Ordinary = dispatch.Unavailable{Text: "this clinkd relays only timed messages (it has no database to track ordinary ones)"}
	if d.db != nil {
		tracker, err := receipts.New(receipts.Config{
			Component: domain, DB: d.db, Send: d.comp, Devices: devs,
			Limits: receiptsLimits(d.cfg),
			Log:    d.log.With("part", "receipts"), Registerer: d.registry,
		})
		if err != nil {
			return fmt.Errorf("config: receipts: %w", err)
		}
		tracker.Register(d.comp)
		d.tracker = tracker
		d.runners = append(d.runners, tracker.Run)
		ordinary = tracker
	}
	router, err := dispatch.New(dispatch.Config{
		Component: domain, Devices: devs, Timed: relay, Ordinary: ordinary,
		Watchers: []dispatch.Watcher{relay},
		Access:   dispatchAccess(d.cfg),
		Log:      d.log.With("part", "dispatch"), Registerer: d.registry,
	})
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	router.Register(d.comp)
	d.router = router
	relay.Register(d.comp)
	d.relay, d.devices = relay, devs
	d.runners = append(d.runners, relay.Run)
	return nil
}

// turnConfig is the TURN credential service's configuration in cfg.
func turnConfig(cfg Config) turncred.Config {
	t := cfg.TURN
	return turncred.Config{
		Secret: []byte(t.Secret), Lifetime: t.Lifetime, Services: t.Services,
		LocalDomain: cfg.Link.ServerDomain, PerMinute: t.PerMinute, Burst: t.Burst,
	}
}

// expiryLimits are the timed-message relay's bounds in cfg.
func expiryLimits(cfg Config) expiry.Limits {
	e := cfg.Expiry
	return expiry.Limits{
		MinPeriod: e.MinPeriod, MaxPeriod: e.MaxPeriod, UnseenMaxPeriod: e.UnseenMaxPeriod,
		PerUserMessages: e.PerUserMessages, PerUserBytes: e.PerUserBytes,
		PerSenderMessages: e.PerSenderMessages, PerSenderBytes: e.PerSenderBytes, PerPairMessages: e.PerPairMessages,
		TotalBytes: e.TotalBytes, PerUserReceipts: cfg.Receipts.PerUserHeld,
	}
}

// receiptsLimits are the receipt state's bounds in cfg.
func receiptsLimits(cfg Config) receipts.Limits {
	return receipts.Limits{Retention: cfg.Receipts.Retention, PerSenderTracked: cfg.Receipts.PerSenderTracked}
}

// dispatchAccess is whom the envelope router serves, and how much, in cfg.
func dispatchAccess(cfg Config) dispatch.Access {
	return dispatch.Access{
		Local: cfg.Link.ServerDomain, Federated: cfg.Access.FederatedDomains,
		PerMinute: cfg.Relay.PerMinute, Burst: cfg.Relay.Burst,
	}
}

// Devices is the registry of online devices (nil when the relay is
// disabled), for tests.
func (d *Daemon) Devices() *dispatch.Devices { return d.devices }

// Relay is the timed-message relay (nil when disabled), for tests.
func (d *Daemon) Relay() *expiry.Relay { return d.relay }

// ClinkID is the ClinkID account service (nil unless clinkid.enabled), for
// features that check entitlements and for tests.
func (d *Daemon) ClinkID() *clinkid.Service { return d.clinkid }

// Component is the XMPP link, for tests and the lab.
func (d *Daemon) Component() *component.Component { return d.comp }

// AdminAddr is the bound address of the admin listener.
func (d *Daemon) AdminAddr() string { return d.admin.Addr().String() }

// Run serves until ctx ends, then shuts down gracefully: the admin
// listener stops, in-flight stanzas are answered, the stream is closed.
// With expiry.handoff_socket, it serves the socket too, and ends (nil)
// once it has handed its state to a clinkd that took over from it.
func (d *Daemon) Run(ctx context.Context) error { return d.run(ctx, false) }

// RunTakeover is Run for a clinkd that takes over from the one serving on
// expiry.handoff_socket (docs/operators.md, "Restart and upgrade"): it
// links, takes the other's timed messages and device registry, then
// serves. When no clinkd serves there (or no socket is configured, or the
// relay is off), it starts afresh. It returns an error, without having
// linked, when the other clinkd cannot be taken over (another version of
// the protocol, another component).
func (d *Daemon) RunTakeover(ctx context.Context) error {
	if d.cfg.Expiry.HandoffSocket == "" || d.relay == nil {
		d.log.Info("takeover: no expiry.handoff_socket, or the relay is off: nothing to take over; starting afresh")
		return d.run(ctx, false)
	}
	return d.run(ctx, true)
}

func (d *Daemon) run(ctx context.Context, take bool) (err error) {
	defer d.Close()
	var tk *takeover
	if take {
		if tk, err = d.beginTakeover(); err != nil {
			return err
		}
	}
	// The handoff socket: a clinkd serves it from the start (and refuses
	// to start beside one that serves it already); a taker as soon as the
	// giver gave it up, which it did before its hello.
	var handoffLn *net.UnixListener
	if d.cfg.Expiry.HandoffSocket != "" && d.relay != nil {
		if handoffLn, err = listenHandoff(d.cfg.Expiry.HandoffSocket); err != nil {
			if tk != nil {
				tk.raw.Close()
			}
			return err
		}
	}
	srv := &http.Server{
		Handler: d.adminHandler(),
		// The admin listener answers probes and scrapes; slow clients get
		// cut off rather than holding connections.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(d.admin); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin listener", "err", err)
		}
	})
	var pub *http.Server
	if d.publicLn != nil {
		pub = &http.Server{
			Handler:   securityHeaders(d.public, d.tlsCfg != nil),
			TLSConfig: d.tlsCfg,
			// Timeouts bound what one slow or malicious client can hold.
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       15 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
		}
		ln := d.publicLn
		if d.tlsCfg != nil {
			ln = tls.NewListener(ln, d.tlsCfg)
		}
		wg.Go(func() {
			if err := pub.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("public listener", "err", err)
			}
		})
	}
	d.log.Info("clinkd serving", "version", Version, "component", d.cfg.Link.Domain, "server", d.cfg.Link.Addr, "admin", d.AdminAddr(), "public", d.PublicURL())
	err = d.serve(ctx, tk, handoffLn)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if pub != nil {
		pub.Shutdown(sctx)
	}
	wg.Wait()
	d.log.Info("clinkd stopped")
	return err
}

// serve runs the link and the background loops, takes over first with
// tk, and serves the handoff socket ln, until ctx ends or this clinkd has
// handed its state over.
func (d *Daemon) serve(ctx context.Context, tk *takeover, ln *net.UnixListener) error {
	var bg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(ctx)
	defer func() {
		stopBG()
		bg.Wait()
	}()
	for _, run := range d.runners {
		bg.Go(func() {
			if err := run(bgCtx); err != nil {
				d.log.Error("background task failed", "err", err)
			}
		})
	}
	// The link stops when ctx ends, or when this clinkd hands over. With
	// expiry.scale_in_socket, the end of ctx first hands this clinkd's
	// slots and state to the sibling serving there (scaleIn), which stops
	// the link once the sibling's are up.
	scaleIn := d.cfg.Expiry.ScaleInSocket != "" && d.cfg.Link.Balanced && d.relay != nil
	linkBase := ctx
	if scaleIn {
		linkBase = context.WithoutCancel(ctx)
	}
	linkCtx, stopLink := context.WithCancel(linkBase)
	defer stopLink()
	defer d.stopExtraLinks()
	if tk != nil && d.cfg.Link.Balanced {
		if err := d.awaitSlot(tk); err != nil {
			if ln != nil {
				ln.Close()
				os.Remove(d.cfg.Expiry.HandoffSocket)
			}
			tk.raw.Close()
			return err
		}
	}
	linked := make(chan error, 1)
	go func() { linked <- d.comp.Run(linkCtx) }()
	if tk != nil {
		err := d.finishTakeover(ctx, linkCtx, tk)
		if err != nil && ln != nil {
			// The socket is this clinkd's since the giver's hello: it goes
			// before the giver hears of the failure and serves it again.
			ln.Close()
			os.Remove(d.cfg.Expiry.HandoffSocket)
		}
		tk.raw.Close()
		if err != nil {
			stopLink()
			<-linked
			return err
		}
	}
	handoffCtx, stopHandoff := context.WithCancel(ctx)
	defer stopHandoff()
	outcome := make(chan *giving, 1)
	if ln != nil {
		go d.handoffLoop(handoffCtx, linkCtx, ln, stopLink, stopBG, outcome)
	} else {
		outcome <- nil
	}
	scaled := make(chan *giving, 1)
	if scaleIn {
		go func() {
			select {
			case <-ctx.Done():
				scaled <- d.scaleIn(context.WithoutCancel(ctx), stopLink, stopBG)
			case <-linkCtx.Done(): // handed over to a clinkd taking over
				scaled <- nil
			}
		}()
	}
	err := <-linked
	stopBG()
	bg.Wait()
	d.stopExtraLinks()
	// Nothing changes the state any more. The link stopped for ctx (a
	// handoff under way ends with it, unless it is a scale-in) or for a
	// handoff, whose outcome is awaited: the state goes now.
	g := <-outcome
	if g == nil && scaleIn {
		g = <-scaled
	}
	if g != nil {
		return d.sendState(g)
	}
	if ctx.Err() == nil && err == nil {
		return errors.New("daemon: handoff: this clinkd gave up its link to a clinkd taking over, which went away before it took the state (the timed messages held here are lost)")
	}
	if scaleIn && err == nil {
		// Asked to hand over on stop, it could not: the stop is not the
		// one configured, and the exit status says so.
		return errors.New("daemon: scale-in: stopped without handing over to expiry.scale_in_socket (the timed messages held here are lost)")
	}
	return err
}

// Close releases what New acquired. Run calls it; call it yourself only if
// Run is never called.
func (d *Daemon) Close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

func (d *Daemon) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.registry, promhttp.HandlerOpts{}))
	if d.clinkid != nil {
		// Entitlements, account state and invites: on this listener only,
		// never on the public one (docs/clinkid.md).
		mux.Handle(clinkid.AdminPrefix, d.clinkid.AdminHandler())
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		checks := d.readiness(r.Context())
		status := http.StatusOK
		for _, v := range checks {
			if v != "ok" {
				status = http.StatusServiceUnavailable
			}
		}
		httpjson.Write(w, status, checks)
	})
	return mux
}

// readiness reports each dependency: ready means linked to the XMPP server,
// the store reachable and the key directory serving (its database extends
// the last checkpoint it signed; else the reason).
func (d *Daemon) readiness(ctx context.Context) map[string]string {
	checks := map[string]string{"link": "ok", "workers": "ok"}
	if s := d.comp.State(); s != component.Linked {
		checks["link"] = s.String()
	}
	if wait, stalled := d.comp.Stalled(); stalled {
		checks["workers"] = fmt.Sprintf("stalled: a request has waited %v for a worker", wait.Round(time.Second))
	}
	if d.db != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		checks["database"] = "ok"
		if err := d.db.Ping(ctx); err != nil {
			checks["database"] = "unreachable"
		}
	}
	if d.keydir != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		checks["keydir"] = "ok"
		if reason := d.keydir.Ready(ctx); reason != "" {
			checks["keydir"] = reason
		}
	}
	return checks
}

// securityHeaders sets the headers every public answer carries.
func securityHeaders(h http.Handler, tls bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tls {
			w.Header().Set("Strict-Transport-Security", "max-age=31536000")
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}
