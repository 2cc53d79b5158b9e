package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinkme/clinkd/clinkid"
)

// clinkIDConfig turns the clinkid section into the service's config.
func (c Config) clinkIDConfig() (clinkid.Config, error) {
	k := c.ClinkID
	if c.Link.ServerDomain == "" {
		return clinkid.Config{}, errors.New("config: clinkid needs link.server_domain (accounts are users of that domain)")
	}
	p := clinkid.DefaultParams()
	if k.Argon2MemoryKiB != 0 {
		if k.Argon2MemoryKiB < 0 || k.Argon2MemoryKiB > math.MaxUint32 {
			return clinkid.Config{}, errors.New("config: clinkid.argon2_memory_kib out of range")
		}
		p.Memory = uint32(k.Argon2MemoryKiB)
	}
	if k.Argon2Iterations != 0 {
		if k.Argon2Iterations < 0 || k.Argon2Iterations > math.MaxUint32 {
			return clinkid.Config{}, errors.New("config: clinkid.argon2_iterations out of range")
		}
		p.Iterations = uint32(k.Argon2Iterations)
	}
	if k.Argon2Parallelism != 0 {
		if k.Argon2Parallelism < 0 || k.Argon2Parallelism > math.MaxUint8 {
			return clinkid.Config{}, errors.New("config: clinkid.argon2_parallelism out of range")
		}
		p.Parallelism = uint8(k.Argon2Parallelism)
	}
	if err := p.Validate(); err != nil {
		return clinkid.Config{}, fmt.Errorf("config: %w", err)
	}
	var sessions clinkid.SessionEnder = clinkid.PulledOnly{}
	if k.EjabberdAPIURL != "" {
		api, err := clinkid.ParseEjabberdAPI(k.EjabberdAPIURL, c.Link.ServerDomain)
		if err != nil {
			return clinkid.Config{}, fmt.Errorf("config: %w", err)
		}
		sessions = api
	}
	return clinkid.Config{
		Domain:                  c.Link.ServerDomain,
		Params:                  p,
		HashConcurrency:         k.HashConcurrency,
		HashQueue:               k.HashQueue,
		MinPasswordLength:       k.MinPasswordLength,
		TokenLifetime:           k.TokenLifetime,
		MaxTokens:               k.MaxTokens,
		LockoutThreshold:        k.LockoutThreshold,
		LockoutBase:             k.LockoutBase,
		LockoutMax:              k.LockoutMax,
		LoginPerMinute:          k.LoginPerMinute,
		LoginBurst:              k.LoginBurst,
		LoginNetworkPerMinute:   k.LoginNetworkPerMinute,
		LoginNetworkBurst:       k.LoginNetworkBurst,
		GlobalFailuresPerMinute: k.GlobalFailuresPerMinute,
		KnownNetworkLifetime:    k.KnownNetworkLifetime,
		Registration:            clinkid.Registration(k.Registration),
		InviteLifetime:          k.InviteLifetime,
		RegisterPerHour:         k.RegisterPerHour,
		RegisterBurst:           k.RegisterBurst,
		RegisterNetworkPerHour:  k.RegisterNetworkPerHour,
		RegisterNetworkBurst:    k.RegisterNetworkBurst,
		NameQuarantine:          k.NameQuarantine,
		Secrets:                 clinkIDSecrets(k),
		TrustForwardedFor:       k.TrustForwardedFor,
		Sessions:                sessions,
	}, nil
}

// ClinkIDService builds the ClinkID service from cfg on db, for clinkd
// serve and the `clinkd accounts` commands. reg may be nil. with adjusts
// what the YAML cannot say, e.g. the key directory as KeyBindings:
//
//	ClinkIDService(cfg, db, log, reg, func(c *clinkid.Config) { c.KeyBindings = keys })
func ClinkIDService(cfg Config, db *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer, with ...func(*clinkid.Config)) (*clinkid.Service, error) {
	c, err := cfg.clinkIDConfig()
	if err != nil {
		return nil, err
	}
	for _, f := range with {
		f(&c)
	}
	if db == nil {
		return nil, errors.New("config: clinkid needs database.url")
	}
	svc, err := clinkid.New(db, c, log, reg)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return svc, nil
}

// extauthConns is the database pool of one `clinkd extauth` process:
// ejabberd sends it one request at a time, so two connections cover a
// request and a background sweep.
const extauthConns = 2

// Extauth builds ejabberd's auth bridge from cfg (database and clinkid
// sections, link.server_domain): one process of ejabberd's pool, talking
// to PostgreSQL directly. Call the returned close when done.
func Extauth(ctx context.Context, cfg Config, log *slog.Logger) (*clinkid.Extauth, func(), error) {
	if cfg.Database.URL == "" {
		return nil, nil, errors.New("config: clinkd extauth needs database.url")
	}
	dbCfg := cfg.Database
	dbCfg.MaxConns = extauthConns
	db, err := OpenDatabase(ctx, dbCfg)
	if err != nil {
		return nil, nil, err
	}
	c, err := cfg.clinkIDConfig()
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	// One request at a time: one argon2id at a time, so the memory of
	// the whole pool is extauth_pool_size × argon2_memory_kib.
	c.HashConcurrency, c.HashQueue = 1, 1
	// clinkd serve deletes expired rows and tells the XMPP server of
	// account changes; extauth's role need do neither.
	c.NoSweep = true
	c.Sessions = clinkid.PulledOnly{}
	svc, err := clinkid.New(db, c, log, nil)
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	return &clinkid.Extauth{Checker: svc, Domain: svc.Domain(), Log: log}, db.Close, nil
}

// clinkIDSecrets splits the admin token and the bridge secret into the
// values accepted: one per line, two while one is being rotated
// (docs/operators.md, "Rotate a secret").
func clinkIDSecrets(k ClinkIDConfig) clinkid.Secrets {
	return clinkid.Secrets{AdminTokens: secretLines(k.AdminToken), BridgeSecrets: secretLines(k.BridgeSecret)}
}

func secretLines(s string) []string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
