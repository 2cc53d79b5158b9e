package clinkid

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/clinkme/clinkd/internal/httpjson"
)

// PathPrefix is where Handler serves; mount it there on the public mux.
// AdminHandler serves AdminPrefix, on the admin listener only.
const (
	PathPrefix  = "/clinkid/v1/"
	AdminPrefix = PathPrefix + "admin/"
)

// maxBody bounds every request body: the largest valid one (a password
// change with two passwords of MaxPasswordBytes, JSON-escaped at six bytes
// a byte in the worst case) fits well within it.
const maxBody = 16 << 10

// requestTimeout bounds one request's work, waiting for a hashing slot
// included, so that a storm cannot hold handlers for ever.
const requestTimeout = 20 * time.Second

// route adds pattern to mux, answering method_not_allowed for other
// methods and bounding each request by requestTimeout.
func route(mux *http.ServeMux, pattern string, h func(http.ResponseWriter, *http.Request), methods ...string) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if !slices.Contains(methods, r.Method) {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			httpjson.Error(w, http.StatusMethodNotAllowed, "method_not_allowed", "use "+strings.Join(methods, " or "))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		h(w, r.WithContext(ctx))
	})
}

func notFound(mux *http.ServeMux) {
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, "not_found", "no such endpoint")
	})
}

// Handler returns the public HTTP API, to be mounted at PathPrefix on a
// listener that is HTTPS or loopback-only (daemon enforces it): the
// account calls and the Prosody bridge. The admin calls are not here
// (AdminHandler). docs/clinkid.md documents every route and error code.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	route(mux, PathPrefix+"register", s.httpRegister, http.MethodPost)
	route(mux, PathPrefix+"login", s.httpLogin, http.MethodPost)
	route(mux, PathPrefix+"logout", s.httpLogout, http.MethodPost)
	route(mux, PathPrefix+"password", s.httpPassword, http.MethodPost)
	route(mux, PathPrefix+"account", s.httpAccount, http.MethodGet)
	route(mux, PathPrefix+"account/delete", s.httpDelete, http.MethodPost)
	route(mux, PathPrefix+"bridge/check", s.httpBridgeCheck, http.MethodPost)
	route(mux, PathPrefix+"bridge/exists", s.httpBridgeExists, http.MethodPost)
	route(mux, PathPrefix+"bridge/events", s.httpBridgeEvents, http.MethodPost)
	notFound(mux)
	return mux
}

// AdminHandler returns the admin API (entitlements, account state,
// invites), to be mounted at AdminPrefix on clinkd's admin listener, which
// daemon keeps on loopback when it serves this: the admin token must not
// cross a network in clear, and the public listener never serves it.
func (s *Service) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	route(mux, AdminPrefix+"accounts/{name}", s.httpAdminShow, http.MethodGet)
	route(mux, AdminPrefix+"accounts/{name}/entitlements/{ent}", s.httpAdminEntitlement, http.MethodPut, http.MethodDelete)
	route(mux, AdminPrefix+"invites", s.httpAdminInvite, http.MethodPost)
	notFound(mux)
	return mux
}

// clientAddr is the address rate limits count against: the TCP peer, or
// with TrustForwardedFor and a loopback peer (a proxy on this host), the
// last X-Forwarded-For entry, which is the one the proxy itself appended.
func (s *Service) clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if s.cfg.TrustForwardedFor {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
				parts := strings.Split(xff[len(xff)-1], ",")
				if last := strings.TrimSpace(parts[len(parts)-1]); net.ParseIP(last) != nil {
					return last
				}
			}
		}
	}
	if host == "" {
		return "unknown"
	}
	return host
}

// decode reads the JSON body into v: application/json only, at most
// maxBody bytes, no unknown fields, exactly one value. It answers the
// error itself and reports whether to go on.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		httpjson.Error(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send Content-Type: application/json")
		return false
	}
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	if err == nil {
		if _, extra := dec.Token(); extra != io.EOF {
			err = errors.New("more than one JSON value")
		}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			httpjson.Error(w, http.StatusRequestEntityTooLarge, "body_too_large", "the request body is too large")
			return false
		}
		httpjson.Error(w, http.StatusBadRequest, "bad_request", "the body is not the JSON object this endpoint takes")
		return false
	}
	return true
}

