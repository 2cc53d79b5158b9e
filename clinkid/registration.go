package clinkid

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Registration says who may create an account over HTTPS.
type Registration string

const (
	// RegistrationClosed refuses every registration over HTTPS (the
	// default): operators create accounts with `clinkd accounts create`.
	RegistrationClosed Registration = "closed"
	// RegistrationInvite takes a registration that carries a live invite,
	// which an operator made (`clinkd accounts invite`, the admin API);
	// each invite registers one account.
	RegistrationInvite Registration = "invite"
	// RegistrationOpen lets anyone register, within the per-address and
	// per-network limits.
	RegistrationOpen Registration = "open"
)

// Registration errors.
var (
	ErrRegistrationClosed = errors.New("clinkid: registration is closed on this server")
	ErrInvalidInvite      = errors.New("clinkid: registration needs a valid invite")
)

// An invite is InvitePrefix followed by 32 random bytes in unpadded
// base64url, like an app token but with its own prefix: an invite is
// never a password or a token. Only its SHA-256 is stored.
const InvitePrefix = "ci1_"

// IsInvite reports whether s has the shape of an invite.
func IsInvite(s string) bool {
	if len(s) != len(InvitePrefix)+43 || !strings.HasPrefix(s, InvitePrefix) {
		return false
	}
	_, err := base64.RawURLEncoding.Strict().DecodeString(s[len(InvitePrefix):])
	return err == nil
}

// Invite is a fresh invite.
type Invite struct {
	Code      string    `json:"invite"`
	ExpiresAt time.Time `json:"expires_at"`
}

// CreateInvite makes an invite that registers one account until ttl from
// now (Config.InviteLifetime if ttl is 0); by says who made it.
func (s *Service) CreateInvite(ctx context.Context, ttl time.Duration, by string) (Invite, error) {
	if ttl <= 0 {
		ttl = s.cfg.InviteLifetime
	}
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	inv := Invite{Code: InvitePrefix + base64.RawURLEncoding.EncodeToString(b[:])}
	err := s.db.QueryRow(ctx, `INSERT INTO clinkid_invites (hash, created_by, expires_at)
		VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at`,
		tokenHash(inv.Code), by, ttl.Seconds()).Scan(&inv.ExpiresAt)
	if err != nil {
		return Invite{}, fmt.Errorf("clinkid: create invite: %w", err)
	}
	s.log.Info("clinkid: invite created", "by", by, "expires_at", inv.ExpiresAt)
	return inv, nil
}

// RegisterAccount is a registration over HTTPS: it applies Config.Registration
// (closed, invite, open), the per-address and per-network limits, and the
// password policy. invite is "" unless the mode is invite. addr is the
// client's address.
func (s *Service) RegisterAccount(ctx context.Context, name, password, invite, addr string) (Account, error) {
	if s.cfg.Registration == RegistrationClosed {
		s.m.refused.add("registration_closed")
		return Account{}, ErrRegistrationClosed
	}
	src := sourceOf(addr)
	if lim := s.register.allowAddr(src); lim != "" {
		s.m.refused.add(lim)
		return Account{}, ErrRateLimited
	}
	if lim := s.register.allowNet(src); lim != "" {
		s.m.refused.add(lim)
		return Account{}, ErrRateLimited
	}
	if s.cfg.Registration == RegistrationInvite && !IsInvite(invite) {
		s.m.refused.add("invalid_invite")
		return Account{}, ErrInvalidInvite
	}
	if s.cfg.Registration != RegistrationInvite {
		invite = ""
	}
	return s.create(ctx, name, password, invite, src)
}

// CreateAccount registers name with password whatever
// Config.Registration says: for operators (`clinkd accounts create`) and
// clinkd's own features. The password policy applies; addr, if not "",
// counts against the per-address and per-network registration limits and
// becomes a known network of the account.
func (s *Service) CreateAccount(ctx context.Context, name, password, addr string) (Account, error) {
	src := sourceOf(addr)
	if lim := s.register.allowAddr(src); lim != "" {
		s.m.refused.add(lim)
		return Account{}, ErrRateLimited
	}
	if lim := s.register.allowNet(src); lim != "" {
		s.m.refused.add(lim)
		return Account{}, ErrRateLimited
	}
	return s.create(ctx, name, password, "", src)
}

func (s *Service) create(ctx context.Context, name, password, invite string, src source) (Account, error) {
	n, err := NormalizeName(name)
	if err != nil {
		return Account{}, err
	}
	if err := checkNewPassword(password, s.cfg.MinPasswordLength, n); err != nil {
		s.m.refused.add("weak_password")
		return Account{}, err
	}
	// Look before hashing: a taken name should not cost an argon2id.
	// The insert below decides races.
	if taken, err := s.nameTaken(ctx, n); err != nil {
		return Account{}, err
	} else if taken {
		return Account{}, ErrNameTaken
	}
	phc, err := s.hash.hash(ctx, password, false)
	if err != nil {
		if errors.Is(err, ErrBusy) {
			s.m.refused.add("hash_queue")
		}
		return Account{}, err
	}
	a := Account{Name: n, JID: s.jidOf(n), Entitlements: []string{}}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return Account{}, fmt.Errorf("clinkid: register %s: %w", n, err)
	}
	defer tx.Rollback(ctx)
	if invite != "" {
		// Used once: the row goes with the account, or stays if the
		// account cannot be made.
		err := tx.QueryRow(ctx, `DELETE FROM clinkid_invites WHERE hash = $1 AND expires_at > now() RETURNING 1`, tokenHash(invite)).Scan(new(int))
		if errors.Is(err, pgx.ErrNoRows) {
			s.m.refused.add("invalid_invite")
			return Account{}, ErrInvalidInvite
		}
		if err != nil {
			return Account{}, fmt.Errorf("clinkid: register %s: invite: %w", n, err)
		}
	}
	var id int64
	err = tx.QueryRow(ctx, `INSERT INTO clinkid_accounts (name, password_hash) VALUES ($1, $2)
		ON CONFLICT (name) DO NOTHING RETURNING id, created_at`, n, phc).Scan(&id, &a.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Account{}, ErrNameTaken
	}
	if err != nil {
		return Account{}, fmt.Errorf("clinkid: register %s: %w", n, err)
	}
	if src.net != "" {
		// The network a device registered from is the owner's.
		if _, err := tx.Exec(ctx, `INSERT INTO clinkid_known_networks (account_id, network) VALUES ($1, $2)`, id, src.net); err != nil {
			return Account{}, fmt.Errorf("clinkid: register %s: %w", n, err)
		}
	}
	if err := addEvent(ctx, tx, n, EventRegistered); err != nil {
		return Account{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return Account{}, fmt.Errorf("clinkid: register %s: %w", n, err)
	}
	s.eventAdded(EventRegistered)
	s.m.registered.Inc()
	s.log.Info("clinkid: account registered", "account", a.JID, "invite", invite != "")
	return a, nil
}

func (s *Service) nameTaken(ctx context.Context, n string) (bool, error) {
	var taken bool
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM clinkid_accounts WHERE name = $1)
		OR EXISTS (SELECT 1 FROM clinkid_tombstones WHERE name = $1 AND deleted_at > now() - make_interval(secs => $2))`,
		n, max(s.cfg.NameQuarantine, 0).Seconds()).Scan(&taken)
	if err != nil {
		return false, fmt.Errorf("clinkid: look up %s: %w", n, err)
	}
	return taken, nil
}
