package clinkid

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/internal/ratelimit"
)

// EntitlementSecure is ClinkMe Secure: timed messages and per-contact keys.
const EntitlementSecure = "secure"

// Entitlements lists every entitlement name an operator can grant. A name
// not listed is refused, so a typo cannot grant nothing silently.
func Entitlements() []string { return []string{EntitlementSecure} }

// KeyBindings ends the binding between an account and its keys in the key
// directory. Deleting an account calls End before anything is deleted; if
// End fails the account stays, so a deleted account never keeps a live
// binding. The key directory records the end in its public log.
type KeyBindings interface {
	End(ctx context.Context, bareJID, reason string) error
}

// Config configures a Service. Zero fields take the defaults named;
// Domain and Sessions are required.
type Config struct {
	// Domain is the XMPP domain of the accounts (link.server_domain): the
	// account alice is alice@Domain. Required.
	Domain string
	// Params are the argon2id parameters of new hashes (DefaultParams).
	Params Params
	// HashConcurrency bounds concurrent argon2id computations (default 4);
	// their memory is at most HashConcurrency × Params.Memory.
	HashConcurrency int
	// HashQueue bounds the checks waiting for a slot, in each of the two
	// queues (trusted, others); more get ErrBusy (default 16 ×
	// HashConcurrency).
	HashQueue int
	// MinPasswordLength is the shortest password, in characters (default
	// and least: MinPasswordFloor, 8).
	MinPasswordLength int
	// TokenLifetime is the longest life of an app token (default 720h).
	// A login may ask for less.
	TokenLifetime time.Duration
	// MaxTokens is how many live tokens an account keeps; a new login
	// drops the oldest beyond it (default 20).
	MaxTokens int
	// LockoutThreshold consecutive failed password attempts on one name,
	// in one scope (strangers, one known network, one token), hold back
	// that scope's attempts for LockoutBase, doubled at each further
	// failure up to LockoutMax (defaults 5, 1m, 1h).
	LockoutThreshold int
	LockoutBase      time.Duration
	LockoutMax       time.Duration
	// LoginPerMinute and LoginBurst bound password attempts per client
	// address (defaults 20 and 10); LoginNetworkPerMinute and
	// LoginNetworkBurst per network, IPv4 /24 or IPv6 /64, for attempts
	// from networks the account has not logged in from (defaults 60, 30).
	LoginPerMinute        float64
	LoginBurst            int
	LoginNetworkPerMinute float64
	LoginNetworkBurst     int
	// GlobalFailuresPerMinute is the server-wide budget of failed password
	// attempts from unknown networks (and from ejabberd, which names no
	// address): past it, such attempts are refused unchecked
	// (ErrThrottled) until the rate falls; the owner's known networks and
	// app tokens keep working (default 60).
	GlobalFailuresPerMinute int
	// KnownNetworkLifetime is how long a network an account logged in
	// from stays known (default 720h).
	KnownNetworkLifetime time.Duration
	// Registration says who may create accounts over HTTPS (default
	// RegistrationClosed).
	Registration Registration
	// InviteLifetime is the life of an invite whose creator names none
	// (default 168h).
	InviteLifetime time.Duration
	// RegisterPerHour and RegisterBurst bound registrations per client
	// address (defaults 10 and 5), RegisterNetworkPerHour and
	// RegisterNetworkBurst per network (defaults 30 and 10).
	RegisterPerHour        float64
	RegisterBurst          int
	RegisterNetworkPerHour float64
	RegisterNetworkBurst   int
	// NameQuarantine is how long the name of a deleted account cannot be
	// registered again (default 2160h, 90 days; negative: no quarantine).
	NameQuarantine time.Duration
	// Secrets are the admin API's and the bridge's bearer secrets;
	// SetSecrets replaces them while the service runs.
	Secrets Secrets
	// TrustForwardedFor takes the client address from the last
	// X-Forwarded-For entry when the request comes from loopback (a
	// TLS-terminating proxy on the same host).
	TrustForwardedFor bool
	// KeyBindings, if set, is told when an account is deleted.
	KeyBindings KeyBindings
	// Sessions ends the XMPP sessions of deleted accounts and of accounts
	// whose password changed, on a server clinkd tells (EjabberdAPI); it
	// is PulledOnly{} when the server asks instead (Prosody's module) or
	// for a process that pushes nothing (clinkd extauth). Required.
	Sessions SessionEnder
	// NoSweep leaves the deletion of expired rows to another process:
	// clinkd extauth sets it, so that its database role needs no right
	// to delete tokens (docs/clinkid.md lists its grants).
	NoSweep bool
}