// bearer returns the token of an "Authorization: Bearer" header.
func bearer(r *http.Request) string {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// anySecret reports whether got is one of want, comparing it with every
// one in constant time, lengths included (each is hashed first).
func anySecret(got string, want []string) bool {
	g := sha256.Sum256([]byte(got))
	found := 0
	for _, v := range want {
		w := sha256.Sum256([]byte(v))
		found |= subtle.ConstantTimeCompare(g[:], w[:])
	}
	return found == 1
}

// writeErr maps the service's errors to HTTP errors. Messages never hold a
// secret or an internal detail; internal errors are logged.
func (s *Service) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var locked *LockedError
	switch {
	case errors.Is(err, ErrInvalidName):
		httpjson.Error(w, http.StatusBadRequest, "invalid_name", "the account name is not a valid XMPP localpart of at most 64 bytes (no spaces, \" & ' / : < > @ or \\)")
	case errors.Is(err, ErrWeakPassword):
		httpjson.Error(w, http.StatusBadRequest, "weak_password", strings.TrimPrefix(err.Error(), "clinkid: "))
	case errors.Is(err, ErrNameTaken):
		httpjson.Error(w, http.StatusConflict, "name_taken", "this account name is taken")
	case errors.Is(err, ErrInvalidCredentials):
		httpjson.Error(w, http.StatusUnauthorized, "invalid_credentials", "wrong account name or password")
	case errors.As(err, &locked):
		secs := max(1, int(math.Ceil(time.Until(locked.Until).Seconds())))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		httpjson.Error(w, http.StatusTooManyRequests, "account_locked", "too many failed attempts on this name: password login is held back for a while (see Retry-After); app tokens, and the networks you logged in from before, still work")
	case errors.Is(err, ErrRateLimited):
		w.Header().Set("Retry-After", "60")
		httpjson.Error(w, http.StatusTooManyRequests, "rate_limited", "too many requests from this address or its network; try again later")
	case errors.Is(err, ErrThrottled):
		w.Header().Set("Retry-After", "60")
		httpjson.Error(w, http.StatusTooManyRequests, "login_throttled", "too many failed logins on this server: password logins from networks this account has not used are held back for a while; app tokens and the networks you logged in from before still work")
	case errors.Is(err, ErrRegistrationClosed):
		httpjson.Error(w, http.StatusForbidden, "registration_closed", "this server does not take registrations; ask its operator for an account")
	case errors.Is(err, ErrInvalidInvite):
		httpjson.Error(w, http.StatusForbidden, "invalid_invite", "registration on this server needs an invite: this one is missing, unknown, expired or already used")
	case errors.Is(err, ErrBusy):
		w.Header().Set("Retry-After", "5")
		httpjson.Error(w, http.StatusServiceUnavailable, "busy", "too many logins in progress; try again in a few seconds")
	case errors.Is(err, ErrInvalidToken):
		w.Header().Set("WWW-Authenticate", `Bearer realm="clinkid"`)
		httpjson.Error(w, http.StatusUnauthorized, "invalid_token", "missing, invalid, expired or revoked token")
	case errors.Is(err, ErrNoAccount):
		httpjson.Error(w, http.StatusNotFound, "no_such_account", "no such account")
	case errors.Is(err, ErrUnknownEntitlement):
		httpjson.Error(w, http.StatusBadRequest, "unknown_entitlement", "unknown entitlement; known: "+strings.Join(Entitlements(), ", "))
	case errors.Is(err, ErrKeyBinding):
		httpjson.Error(w, http.StatusServiceUnavailable, "key_binding_failed", "the account's key binding could not be ended, so the account was not deleted; try again later")
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		httpjson.Error(w, http.StatusServiceUnavailable, "busy", "the request took too long; try again later")
	default:
		s.log.Error("clinkid: request failed", "path", r.URL.Path, "err", err)
		httpjson.Error(w, http.StatusInternalServerError, "internal", "internal error")
	}
}

type credentials struct {
	Name     string `json:"name"`
	Password string `json:"password"`
}

func (s *Service) httpRegister(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name     string `json:"name"`
		Password string `json:"password"`
		// Invite is required when clinkid.registration is invite.
		Invite string `json:"invite"`
	}
	if !decode(w, r, &req) {
		return
	}
	a, err := s.RegisterAccount(r.Context(), req.Name, req.Password, req.Invite, s.clientAddr(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, a)
}

func (s *Service) httpLogin(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name       string `json:"name"`
		Password   string `json:"password"`
		Label      string `json:"label"`
		TTLSeconds int64  `json:"ttl_seconds"`
	}
	if !decode(w, r, &req) {
		return
	}
	if len(req.Label) > 64 || req.TTLSeconds < 0 {
		httpjson.Error(w, http.StatusBadRequest, "bad_request", "label is at most 64 bytes and ttl_seconds is not negative")
		return
	}
	ttl := time.Duration(min(req.TTLSeconds, math.MaxInt64/int64(time.Second))) * time.Second
	sess, err := s.Login(r.Context(), req.Name, req.Password, s.clientAddr(r), req.Label, ttl)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, sess)
}

func (s *Service) httpLogout(w http.ResponseWriter, r *http.Request) {
	var req struct {
		All bool `json:"all"`
	}
	// The body is optional: an empty one logs out this token.
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	if err := s.Logout(r.Context(), bearer(r), req.All); err != nil {
		s.writeErr(w, r, err)
		return
	}
	noContent(w)
}

