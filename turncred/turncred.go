// Package turncred hands devices their STUN and TURN servers over XEP-0215
// (External Service Discovery) together with short-lived TURN credentials
// that coturn checks on its own, with no call back to clinkd.
//
// The credentials follow the TURN REST scheme coturn implements for
// use-auth-secret (draft-uberti-behave-turn-rest-00): the username is
// "EXPIRY:bare-jid", EXPIRY a Unix time, and the password is
// base64(HMAC-SHA1(secret, username)). coturn recomputes the HMAC with the
// same shared secret and refuses the username once EXPIRY has passed, so a
// leaked credential is worth little and no static TURN password is handed
// out. Only users of the local XMPP domain get credentials: the relay is
// paid for by this deployment.
package turncred

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/extdisco"
	"github.com/clinkme/clinkd/internal/ratelimit"
)

// Credential returns the TURN REST username and password for user valid
// until expires.
//
// The username is exactly EXPIRY ":" user and must stay so: coturn counts
// allocations for its user-quota under the username with the all-digit
// EXPIRY prefix removed, so every credential of a user shares one budget.
// Anything that varied after the separator would give each credential a
// budget of its own (TestUserAllocationBudget).
func Credential(secret []byte, user string, expires time.Time) (username, password string) {
	username = strconv.FormatInt(expires.Unix(), 10) + ":" + user
	mac := hmac.New(sha1.New, secret)
	mac.Write([]byte(username))
	return username, base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Config configures the service.
type Config struct {
	// Secret is coturn's static-auth-secret.
	Secret []byte
	// Lifetime is how long issued credentials work (default 1h; a call
	// longer than that keeps its allocation, which coturn refreshes
	// without asking for the password again).
	Lifetime time.Duration
	// Services are the servers announced, as RFC 7064/7065 URIs:
	// stun:host:port, turn:host:port?transport=udp|tcp, turns:host:port.
	Services []string
	// LocalDomain is the XMPP domain whose users may have credentials.
	LocalDomain string
	// PerMinute and Burst bound requests per user (defaults 30 and 10).
	PerMinute float64
	Burst     int
	// Now is the clock (default time.Now); tests set it.
	Now func() time.Time
}

// Service answers XEP-0215 <services/> and <credentials/> requests.
type Service struct {
	state  atomic.Pointer[state] // replaced whole by Reload
	log    *slog.Logger
	issued prometheus.Counter
}

// state is what one configuration makes: handlers read one state per
// request, so a reload never mixes an old secret with new services.
type state struct {
	cfg      Config
	services []extdisco.Service
	limit    *ratelimit.Limiter
}

// newState checks cfg and builds what it makes.
func newState(cfg Config) (*state, error) {
	if len(cfg.Secret) < 16 {
		return nil, errors.New("turncred: the shared secret must be at least 16 bytes")
	}
	if cfg.LocalDomain == "" {
		return nil, errors.New("turncred: no local domain")
	}
	if len(cfg.Services) == 0 {
		return nil, errors.New("turncred: no services")
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = time.Hour
	}
	if cfg.PerMinute <= 0 {
		cfg.PerMinute = 30
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 10
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	st := &state{cfg: cfg, limit: ratelimit.New(cfg.PerMinute/60, cfg.Burst, 100_000)}
	for _, u := range cfg.Services {
		svc, err := ParseURI(u)
		if err != nil {
			return nil, err
		}
		st.services = append(st.services, svc)
	}
	return st, nil
}

// Check reports whether cfg is one New and Reload accept.
func (cfg Config) Check() error {
	_, err := newState(cfg)
	return err
}

// New checks cfg and builds the service. reg may be nil.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Service, error) {
	st, err := newState(cfg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		log: log,
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinkd_turn_credentials_issued_total",
			Help: "TURN REST credentials handed out over XEP-0215.",
		}),
	}
	s.state.Store(st)
	if reg != nil {
		reg.MustRegister(s.issued)
	}
	return s, nil
}

// Reload replaces the configuration while the service runs (a rotated
// secret, other servers, other limits): the next request uses it whole.
// Credentials issued before keep working at coturn as long as coturn
// accepts the secret they were made with. The rate buckets start over
// only when the rate or burst changed.
func (s *Service) Reload(cfg Config) error {
	st, err := newState(cfg)
	if err != nil {
		return err
	}
	if old := s.state.Load(); old.cfg.PerMinute == st.cfg.PerMinute && old.cfg.Burst == st.cfg.Burst {
		st.limit = old.limit
	}
	s.state.Store(st)
	return nil
}