func (c *Config) setDefaults() error {
	if c.Domain == "" {
		return errors.New("clinkid: no domain")
	}
	d, err := jid.Parse(c.Domain)
	if err != nil || d.Localpart() != "" || d.Resourcepart() != "" {
		return fmt.Errorf("clinkid: domain %q is not an XMPP domain", c.Domain)
	}
	c.Domain = d.Domainpart()
	if c.Sessions == nil {
		return errors.New("clinkid: no Sessions (clinkid.PulledOnly{} when the XMPP server asks for events itself)")
	}
	if c.Params == (Params{}) {
		c.Params = DefaultParams()
	}
	if err := c.Params.Validate(); err != nil {
		return err
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defF := func(v *float64, d float64) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.MinPasswordLength != 0 && c.MinPasswordLength < MinPasswordFloor {
		return fmt.Errorf("clinkid: min_password_length %d is below %d (NIST SP 800-63B)", c.MinPasswordLength, MinPasswordFloor)
	}
	def(&c.HashConcurrency, 4)
	def(&c.HashQueue, 16*c.HashConcurrency)
	def(&c.MinPasswordLength, MinPasswordFloor)
	def(&c.MaxTokens, 20)
	def(&c.LockoutThreshold, 5)
	def(&c.LoginBurst, 10)
	def(&c.LoginNetworkBurst, 30)
	def(&c.GlobalFailuresPerMinute, 60)
	def(&c.RegisterBurst, 5)
	def(&c.RegisterNetworkBurst, 10)
	defF(&c.LoginPerMinute, 20)
	defF(&c.LoginNetworkPerMinute, 60)
	defF(&c.RegisterPerHour, 10)
	defF(&c.RegisterNetworkPerHour, 30)
	defDur(&c.TokenLifetime, 30*24*time.Hour)
	defDur(&c.LockoutBase, time.Minute)
	defDur(&c.LockoutMax, time.Hour)
	defDur(&c.KnownNetworkLifetime, 30*24*time.Hour)
	defDur(&c.InviteLifetime, 7*24*time.Hour)
	if c.NameQuarantine == 0 {
		c.NameQuarantine = 90 * 24 * time.Hour
	}
	switch c.Registration {
	case "":
		c.Registration = RegistrationClosed
	case RegistrationClosed, RegistrationInvite, RegistrationOpen:
	default:
		return fmt.Errorf("clinkid: registration %q: want closed, invite or open", c.Registration)
	}
	if c.LockoutMax < c.LockoutBase {
		return errors.New("clinkid: lockout_max is shorter than lockout_base")
	}
	return c.Secrets.Check()
}

// Secrets are the bearer secrets the service accepts. A list holds more
// than one value only while that secret is rotated: the new one and the
// one it replaces are both accepted until the old one is removed, so the
// other side (the Prosody module, an admin's script) can switch at its
// own moment and no request fails in between.
type Secrets struct {
	// AdminTokens are the bearer tokens of the admin API (AdminHandler);
	// none turns the admin calls off.
	AdminTokens []string
	// BridgeSecrets are the bearer secrets of /clinkid/v1/bridge/ (the
	// Prosody module); none turns the bridge calls off.
	BridgeSecrets []string
}

// MaxSecretsAccepted bounds each list of Secrets: the current value and
// the one being rotated out.
const MaxSecretsAccepted = 2

// Check refuses a secret shorter than 32 bytes and a list longer than
// MaxSecretsAccepted.
func (s Secrets) Check() error {
	for _, l := range []struct {
		name   string
		values []string
	}{{"admin token", s.AdminTokens}, {"bridge secret", s.BridgeSecrets}} {
		if len(l.values) > MaxSecretsAccepted {
			return fmt.Errorf("clinkid: %d values of the %s, want at most %d (the new one and the old one, while rotating)", len(l.values), l.name, MaxSecretsAccepted)
		}
		for _, v := range l.values {
			if len(v) < 32 {
				return fmt.Errorf("clinkid: the %s must be at least 32 bytes", l.name)
			}
		}
	}
	return nil
}

// Errors. Each HTTP error code in docs/clinkid.md maps to one of them.
var (
	ErrNameTaken          = errors.New("clinkid: account name taken")
	ErrInvalidCredentials = errors.New("clinkid: wrong account name or password")
	ErrRateLimited        = errors.New("clinkid: too many requests from this address")
	ErrInvalidToken       = errors.New("clinkid: invalid or expired token")
	ErrNoAccount          = errors.New("clinkid: no such account")
	ErrUnknownEntitlement = errors.New("clinkid: unknown entitlement")
	ErrKeyBinding         = errors.New("clinkid: could not end the key binding")
	ErrLocked             = errors.New("clinkid: too many failed attempts; password login locked")
	// ErrThrottled is the global failure budget: too many failed password
	// attempts server-wide from unknown networks.
	ErrThrottled = errors.New("clinkid: too many failed logins on this server; password logins from unknown networks are held back")
)

// LockedError says until when password logins for a name are locked. It
// matches ErrLocked with errors.Is.
type LockedError struct{ Until time.Time }

func (e *LockedError) Error() string {
	return fmt.Sprintf("%v until %s", ErrLocked, e.Until.UTC().Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// Account is what the service shows of an account.
type Account struct {
	Name         string    `json:"account"`
	JID          string    `json:"jid"`
	CreatedAt    time.Time `json:"created_at"`
	Entitlements []string  `json:"entitlements"`
	// LockedUntil is set while password login is locked (Show only).
	LockedUntil *time.Time `json:"locked_until,omitempty"`
}

// Session is the result of a password login: an app token for the HTTPS
// API and for XMPP login.
type Session struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	Name      string    `json:"account"`
	JID       string    `json:"jid"`
}

// Service is the ClinkID account service. Its methods are safe for
// concurrent use.
type Service struct {
	db   *pgxpool.Pool
	cfg  Config
	log  *slog.Logger
	hash *hasher

	login    limitPair          // password attempts per address and network
	register limitPair          // registrations per address and network
	secret   limitPair          // wrong admin tokens or bridge secrets
	iqLimit  *ratelimit.Limiter // entitlement IQs per JID

	secrets   atomic.Pointer[Secrets] // what SetSecrets last set
	lastSweep atomic.Int64            // UnixNano of the last cleanup of expired rows
	wakeup    chan struct{}           // an event to push (Run)
	m         metrics
}

type metrics struct {
	passwordChecks *prometheus.CounterVec
	tokenChecks    *prometheus.CounterVec
	hashSeconds    prometheus.Histogram
	registered     prometheus.Counter
	deleted        prometheus.Counter
	refused        refusals
	events         *prometheus.CounterVec
	sessionEnds    *prometheus.CounterVec
}

// New checks cfg and builds the service on db, whose schema must include
// Migrations. reg may be nil.
func New(db *pgxpool.Pool, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Service, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h, err := newHasher(cfg.Params, cfg.HashConcurrency, cfg.HashQueue)
	if err != nil {
		return nil, err
	}
	s := &Service{
		db:       db,
		cfg:      cfg,
		log:      log,
		hash:     h,
		login:    newLimitPair("login", cfg.LoginPerMinute/60, cfg.LoginBurst, cfg.LoginNetworkPerMinute/60, cfg.LoginNetworkBurst),
		register: newLimitPair("register", cfg.RegisterPerHour/3600, cfg.RegisterBurst, cfg.RegisterNetworkPerHour/3600, cfg.RegisterNetworkBurst),
		// Wrong secrets: 10 a minute per address, 30 per network.
		secret:  newLimitPair("secret", 10.0/60, 10, 30.0/60, 30),
		iqLimit: ratelimit.New(30.0/60, 10, 100_000),
		wakeup:  make(chan struct{}, 1),
		m: metrics{
			passwordChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "clinkd_clinkid_password_checks_total",
				Help: "ClinkID password checks (HTTP login, bridges) by result: ok, fail, locked, rate_limited, throttled, busy, error.",
			}, []string{"result"}),
			tokenChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "clinkd_clinkid_token_checks_total",
				Help: "ClinkID app token checks by result: ok, fail.",
			}, []string{"result"}),
			hashSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
				Name:    "clinkd_clinkid_argon2id_seconds",
				Help:    "Time of one argon2id computation with the configured parameters.",
				Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
			}),
			registered: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "clinkd_clinkid_accounts_registered_total", Help: "ClinkID accounts registered.",
			}),
			deleted: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "clinkd_clinkid_accounts_deleted_total", Help: "ClinkID accounts deleted.",
			}),
			refused: refusals{prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "clinkd_clinkid_refused_total",
				Help: "Requests refused by a ClinkID limit or policy, by limit (docs/operators.md, Limits and abuse).",
			}, []string{"limit"})},
			events: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "clinkd_clinkid_events_total",
				Help: "Account events the XMPP servers are told of, by kind: registered, deleted, password_changed.",
			}, []string{"kind"}),
			sessionEnds: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "clinkd_clinkid_session_ends_total",
				Help: "Calls to the XMPP server's API that end the sessions of deleted accounts or changed passwords, by result: ok, error.",
			}, []string{"result"}),
		},
	}
	for _, l := range Limits() {
		s.m.refused.c.WithLabelValues(l) // every limit shows, at zero
	}
	h.observe = func(d time.Duration) { s.m.hashSeconds.Observe(d.Seconds()) }
	if reg != nil {
		reg.MustRegister(s.m.passwordChecks, s.m.tokenChecks, s.m.hashSeconds, s.m.registered, s.m.deleted,
			s.m.refused.c, s.m.events, s.m.sessionEnds)
	}
	s.secrets.Store(cloneSecrets(cfg.Secrets))
	return s, nil
}

