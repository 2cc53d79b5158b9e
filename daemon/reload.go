package daemon

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
)

// reloadable are the config keys (or key prefixes ending in ".") that
// Reload applies to a running clinkd. Every other key that differs needs a
// restart, and Reload names it.
var reloadable = []string{
	"log.level",
	"link.secret", "link.secret_file",
	"database.password", "database.password_file",
	"clinkid.admin_token", "clinkid.admin_token_file", "clinkid.bridge_secret", "clinkid.bridge_secret_file",
	"public.cert_file", "public.key_file",
	"turn.secret", "turn.secret_file", "turn.lifetime", "turn.services", "turn.per_minute", "turn.burst",
	"relay.",
	"expiry.min_period", "expiry.max_period", "expiry.unseen_max_period",
	"expiry.per_user_messages", "expiry.per_user_bytes",
	"expiry.per_sender_messages", "expiry.per_sender_bytes", "expiry.per_pair_messages",
	"expiry.total_bytes",
	"receipts.",
}

func isReloadable(key string) bool {
	return slices.ContainsFunc(reloadable, func(r string) bool {
		return key == r || (strings.HasSuffix(r, ".") && strings.HasPrefix(key, r))
	})
}

// Reload applies cfg to the running clinkd without dropping the link or
// anything held: the log level, the public listener's certificate (read
// from its files again, so a renewed one is served to the next client),
// the secrets (the link's for its next handshake, the database password
// for new connections, ClinkID's admin token and bridge secret for the
// next request), the TURN secret, servers and limits, and the relay's and
// receipts' limits. cfg must have passed LoadConfig. Nothing changes
// unless every part of it is valid. It returns the keys that differ from
// the running configuration but need a restart to take effect; those keep
// their running values.
//
// level is the logger's level, set when log.level changes (nil: the level
// is fixed).
func (d *Daemon) Reload(cfg Config, level *slog.LevelVar) (restart []string, err error) {
	// Check everything first.
	var newLevel slog.Level
	if err := newLevel.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		return nil, fmt.Errorf("config: log.level %q: want debug, info, warn or error", cfg.Log.Level)
	}
	var cert *tls.Certificate
	if d.tlsCfg != nil && cfg.Public.CertFile != "" && cfg.Public.KeyFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.Public.CertFile, cfg.Public.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("config: public TLS certificate: %w", err)
		}
		cert = &c
	}
	if cfg.Link.Secret != d.cfg.Link.Secret {
		if err := CheckLinkSecret(cfg.Link.Secret); err != nil {
			return nil, fmt.Errorf("config: link.secret: %w", err)
		}
	}
	secrets := clinkIDSecrets(cfg.ClinkID)
	if err := secrets.Check(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	turnOn := len(d.cfg.TURN.Services) > 0
	if turnOn && len(cfg.TURN.Services) > 0 {
		if err := turnConfig(cfg).Check(); err != nil {
			return nil, fmt.Errorf("config: turn: %w", err)
		}
	}
	if d.relay != nil {
		if err := expiryLimits(cfg).Check(); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := dispatchAccess(cfg).Check(); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}

	// Then what differs, and what of it cannot change live.
	var changed []string
	old, next := reflect.ValueOf(&d.cfg).Elem(), reflect.ValueOf(&cfg).Elem()
	values := map[string]reflect.Value{}
	walk(old, "", func(key string, v reflect.Value) { values[key] = v })
	walk(next, "", func(key string, v reflect.Value) {
		if reflect.DeepEqual(values[key].Interface(), v.Interface()) {
			return
		}
		switch {
		case key == "turn.services" && turnOn != (len(cfg.TURN.Services) > 0):
			restart = append(restart, key) // turning TURN on or off registers handlers
		case strings.HasPrefix(key, "clinkid.admin_token") && (d.cfg.ClinkID.AdminToken == "") != (cfg.ClinkID.AdminToken == ""):
			restart = append(restart, key) // turning the admin API on is checked against the admin listener at start
		case strings.HasPrefix(key, "clinkid.") && d.accounts == nil,
			strings.HasPrefix(key, "database.password") && d.db == nil:
			restart = append(restart, key)
		case isReloadable(key):
			changed = append(changed, key)
		default:
			restart = append(restart, key)
		}
	})

	// Apply.
	if level != nil {
		level.Set(newLevel)
	}
	if err := d.comp.SetSecret([]byte(cfg.Link.Secret)); err != nil {
		return nil, fmt.Errorf("config: link.secret: %w", err) // checked at load: cannot happen
	}
	d.cfg.Link.Secret, d.cfg.Link.SecretFile = cfg.Link.Secret, cfg.Link.SecretFile
	if d.db != nil {
		d.dbPassword.Store(&cfg.Database.Password)
		d.cfg.Database.Password, d.cfg.Database.PasswordFile = cfg.Database.Password, cfg.Database.PasswordFile
	}
	if d.accounts != nil {
		if (d.cfg.ClinkID.AdminToken == "") != (cfg.ClinkID.AdminToken == "") {
			secrets.AdminTokens = clinkIDSecrets(d.cfg.ClinkID).AdminTokens // needs a restart: the running one stays
		} else {
			d.cfg.ClinkID.AdminToken, d.cfg.ClinkID.AdminTokenFile = cfg.ClinkID.AdminToken, cfg.ClinkID.AdminTokenFile
		}
		if err := d.accounts.SetSecrets(secrets); err != nil {
			return nil, fmt.Errorf("config: %w", err) // checked above: cannot happen
		}
		d.cfg.ClinkID.BridgeSecret, d.cfg.ClinkID.BridgeSecretFile = cfg.ClinkID.BridgeSecret, cfg.ClinkID.BridgeSecretFile
	}
	if cert != nil {
		d.publicCert.Store(cert)
	}
	if d.turn != nil && len(cfg.TURN.Services) > 0 {
		if err := d.turn.Reload(turnConfig(cfg)); err != nil {
			return nil, fmt.Errorf("config: turn: %w", err) // checked above: cannot happen
		}
		d.cfg.TURN = cfg.TURN
	}
	if d.relay != nil {
		if err := d.relay.Reload(expiryLimits(cfg)); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := d.router.Reload(dispatchAccess(cfg)); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		d.cfg.Relay = cfg.Relay
		keep := d.cfg.Expiry
		d.cfg.Expiry = cfg.Expiry
		d.cfg.Expiry.Disabled, d.cfg.Expiry.DevicesPerUser, d.cfg.Expiry.LockMemory = keep.Disabled, keep.DevicesPerUser, keep.LockMemory
		d.cfg.Expiry.HandoffSocket = keep.HandoffSocket
	}
	if d.tracker != nil {
		d.tracker.Reload(receiptsLimits(cfg))
	}
	d.cfg.Receipts = cfg.Receipts
	d.cfg.Log.Level = cfg.Log.Level
	d.cfg.Public.CertFile, d.cfg.Public.KeyFile = cfg.Public.CertFile, cfg.Public.KeyFile
	d.log.Info("configuration reloaded", "changed", changed, "certificate_reread", cert != nil, "needs_restart", restart)
	if len(restart) > 0 {
		d.log.Warn("these settings changed but need a restart to take effect", "keys", restart)
	}
	return restart, nil
}
