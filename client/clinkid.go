package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/extensions/clinkidxml"
)

// ClinkID is a client of clinkd's ClinkID account API (docs/clinkid.md):
// register, log in for an app token, log out, change the password, delete
// the account. The app token then logs a device in over XMPP in place of
// the password (Config.Password), so the app need not keep the password.
type ClinkID struct {
	base string
	hc   *http.Client
}

// NewClinkID returns a client of the API at baseURL (clinkd's public
// listener, e.g. https://clinkd.example.org:8443). The server's
// certificate is verified with tlsCfg (nil: the system's roots). Plain
// http:// is refused unless the host is loopback.
func NewClinkID(baseURL string, tlsCfg *tls.Config) (*ClinkID, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("client: %q is not a URL", baseURL)
	}
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, errors.New("client: ClinkID over plain http is only for loopback; use https")
		}
	default:
		return nil, fmt.Errorf("client: %q is not an http(s) URL", baseURL)
	}
	var tc *tls.Config
	if tlsCfg != nil {
		tc = tlsCfg.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	return &ClinkID{
		base: strings.TrimRight(baseURL, "/") + "/clinkid/v1/",
		hc: &http.Client{
			Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true},
			// A login can wait for a hashing slot on a busy server.
			Timeout: 30 * time.Second,
			// Redirects would carry the password elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// APIError is an error answer of the API: Code is stable (see
// docs/clinkid.md), Message is for people.
type APIError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration // from Retry-After, when given
}

func (e *APIError) Error() string {
	return fmt.Sprintf("clinkid: %s (HTTP %d): %s", e.Code, e.Status, e.Message)
}

// Is matches ErrNotAuthorized for a wrong password or token
// (invalid_credentials, invalid_token) and ErrAccountLocked for a locked
// name (account_locked; RetryAfter says how long), as the XMPP login's
// *AuthError does.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotAuthorized:
		return e.Code == "invalid_credentials" || e.Code == "invalid_token"
	case ErrAccountLocked:
		return e.Code == "account_locked"
	}
	return false
}

// ClinkIDAccount is an account as the API shows it.
type ClinkIDAccount struct {
	Name         string    `json:"account"`
	JID          string    `json:"jid"`
	CreatedAt    time.Time `json:"created_at"`
	Entitlements []string  `json:"entitlements"`
}

// ClinkIDSession is the result of a login.
type ClinkIDSession struct {
	Token     string    `json:"token"` // the app token: a bearer for the API and the XMPP password
	ExpiresAt time.Time `json:"expires_at"`
	Name      string    `json:"account"`
	JID       string    `json:"jid"`
}

func (c *ClinkID) do(ctx context.Context, method, path, token string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: clinkid %s: %w", path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("client: clinkid %s: %w", path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("client: clinkid %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("client: clinkid %s: %w", path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		apiErr := &APIError{Status: resp.StatusCode, Code: "unknown", Message: resp.Status}
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			apiErr.Code, apiErr.Message = e.Error.Code, e.Error.Message
		}
		if s := resp.Header.Get("Retry-After"); s != "" {
			var secs int
			if _, err := fmt.Sscan(s, &secs); err == nil {
				apiErr.RetryAfter = time.Duration(secs) * time.Second
			}
		}
		return apiErr
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("client: clinkid %s: answer: %w", path, err)
	}
	return nil
}

// Register creates an account.
func (c *ClinkID) Register(ctx context.Context, name, password string) (ClinkIDAccount, error) {
	var a ClinkIDAccount
	err := c.do(ctx, http.MethodPost, "register", "", map[string]string{"name": name, "password": password}, &a)
	return a, err
}

// Login checks the password and returns a new app token named label
// (a device name, may be empty) that lives ttl, or the server's longest
// lifetime if ttl is 0.
func (c *ClinkID) Login(ctx context.Context, name, password, label string, ttl time.Duration) (ClinkIDSession, error) {
	var s ClinkIDSession
	req := map[string]any{"name": name, "password": password}
	if label != "" {
		req["label"] = label
	}
	if ttl > 0 {
		req["ttl_seconds"] = int64((ttl + time.Second - 1) / time.Second)
	}
	err := c.do(ctx, http.MethodPost, "login", "", req, &s)
	return s, err
}

// Logout revokes token, or every token of the account if all is set.
func (c *ClinkID) Logout(ctx context.Context, token string, all bool) error {
	return c.do(ctx, http.MethodPost, "logout", token, map[string]bool{"all": all}, nil)
}

// Account returns the account of token.
func (c *ClinkID) Account(ctx context.Context, token string) (ClinkIDAccount, error) {
	var a ClinkIDAccount
	err := c.do(ctx, http.MethodGet, "account", token, nil, &a)
	return a, err
}

// ChangePassword sets a new password; every other token of the account is
// revoked.
func (c *ClinkID) ChangePassword(ctx context.Context, token, current, next string) error {
	return c.do(ctx, http.MethodPost, "password", token, map[string]string{"password": current, "new_password": next}, nil)
}

// Delete deletes the account of token; the password is asked again.
func (c *ClinkID) Delete(ctx context.Context, token, password string) error {
	return c.do(ctx, http.MethodPost, "account/delete", token, map[string]string{"password": password}, nil)
}

// Entitlements asks the clinkd component for the entitlements of this
// device's own account over XMPP (urn:clinkme:clinkid:0).
func (c *Client) Entitlements(ctx context.Context, component jid.JID) ([]string, error) {
	var res clinkidxml.Entitlements
	if err := c.IQ(ctx, stanza.GetIQ, component, clinkidxml.Entitlements{}, &res); err != nil {
		return nil, err
	}
	return res.Names(), nil
}