// SetSecrets replaces the bearer secrets the admin API and the bridge
// accept, for the next request on: how a secret is rotated without a
// restart. Nothing changes unless secrets passes Check.
func (s *Service) SetSecrets(secrets Secrets) error {
	if err := secrets.Check(); err != nil {
		return err
	}
	s.secrets.Store(cloneSecrets(secrets))
	return nil
}

func cloneSecrets(s Secrets) *Secrets {
	return &Secrets{AdminTokens: slices.Clone(s.AdminTokens), BridgeSecrets: slices.Clone(s.BridgeSecrets)}
}

// Domain is the XMPP domain of the accounts.
func (s *Service) Domain() string { return s.cfg.Domain }

// HashCount returns how many argon2id computations the service has done.
func (s *Service) HashCount() int64 { return s.hash.computed.Load() }

func (s *Service) jidOf(name string) string { return name + "@" + s.cfg.Domain }

// checkPassword is every password check: HTTP login, the bridges, and the
// re-authentication of password change and account deletion. It returns
// the account's id, or ErrInvalidCredentials for a wrong password and an
// unknown name alike (after the same argon2id work), a *LockedError,
// ErrRateLimited, ErrThrottled or ErrBusy.
//
// The order is the cheapest refusal first: the address's budget (memory),
// which scope the attempt counts in (one query), for strangers the
// network's and the server's budgets, the scope's delay, a hashing slot
// (strangers queue behind the owner's known networks and tokens), and
// only then the attempt is counted and argon2id runs.
func (s *Service) checkPassword(ctx context.Context, name, password string, src source) (id int64, err error) {
	defer func() {
		result := "ok"
		switch {
		case err == nil:
		case errors.Is(err, ErrInvalidCredentials):
			result = "fail"
		case errors.Is(err, ErrLocked):
			result = "locked"
		case errors.Is(err, ErrRateLimited):
			result = "rate_limited"
		case errors.Is(err, ErrThrottled):
			result = "throttled"
		case errors.Is(err, ErrBusy):
			result = "busy"
		default:
			result = "error"
		}
		s.m.passwordChecks.WithLabelValues(result).Inc()
	}()
	if lim := s.login.allowAddr(src); lim != "" {
		s.m.refused.add(lim)
		return 0, ErrRateLimited
	}
	s.maybeSweep()
	n, err := NormalizeName(name)
	if err != nil || password == "" || len(password) > MaxPasswordBytes {
		// Nothing by that name can exist, or no such password can be
		// right: this says nothing about any account.
		return 0, ErrInvalidCredentials
	}
	scope, err := s.scopeOf(ctx, n, src)
	if err != nil {
		return 0, err
	}
	trusted := scope != ""
	if !trusted {
		if lim := s.login.allowNet(src); lim != "" {
			s.m.refused.add(lim)
			return 0, ErrRateLimited
		}
		if over, err := s.globalOver(ctx); err != nil {
			return 0, err
		} else if over {
			s.m.refused.add("global_failures")
			return 0, ErrThrottled
		}
	}
	// A cheap look first, so that a flood against a delayed name neither
	// waits for nor takes a hashing slot.
	if until, err := s.lockedUntil(ctx, n, scope); err != nil {
		return 0, err
	} else if !until.IsZero() {
		s.m.refused.add("name_delay")
		return 0, &LockedError{Until: until}
	}
	if err := s.hash.acquire(ctx, trusted); err != nil {
		if errors.Is(err, ErrBusy) {
			s.m.refused.add("hash_queue")
		}
		return 0, err
	}
	defer s.hash.release()
	// The attempt is counted before the password is checked, under a row
	// lock, so concurrent guesses cannot slip past the threshold.
	if until, err := s.beginAttempt(ctx, n, scope); err != nil {
		return 0, err
	} else if !until.IsZero() {
		s.m.refused.add("name_delay")
		return 0, &LockedError{Until: until}
	}
	var phc string
	err = s.db.QueryRow(ctx, `SELECT id, password_hash FROM clinkid_accounts WHERE name = $1`, n).Scan(&id, &phc)
	if errors.Is(err, pgx.ErrNoRows) {
		// The same argon2id work as a real account, then the same error.
		s.hash.verifyLocked(s.hash.dummy, password)
		s.countFailure(ctx, trusted)
		return 0, ErrInvalidCredentials
	}
	if err != nil {
		return 0, fmt.Errorf("clinkid: look up %s: %w", n, err)
	}
	ok, rehash, err := s.hash.verifyLocked(phc, password)
	if err != nil {
		return 0, fmt.Errorf("clinkid: %s: %w", n, err)
	}
	if !ok {
		s.countFailure(ctx, trusted)
		return 0, ErrInvalidCredentials
	}
	// A success forgets the failures of its own scope only: the owner
	// logging in at home does not reset a stranger's delay.
	if _, err := s.db.Exec(ctx, `DELETE FROM clinkid_failures WHERE name = $1 AND scope = $2`, n, scope); err != nil {
		return 0, fmt.Errorf("clinkid: clear failures of %s: %w", n, err)
	}
	if rehash {
		// The parameters were raised since this hash was made; the
		// password is at hand now and only now.
		newPHC := s.hash.compute([]byte(password), s.cfg.Params)
		if _, err := s.db.Exec(ctx, `UPDATE clinkid_accounts SET password_hash = $2 WHERE id = $1 AND password_hash = $3`, id, newPHC, phc); err != nil {
			s.log.Warn("clinkid: rehash failed", "account", s.jidOf(n), "err", err)
		}
	}
	s.noteNetwork(ctx, id, src)
	return id, nil
}