func (s *Service) httpPassword(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Password    string `json:"password"`
		NewPassword string `json:"new_password"`
	}
	if !decode(w, r, &req) {
		return
	}
	if err := s.ChangePassword(r.Context(), bearer(r), req.Password, req.NewPassword, s.clientAddr(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	noContent(w)
}

func (s *Service) httpAccount(w http.ResponseWriter, r *http.Request) {
	a, err := s.Authenticate(r.Context(), bearer(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	a.LockedUntil = nil // the owner has a token; the lock concerns others
	httpjson.Write(w, http.StatusOK, a)
}

func (s *Service) httpDelete(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Password string `json:"password"`
	}
	if !decode(w, r, &req) {
		return
	}
	if err := s.DeleteAccount(r.Context(), bearer(r), req.Password, s.clientAddr(r)); err != nil {
		s.writeErr(w, r, err)
		return
	}
	noContent(w)
}

// secretOK checks a bearer secret (admin token, bridge secret), with its
// own per-address and per-network limit on failures. The limit is looked
// at first: an address that is limited is refused whatever it sends, so
// even the right secret tells it nothing, and only wrong secrets count.
// An empty configured secret turns the endpoints off: they answer
// not_found, as if absent.
func adminTokens(s *Secrets) []string   { return s.AdminTokens }
func bridgeSecrets(s *Secrets) []string { return s.BridgeSecrets }

func (s *Service) secretOK(w http.ResponseWriter, r *http.Request, which func(*Secrets) []string) bool {
	want := which(s.secrets.Load())
	if len(want) == 0 {
		httpjson.Error(w, http.StatusNotFound, "not_found", "no such endpoint")
		return false
	}
	addr := s.clientAddr(r)
	src := sourceOf(addr)
	if src.addr == "" {
		src.anonymous = true
	}
	now := time.Now()
	if lim := s.secret.peek(src, now); lim != "" {
		s.m.refused.add(lim)
		s.writeErr(w, r, ErrRateLimited)
		return false
	}
	if anySecret(bearer(r), want) {
		return true
	}
	s.secret.fail(src, now)
	s.log.Warn("clinkid: wrong or missing secret", "path", r.URL.Path, "addr", addr)
	s.writeErr(w, r, ErrInvalidToken)
	return false
}

func (s *Service) httpBridgeCheck(w http.ResponseWriter, r *http.Request) {
	if !s.secretOK(w, r, bridgeSecrets) {
		return
	}
	var req struct {
		Name     string `json:"name"`
		Password string `json:"password"`
		// Address is the XMPP client's IP address as the server saw it,
		// for the per-address limits; the bridge secret vouches for it.
		// Without one, the check counts against a budget shared by every
		// check that has none, rather than skipping the limits.
		Address string `json:"address"`
	}
	if !decode(w, r, &req) {
		return
	}
	src := sourceOf(req.Address)
	if src.addr == "" {
		src.anonymous = true
	}
	ok, err := s.checkLogin(r.Context(), req.Name, req.Password, src)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]bool{"ok": ok})
}

// httpBridgeEvents answers the Prosody module's poll: the account events
// after its cursor ("after"; without it, none and the current cursor).
func (s *Service) httpBridgeEvents(w http.ResponseWriter, r *http.Request) {
	if !s.secretOK(w, r, bridgeSecrets) {
		return
	}
	var req struct {
		After *int64 `json:"after"`
	}
	if !decode(w, r, &req) {
		return
	}
	var after int64
	if req.After != nil {
		if *req.After < 0 {
			httpjson.Error(w, http.StatusBadRequest, "bad_request", "after is a cursor this endpoint returned")
			return
		}
		after = *req.After
	}
	b, err := s.Events(r.Context(), after, req.After != nil)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, b)
}

func (s *Service) httpBridgeExists(w http.ResponseWriter, r *http.Request) {
	if !s.secretOK(w, r, bridgeSecrets) {
		return
	}
	var req struct {
		Name string `json:"name"`
	}
	if !decode(w, r, &req) {
		return
	}
	ok, err := s.Exists(r.Context(), req.Name)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]bool{"exists": ok})
}

func (s *Service) httpAdminShow(w http.ResponseWriter, r *http.Request) {
	if !s.secretOK(w, r, adminTokens) {
		return
	}
	a, err := s.Show(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, a)
}

func (s *Service) httpAdminEntitlement(w http.ResponseWriter, r *http.Request) {
	if !s.secretOK(w, r, adminTokens) {
		return
	}
	name, ent := r.PathValue("name"), r.PathValue("ent")
	by := "admin API from " + s.clientAddr(r)
	var err error
	if r.Method == http.MethodPut {
		err = s.Grant(r.Context(), name, ent, by)
	} else {
		err = s.Revoke(r.Context(), name, ent, by)
	}
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	noContent(w)
}

// httpAdminInvite makes an invite (clinkid.registration: invite). The body
// is optional: {"ttl_seconds": N} asks for another life than
// clinkid.invite_lifetime.
func (s *Service) httpAdminInvite(w http.ResponseWriter, r *http.Request) {
	if !s.secretOK(w, r, adminTokens) {
		return
	}
	var req struct {
		TTLSeconds int64 `json:"ttl_seconds"`
	}
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > int64(366*24*time.Hour/time.Second) {
		httpjson.Error(w, http.StatusBadRequest, "bad_request", "ttl_seconds is between 0 and a year")
		return
	}
	inv, err := s.CreateInvite(r.Context(), time.Duration(req.TTLSeconds)*time.Second, "admin API from "+s.clientAddr(r))
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusCreated, inv)
}

func noContent(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}