// ParseURI parses a STUN or TURN URI (RFC 7064, RFC 7065) into a service.
func ParseURI(s string) (extdisco.Service, error) {
	var svc extdisco.Service
	u, err := url.Parse(s)
	if err != nil || u.Opaque == "" {
		return svc, fmt.Errorf("turncred: %q is not a stun:, turn: or turns: URI", s)
	}
	svc.Type = u.Scheme
	defPort, transport := "3478", "udp"
	switch u.Scheme {
	case "stun":
	case "turn":
		svc.Restricted = true
	case "turns":
		svc.Restricted = true
		defPort, transport = "5349", "tcp"
	default:
		return svc, fmt.Errorf("turncred: %q: scheme must be stun, turn or turns", s)
	}
	host, port, err := net.SplitHostPort(u.Opaque)
	if err != nil {
		host, port = u.Opaque, defPort
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 || host == "" {
		return svc, fmt.Errorf("turncred: %q: bad host or port", s)
	}
	if t := u.Query().Get("transport"); t != "" {
		transport = strings.ToLower(t)
	}
	if transport != "udp" && transport != "tcp" {
		return svc, fmt.Errorf("turncred: %q: transport must be udp or tcp", s)
	}
	if u.Scheme == "turns" && transport != "tcp" {
		return svc, fmt.Errorf("turncred: %q: turns runs over tcp", s)
	}
	svc.Host, svc.Port, svc.Transport = host, p, transport
	return svc, nil
}

// Register routes the service's payloads on c.
func (s *Service) Register(c *component.Component) {
	c.HandleIQ(xml.Name{Space: extdisco.NS, Local: "services"}, component.IQHandlerFunc(s.handleServices))
	c.HandleIQ(xml.Name{Space: extdisco.NS, Local: "credentials"}, component.IQHandlerFunc(s.handleCredentials))
}

func (st *state) check(iq *component.Stanza) error {
	if iq.Type != string(stanza.GetIQ) {
		return component.Error(stanza.BadRequest, "XEP-0215 requests are IQ get")
	}
	if iq.From.Domainpart() != st.cfg.LocalDomain || iq.From.Localpart() == "" {
		return component.Errorf(stanza.Forbidden, "TURN credentials are only for users of %s", st.cfg.LocalDomain)
	}
	if !st.limit.Allow(iq.From.Bare().String()) {
		return component.Error(stanza.ResourceConstraint, "too many credential requests; try again in a minute")
	}
	return nil
}

// Issue returns fresh credentials for user (a bare JID), valid for the
// configured lifetime from the service's clock, and their expiry.
func (s *Service) Issue(user string) (username, password string, expires time.Time) {
	return s.issue(s.state.Load(), user)
}

func (s *Service) issue(st *state, user string) (username, password string, expires time.Time) {
	expires = st.cfg.Now().Add(st.cfg.Lifetime).UTC().Truncate(time.Second)
	username, password = Credential(st.cfg.Secret, user, expires)
	s.issued.Inc()
	return username, password, expires
}

// withCredentials returns svc with fresh credentials for user if it is a
// TURN service.
func (s *Service) withCredentials(st *state, svc extdisco.Service, user string) extdisco.Service {
	if svc.Type == "stun" {
		return svc
	}
	var exp time.Time
	svc.Username, svc.Password, exp = s.issue(st, user)
	svc.Expires = &exp
	return svc
}

func (s *Service) handleServices(_ context.Context, iq *component.Stanza) (any, error) {
	var req extdisco.Services
	if err := iq.Decode(xml.Name{Space: extdisco.NS, Local: "services"}, &req); err != nil {
		return nil, err
	}
	st := s.state.Load()
	if err := st.check(iq); err != nil {
		return nil, err
	}
	user := iq.From.Bare().String()
	res := extdisco.Services{Type: req.Type}
	for _, svc := range st.services {
		if req.Type == "" || req.Type == svc.Type {
			res.Services = append(res.Services, s.withCredentials(st, svc, user))
		}
	}
	return res, nil
}

func (s *Service) handleCredentials(_ context.Context, iq *component.Stanza) (any, error) {
	var req extdisco.Credentials
	if err := iq.Decode(xml.Name{Space: extdisco.NS, Local: "credentials"}, &req); err != nil {
		return nil, err
	}
	st := s.state.Load()
	if err := st.check(iq); err != nil {
		return nil, err
	}
	if len(req.Services) == 0 || len(req.Services) > len(st.services) {
		return nil, component.BadRequest("name one to as many services as announced")
	}
	user := iq.From.Bare().String()
	var res extdisco.Credentials
	for _, want := range req.Services {
		found := false
		for _, svc := range st.services {
			if svc.Host == want.Host && svc.Type == want.Type && svc.Type != "stun" &&
				(want.Port == 0 || want.Port == svc.Port) && (want.Transport == "" || want.Transport == svc.Transport) {
				res.Services = append(res.Services, s.withCredentials(st, svc, user))
				found = true
				break
			}
		}
		if !found {
			return nil, component.Errorf(stanza.ItemNotFound, "no %s service at %s", want.Type, want.Host)
		}
	}
	return res, nil
}