// scopeOf is the scope an attempt on name counts in: its token's, one of
// the account's known networks, or "" for everyone else.
func (s *Service) scopeOf(ctx context.Context, name string, src source) (string, error) {
	if src.token != "" {
		return src.token, nil
	}
	if src.net == "" {
		return "", nil
	}
	var known bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM clinkid_known_networks k JOIN clinkid_accounts a ON a.id = k.account_id
		WHERE a.name = $1 AND k.network = $2 AND k.last_seen > now() - make_interval(secs => $3))`,
		name, src.net, s.cfg.KnownNetworkLifetime.Seconds()).Scan(&known)
	if err != nil {
		return "", fmt.Errorf("clinkid: known networks of %s: %w", name, err)
	}
	if known {
		return "net:" + src.net, nil
	}
	return "", nil
}

// maxKnownNetworks bounds the networks remembered per account: each one
// lets its holders guess in a scope of their own.
const maxKnownNetworks = 20

// noteNetwork remembers that account id logged in from src's network. At
// most one write an hour per network; failures are logged, not returned:
// the login itself succeeded.
func (s *Service) noteNetwork(ctx context.Context, id int64, src source) {
	if src.net == "" {
		return
	}
	err := s.db.QueryRow(ctx, `INSERT INTO clinkid_known_networks (account_id, network) VALUES ($1, $2)
		ON CONFLICT (account_id, network) DO UPDATE SET last_seen = now()
		WHERE clinkid_known_networks.last_seen < now() - interval '1 hour' RETURNING 1`, id, src.net).Scan(new(int))
	if errors.Is(err, pgx.ErrNoRows) {
		return // seen within the hour
	}
	if err == nil {
		_, err = s.db.Exec(ctx, `DELETE FROM clinkid_known_networks WHERE account_id = $1 AND network IN (
			SELECT network FROM clinkid_known_networks WHERE account_id = $1 ORDER BY last_seen DESC, network OFFSET $2)`, id, maxKnownNetworks)
	}
	if err != nil {
		s.log.Warn("clinkid: could not remember a login network", "err", err)
	}
}

// globalOver reports whether failed attempts from unknown networks,
// server-wide, are over GlobalFailuresPerMinute: the current minute's plus
// the previous minute's weighted by how much of it the last 60 s still
// cover.
func (s *Service) globalOver(ctx context.Context) (bool, error) {
	var n float64
	err := s.db.QueryRow(ctx, `SELECT coalesce(sum(CASE WHEN minute = date_trunc('minute', now()) THEN failures
		ELSE failures * (1 - extract(epoch FROM now() - date_trunc('minute', now())) / 60) END), 0)::float8
		FROM clinkid_failure_budget WHERE minute >= date_trunc('minute', now()) - interval '1 minute'`).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("clinkid: global failure budget: %w", err)
	}
	return n >= float64(s.cfg.GlobalFailuresPerMinute), nil
}

// countFailure adds a failed attempt from an unknown network to the
// global budget. A failure to count is logged: the answer stays a refusal.
func (s *Service) countFailure(ctx context.Context, trusted bool) {
	if trusted {
		return
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO clinkid_failure_budget (minute, failures) VALUES (date_trunc('minute', now()), 1)
		ON CONFLICT (minute) DO UPDATE SET failures = clinkid_failure_budget.failures + 1`); err != nil {
		s.log.Warn("clinkid: could not count a failure in the global budget", "err", err)
	}
}

// failureWindow is how long failed attempts are remembered: a name with no
// failure for this long starts again from zero.
const failureWindow = 24 * time.Hour

// lockedUntil returns until when password attempts on name in scope are
// held back, or the zero time.
func (s *Service) lockedUntil(ctx context.Context, name, scope string) (time.Time, error) {
	var until time.Time
	err := s.db.QueryRow(ctx, `SELECT locked_until FROM clinkid_failures WHERE name = $1 AND scope = $2 AND locked_until > now()`, name, scope).Scan(&until)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("clinkid: lock-out state of %s: %w", name, err)
	}
	return until, nil
}

// beginAttempt counts one password attempt on name in scope. If the scope
// is held back it counts nothing and returns until when. Otherwise the
// attempt proceeds; if it is the LockoutThreshold-th or later consecutive
// one, the delay is set now, before the password is checked, and a
// success lifts it. So at most LockoutThreshold guesses are ever checked
// before the first delay, and one per delay after it, however many arrive
// at once.
func (s *Service) beginAttempt(ctx context.Context, name, scope string) (locked time.Time, err error) {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("clinkid: count attempt on %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO clinkid_failures (name, scope, failures, last_failure) VALUES ($1, $2, 0, now()) ON CONFLICT (name, scope) DO NOTHING`, name, scope); err != nil {
		return time.Time{}, fmt.Errorf("clinkid: count attempt on %s: %w", name, err)
	}
	var (
		failures  int
		last, now time.Time
		until     *time.Time
	)
	if err := tx.QueryRow(ctx, `SELECT failures, last_failure, locked_until, now() FROM clinkid_failures WHERE name = $1 AND scope = $2 FOR UPDATE`, name, scope).
		Scan(&failures, &last, &until, &now); err != nil {
		return time.Time{}, fmt.Errorf("clinkid: count attempt on %s: %w", name, err)
	}
	if until != nil && until.After(now) {
		return *until, tx.Commit(ctx)
	}
	n := failures + 1
	if now.Sub(last) > failureWindow {
		n = 1
	}
	var lock *time.Time
	if n >= s.cfg.LockoutThreshold {
		t := now.Add(lockDuration(n-s.cfg.LockoutThreshold, s.cfg.LockoutBase, s.cfg.LockoutMax))
		lock = &t
	}
	if _, err := tx.Exec(ctx, `UPDATE clinkid_failures SET failures = $3, last_failure = $4, locked_until = $5 WHERE name = $1 AND scope = $2`, name, scope, n, now, lock); err != nil {
		return time.Time{}, fmt.Errorf("clinkid: count attempt on %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return time.Time{}, fmt.Errorf("clinkid: count attempt on %s: %w", name, err)
	}
	return time.Time{}, nil
}

// lockDuration is the lock after the k-th failure past the threshold
// (k = 0 for the first lock): base × 2^k, at most maxLock.
func lockDuration(k int, base, maxLock time.Duration) time.Duration {
	d := base
	for range k {
		if d >= maxLock/2 {
			return maxLock
		}
		d *= 2
	}
	return min(d, maxLock)
}

// maybeSweep runs sweep at most every ten minutes, in the background.
func (s *Service) maybeSweep() {
	if s.cfg.NoSweep {
		return
	}
	now := time.Now().UnixNano()
	last := s.lastSweep.Load()
	if now-last < int64(10*time.Minute) || !s.lastSweep.CompareAndSwap(last, now) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.sweep(ctx); err != nil {
			s.log.Warn("clinkid: sweep failed", "err", err)
		}
	}()
}

// eventRetention is how long account events are kept for the XMPP
// servers to read: a Prosody module that could not reach clinkd for longer
// re-checks every connected account instead (docs/clinkid.md).
const eventRetention = 7 * 24 * time.Hour

// sweep deletes expired tokens and invites, failures forgotten after
// failureWindow (unless still held back), tombstones past the quarantine,
// old minutes of the global budget, networks not seen for
// KnownNetworkLifetime and events past eventRetention.
func (s *Service) sweep(ctx context.Context) error {
	for _, q := range []struct {
		what, sql string
		secs      float64
	}{
		{"tokens", `DELETE FROM clinkid_tokens WHERE expires_at < now() - make_interval(secs => $1)`, 0},
		{"invites", `DELETE FROM clinkid_invites WHERE expires_at < now() - make_interval(secs => $1)`, 0},
		{"failures", `DELETE FROM clinkid_failures WHERE last_failure < now() - make_interval(secs => $1)
			AND (locked_until IS NULL OR locked_until < now())`, failureWindow.Seconds()},
		{"tombstones", `DELETE FROM clinkid_tombstones WHERE deleted_at < now() - make_interval(secs => $1)`, max(s.cfg.NameQuarantine, 0).Seconds()},
		{"failure budget", `DELETE FROM clinkid_failure_budget WHERE minute < now() - make_interval(secs => $1)`, time.Hour.Seconds()},
		{"known networks", `DELETE FROM clinkid_known_networks WHERE last_seen < now() - make_interval(secs => $1)`, s.cfg.KnownNetworkLifetime.Seconds()},
		{"events", `DELETE FROM clinkid_events WHERE at < now() - make_interval(secs => $1)`, eventRetention.Seconds()},
	} {
		if _, err := s.db.Exec(ctx, q.sql, q.secs); err != nil {
			return fmt.Errorf("clinkid: sweep %s: %w", q.what, err)
		}
	}
	return nil
}

// Login checks a password and issues an app token for label (a device
// name, may be empty) that lives ttl, or Config.TokenLifetime if ttl is 0
// or longer. addr is the client's address ("" if unknown).
func (s *Service) Login(ctx context.Context, name, password, addr, label string, ttl time.Duration) (Session, error) {
	id, err := s.checkPassword(ctx, name, password, sourceOf(addr))
	if err != nil {
		return Session{}, err
	}
	n, _ := NormalizeName(name)
	return s.issueToken(ctx, id, n, label, ttl)
}

func (s *Service) issueToken(ctx context.Context, id int64, name, label string, ttl time.Duration) (Session, error) {
	if ttl <= 0 || ttl > s.cfg.TokenLifetime {
		ttl = s.cfg.TokenLifetime
	}
	tok, h := newToken()
	sess := Session{Token: tok, Name: name, JID: s.jidOf(name)}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return Session{}, fmt.Errorf("clinkid: issue token for %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	if err := tx.QueryRow(ctx, `INSERT INTO clinkid_tokens (hash, account_id, label, expires_at)
		VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at`,
		h[:], id, label, ttl.Seconds()).Scan(&sess.ExpiresAt); err != nil {
		return Session{}, fmt.Errorf("clinkid: issue token for %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM clinkid_tokens WHERE account_id = $1 AND (expires_at < now() OR hash IN (
		SELECT hash FROM clinkid_tokens WHERE account_id = $1 ORDER BY created_at DESC, hash OFFSET $2))`,
		id, s.cfg.MaxTokens); err != nil {
		return Session{}, fmt.Errorf("clinkid: prune tokens of %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Session{}, fmt.Errorf("clinkid: issue token for %s: %w", name, err)
	}
	return sess, nil
}

// tokenOwner returns the account of a live token, or ErrInvalidToken.
func (s *Service) tokenOwner(ctx context.Context, tok string) (id int64, name string, err error) {
	defer func() {
		if err == nil {
			s.m.tokenChecks.WithLabelValues("ok").Inc()
		} else if errors.Is(err, ErrInvalidToken) {
			s.m.tokenChecks.WithLabelValues("fail").Inc()
		}
	}()
	if !IsToken(tok) {
		return 0, "", ErrInvalidToken
	}
	err = s.db.QueryRow(ctx, `SELECT a.id, a.name FROM clinkid_tokens t JOIN clinkid_accounts a ON a.id = t.account_id
		WHERE t.hash = $1 AND t.expires_at > now()`, tokenHash(tok)).Scan(&id, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, "", ErrInvalidToken
	}
	if err != nil {
		return 0, "", fmt.Errorf("clinkid: check token: %w", err)
	}
	return id, name, nil
}

// CheckLogin is the auth bridges' check: whether secret is the password
// of name, or a live app token of name. addr is the client's address, or
// "" where the caller cannot know it (ejabberd's extauth protocol carries
// none). Tokens are checked first by their shape and never count toward
// any delay or budget, so an owner whose password is being guessed still
// logs in with a token. A wrong secret, an unknown or delayed name and
// rate limiting all give false with a nil error; an error means the check
// could not be made (database, ErrBusy).
func (s *Service) CheckLogin(ctx context.Context, name, secret, addr string) (bool, error) {
	return s.checkLogin(ctx, name, secret, sourceOf(addr))
}

func (s *Service) checkLogin(ctx context.Context, name, secret string, src source) (bool, error) {
	if IsToken(secret) {
		n, err := NormalizeName(name)
		if err != nil {
			return false, nil
		}
		id, owner, err := s.tokenOwner(ctx, secret)
		if errors.Is(err, ErrInvalidToken) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if subtle.ConstantTimeCompare([]byte(owner), []byte(n)) != 1 {
			return false, nil
		}
		s.noteNetwork(ctx, id, src)
		return true, nil
	}
	_, err := s.checkPassword(ctx, name, secret, src)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrInvalidCredentials), errors.Is(err, ErrLocked), errors.Is(err, ErrRateLimited), errors.Is(err, ErrThrottled):
		return false, nil
	}
	return false, err
}

// Exists reports whether an account called name exists.
func (s *Service) Exists(ctx context.Context, name string) (bool, error) {
	n, err := NormalizeName(name)
	if err != nil {
		return false, nil
	}
	var ok bool
	if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM clinkid_accounts WHERE name = $1)`, n).Scan(&ok); err != nil {
		return false, fmt.Errorf("clinkid: look up %s: %w", n, err)
	}
	return ok, nil
}

// Authenticate returns the account of a live app token.
func (s *Service) Authenticate(ctx context.Context, token string) (Account, error) {
	_, name, err := s.tokenOwner(ctx, token)
	if err != nil {
		return Account{}, err
	}
	return s.Show(ctx, name)
}

// ChangePassword sets a new password for the owner of token, who must
// also give the current one. Every other token of the account is revoked;
// token itself stays valid. The XMPP servers are told (an event), so that
// they end the account's sessions.
func (s *Service) ChangePassword(ctx context.Context, token, current, next, addr string) error {
	id, name, err := s.tokenOwner(ctx, token)
	if err != nil {
		return err
	}
	if err := checkNewPassword(next, s.cfg.MinPasswordLength, name); err != nil {
		s.m.refused.add("weak_password")
		return err
	}
	src := sourceOf(addr)
	src.token = tokenScope(token)
	if _, err := s.checkPassword(ctx, name, current, src); err != nil {
		return err
	}
	phc, err := s.hash.hash(ctx, next, true)
	if err != nil {
		return err
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("clinkid: change password of %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE clinkid_accounts SET password_hash = $2, password_changed_at = now() WHERE id = $1`, id, phc); err != nil {
		return fmt.Errorf("clinkid: change password of %s: %w", name, err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM clinkid_tokens WHERE account_id = $1 AND hash <> $2`, id, tokenHash(token))
	if err != nil {
		return fmt.Errorf("clinkid: revoke tokens of %s: %w", name, err)
	}
	if err := addEvent(ctx, tx, name, EventPasswordChanged); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("clinkid: change password of %s: %w", name, err)
	}
	s.eventAdded(EventPasswordChanged)
	s.log.Info("clinkid: password changed", "account", s.jidOf(name), "tokens_revoked", tag.RowsAffected())
	return nil
}

// Logout revokes token, or every token of its account if all is set.
func (s *Service) Logout(ctx context.Context, token string, all bool) error {
	id, name, err := s.tokenOwner(ctx, token)
	if err != nil {
		return err
	}
	if all {
		_, err = s.db.Exec(ctx, `DELETE FROM clinkid_tokens WHERE account_id = $1`, id)
	} else {
		_, err = s.db.Exec(ctx, `DELETE FROM clinkid_tokens WHERE hash = $1`, tokenHash(token))
	}
	if err != nil {
		return fmt.Errorf("clinkid: log out %s: %w", name, err)
	}
	return nil
}

// DeleteAccount deletes the account of token, whose owner must give the
// password too. The key binding ends first (KeyBindings); if that fails
// nothing is deleted and the error wraps ErrKeyBinding. Then the account,
// its tokens and entitlements go, the name is quarantined, and the XMPP
// servers are told (an event), so that they end its sessions.
func (s *Service) DeleteAccount(ctx context.Context, token, password, addr string) error {
	id, name, err := s.tokenOwner(ctx, token)
	if err != nil {
		return err
	}
	src := sourceOf(addr)
	src.token = tokenScope(token)
	if _, err := s.checkPassword(ctx, name, password, src); err != nil {
		return err
	}
	return s.deleteAccount(ctx, id, name, "deleted by its owner")
}

func (s *Service) deleteAccount(ctx context.Context, id int64, name, why string) error {
	bare := s.jidOf(name)
	binding := "none (no key directory configured)"
	if s.cfg.KeyBindings != nil {
		if err := s.cfg.KeyBindings.End(ctx, bare, "ClinkID account "+why); err != nil {
			s.log.Error("clinkid: account not deleted: key binding did not end", "account", bare, "err", err)
			return fmt.Errorf("%w of %s: %w", ErrKeyBinding, bare, err)
		}
		binding = "ended"
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("clinkid: delete %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `DELETE FROM clinkid_accounts WHERE id = $1`, id); err != nil {
		return fmt.Errorf("clinkid: delete %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO clinkid_tombstones (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET deleted_at = now()`, name); err != nil {
		return fmt.Errorf("clinkid: delete %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM clinkid_failures WHERE name = $1`, name); err != nil {
		return fmt.Errorf("clinkid: delete %s: %w", name, err)
	}
	if err := addEvent(ctx, tx, name, EventDeleted); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("clinkid: delete %s: %w", name, err)
	}
	s.eventAdded(EventDeleted)
	s.m.deleted.Inc()
	s.log.Info("clinkid: account deleted; its key binding ended", "account", bare, "why", why, "key_binding", binding)
	return nil
}

// Grant gives name the entitlement ent; by says who did (for the record).
// Granting what the account has is not an error.
func (s *Service) Grant(ctx context.Context, name, ent, by string) error {
	n, err := s.entitlementArgs(name, ent)
	if err != nil {
		return err
	}
	tag, err := s.db.Exec(ctx, `INSERT INTO clinkid_entitlements (account_id, name, granted_by)
		SELECT id, $2, $3 FROM clinkid_accounts WHERE name = $1
		ON CONFLICT (account_id, name) DO UPDATE SET granted_by = clinkid_entitlements.granted_by`, n, ent, by)
	if err != nil {
		return fmt.Errorf("clinkid: grant %s to %s: %w", ent, n, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s", ErrNoAccount, n)
	}
	s.log.Info("clinkid: entitlement granted", "account", s.jidOf(n), "entitlement", ent, "by", by)
	return nil
}

// Revoke takes the entitlement ent from name. Revoking what the account
// lacks is not an error.
func (s *Service) Revoke(ctx context.Context, name, ent, by string) error {
	n, err := s.entitlementArgs(name, ent)
	if err != nil {
		return err
	}
	var id int64
	err = s.db.QueryRow(ctx, `SELECT id FROM clinkid_accounts WHERE name = $1`, n).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %s", ErrNoAccount, n)
	}
	if err == nil {
		_, err = s.db.Exec(ctx, `DELETE FROM clinkid_entitlements WHERE account_id = $1 AND name = $2`, id, ent)
	}
	if err != nil {
		return fmt.Errorf("clinkid: revoke %s from %s: %w", ent, n, err)
	}
	s.log.Info("clinkid: entitlement revoked", "account", s.jidOf(n), "entitlement", ent, "by", by)
	return nil
}

func (s *Service) entitlementArgs(name, ent string) (string, error) {
	if !slices.Contains(Entitlements(), ent) {
		return "", fmt.Errorf("%w %q (known: %v)", ErrUnknownEntitlement, ent, Entitlements())
	}
	n, err := NormalizeName(name)
	if err != nil {
		return "", fmt.Errorf("%w: %q", ErrNoAccount, name)
	}
	return n, nil
}

// HasEntitlement reports whether the account with the bare JID account
// (alice@example.org) carries the entitlement ent. A JID of another
// domain, or of no ClinkID account, has no entitlement (false, nil); an
// error means the store could not answer, and the caller should refuse
// rather than grant.
func (s *Service) HasEntitlement(ctx context.Context, account, ent string) (bool, error) {
	j, err := jid.Parse(account)
	if err != nil || j.Domainpart() != s.cfg.Domain || j.Localpart() == "" {
		return false, nil
	}
	var ok bool
	err = s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM clinkid_entitlements e JOIN clinkid_accounts a ON a.id = e.account_id
		WHERE a.name = $1 AND e.name = $2)`, j.Localpart(), ent).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("clinkid: entitlement %s of %s: %w", ent, j.Bare(), err)
	}
	return ok, nil
}

// Show returns an account with its entitlements and lock-out state.
func (s *Service) Show(ctx context.Context, name string) (Account, error) {
	n, err := NormalizeName(name)
	if err != nil {
		return Account{}, fmt.Errorf("%w: %q", ErrNoAccount, name)
	}
	a := Account{Name: n, JID: s.jidOf(n)}
	var ents []string
	err = s.db.QueryRow(ctx, `SELECT a.created_at,
		coalesce((SELECT array_agg(e.name ORDER BY e.name) FROM clinkid_entitlements e WHERE e.account_id = a.id), '{}'),
		(SELECT f.locked_until FROM clinkid_failures f WHERE f.name = a.name AND f.scope = '' AND f.locked_until > now())
		FROM clinkid_accounts a WHERE a.name = $1`, n).Scan(&a.CreatedAt, &ents, &a.LockedUntil)
	if errors.Is(err, pgx.ErrNoRows) {
		return Account{}, fmt.Errorf("%w: %s", ErrNoAccount, n)
	}
	if err != nil {
		return Account{}, fmt.Errorf("clinkid: show %s: %w", n, err)
	}
	a.Entitlements = ents
	return a, nil
}

// Unlock lifts every delay on name and forgets its failed attempts.
func (s *Service) Unlock(ctx context.Context, name string) error {
	n, err := NormalizeName(name)
	if err != nil {
		return fmt.Errorf("%w: %q", ErrNoAccount, name)
	}
	if _, err := s.db.Exec(ctx, `DELETE FROM clinkid_failures WHERE name = $1`, n); err != nil {
		return fmt.Errorf("clinkid: unlock %s: %w", n, err)
	}
	return nil
}
