package clinkid_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/clinkid"
)

const (
	adminToken   = "admin-token-0123456789abcdef0123456789"
	bridgeSecret = "bridge-secret-0123456789abcdef0123456789"
)

// req is one HTTP request to the API through httptest: no network, the
// handler exactly as mounted.
type req struct {
	method, path, ctype, auth, body string
	remote                          string // RemoteAddr; 192.0.2.1:1234 if empty
	xff                             string // X-Forwarded-For
}

type resp struct {
	status int
	code   string // error.code, or ""
	body   map[string]any
	raw    []byte
	header http.Header
}

func call(t testing.TB, h http.Handler, r req) resp {
	t.Helper()
	if r.ctype == "" && r.body != "" {
		r.ctype = "application/json"
	}
	hr := httptest.NewRequestWithContext(context.Background(), r.method, r.path, strings.NewReader(r.body))
	if r.ctype != "" {
		hr.Header.Set("Content-Type", r.ctype)
	}
	if r.auth != "" {
		hr.Header.Set("Authorization", "Bearer "+r.auth)
	}
	if r.remote != "" {
		hr.RemoteAddr = r.remote
	}
	if r.xff != "" {
		hr.Header.Set("X-Forwarded-For", r.xff)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, hr)
	out := resp{status: w.Code, raw: w.Body.Bytes(), header: w.Header()}
	if len(out.raw) > 0 {
		if err := json.Unmarshal(out.raw, &out.body); err != nil {
			t.Fatalf("%s %s: body %q is not a JSON object", r.method, r.path, out.raw)
		}
		if e, ok := out.body["error"].(map[string]any); ok {
			out.code, _ = e["code"].(string)
		}
	}
	return out
}

func jsonBody(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestHTTPErrors answers every documented error code, and checks that
// docs/clinkid.md documents every code the API can send.
func TestHTTPErrors(t *testing.T) {
	t.Parallel()
	failing := &recordingBindings{err: errors.New("key directory down")}
	svc, _ := newService(t, func(c *clinkid.Config) {
		c.Secrets = clinkid.Secrets{AdminTokens: []string{adminToken}, BridgeSecrets: []string{bridgeSecret}}
		c.KeyBindings = failing
	})
	h, ah := svc.Handler(), svc.AdminHandler()
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	sess, err := svc.Login(ctx, "alice", alicePass, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	tok := sess.Token
	const p = clinkid.PathPrefix
	login := jsonBody(map[string]string{"name": "alice", "password": "wrong password"})

	tests := []struct {
		name   string
		r      req
		status int
		code   string
	}{
		{"register", req{method: "POST", path: p + "register", body: jsonBody(map[string]string{"name": "Bob", "password": "bob's password"})}, 201, ""},
		{"register wrong type", req{method: "POST", path: p + "register", ctype: "text/plain", body: `{}`}, 415, "unsupported_media_type"},
		{"register no type", req{method: "POST", path: p + "register", ctype: "", body: ""}, 415, "unsupported_media_type"},
		{"register json charset", req{method: "POST", path: p + "register", ctype: "application/json; charset=utf-8", body: `{"name":"carol","password":"carol's password"}`}, 201, ""},
		{"register too big", req{method: "POST", path: p + "register", body: `{"name":"x","password":"` + strings.Repeat("a", 20000) + `"}`}, 413, "body_too_large"},
		{"register unknown field", req{method: "POST", path: p + "register", body: `{"name":"x","password":"yyyyyyyyyy","admin":true}`}, 400, "bad_request"},
		{"register two values", req{method: "POST", path: p + "register", body: `{"name":"x","password":"yyyyyyyyyy"}{}`}, 400, "bad_request"},
		{"register not an object", req{method: "POST", path: p + "register", body: `["x"]`}, 400, "bad_request"},
		{"register GET", req{method: "GET", path: p + "register"}, 405, "method_not_allowed"},
		{"no such path", req{method: "GET", path: p + "nope"}, 404, "not_found"},
		{"register invalid name", req{method: "POST", path: p + "register", body: `{"name":"a b","password":"yyyyyyyyyy"}`}, 400, "invalid_name"},
		{"register weak password", req{method: "POST", path: p + "register", body: `{"name":"dave","password":"short"}`}, 400, "weak_password"},
		{"register taken", req{method: "POST", path: p + "register", body: `{"name":"ALICE","password":"yyyyyyyyyy"}`}, 409, "name_taken"},
		{"login", req{method: "POST", path: p + "login", body: jsonBody(map[string]any{"name": "alice", "password": alicePass, "label": "phone", "ttl_seconds": 60})}, 200, ""},
		{"login wrong", req{method: "POST", path: p + "login", body: login}, 401, "invalid_credentials"},
		{"login unknown", req{method: "POST", path: p + "login", body: `{"name":"nobody","password":"wrong password"}`}, 401, "invalid_credentials"},
		{"login bad label", req{method: "POST", path: p + "login", body: jsonBody(map[string]any{"name": "alice", "password": alicePass, "label": strings.Repeat("l", 65)})}, 400, "bad_request"},
		{"account", req{method: "GET", path: p + "account", auth: tok}, 200, ""},
		{"account no token", req{method: "GET", path: p + "account"}, 401, "invalid_token"},
		{"account bad token", req{method: "GET", path: p + "account", auth: "ck1_" + strings.Repeat("A", 43)}, 401, "invalid_token"},
		{"password weak", req{method: "POST", path: p + "password", auth: tok, body: `{"password":"x","new_password":"short"}`}, 400, "weak_password"},
		{"delete key binding down", req{method: "POST", path: p + "account/delete", auth: tok, body: jsonBody(map[string]string{"password": alicePass})}, 503, "key_binding_failed"},
		{"admin show no token", req{method: "GET", path: p + "admin/accounts/alice"}, 401, "invalid_token"},
		{"admin show wrong token", req{method: "GET", path: p + "admin/accounts/alice", auth: adminToken + "x"}, 401, "invalid_token"},
		{"admin show", req{method: "GET", path: p + "admin/accounts/ALICE", auth: adminToken}, 200, ""},
		{"admin show unknown", req{method: "GET", path: p + "admin/accounts/nobody", auth: adminToken}, 404, "no_such_account"},
		{"admin grant", req{method: "PUT", path: p + "admin/accounts/alice/entitlements/secure", auth: adminToken}, 204, ""},
		{"admin grant unknown entitlement", req{method: "PUT", path: p + "admin/accounts/alice/entitlements/gold", auth: adminToken}, 400, "unknown_entitlement"},
		{"admin grant unknown account", req{method: "PUT", path: p + "admin/accounts/nobody/entitlements/secure", auth: adminToken}, 404, "no_such_account"},
		{"admin grant POST", req{method: "POST", path: p + "admin/accounts/alice/entitlements/secure", auth: adminToken}, 405, "method_not_allowed"},
		{"admin revoke", req{method: "DELETE", path: p + "admin/accounts/alice/entitlements/secure", auth: adminToken}, 204, ""},
		{"admin with bridge secret", req{method: "GET", path: p + "admin/accounts/alice", auth: bridgeSecret}, 401, "invalid_token"},
		{"bridge check password", req{method: "POST", path: p + "bridge/check", auth: bridgeSecret, body: jsonBody(map[string]string{"name": "alice", "password": alicePass, "address": "198.51.100.7"})}, 200, ""},
		{"bridge check token", req{method: "POST", path: p + "bridge/check", auth: bridgeSecret, body: jsonBody(map[string]string{"name": "alice", "password": tok})}, 200, ""},
		{"bridge check no secret", req{method: "POST", path: p + "bridge/check", body: login}, 401, "invalid_token"},
		{"bridge check with admin token", req{method: "POST", path: p + "bridge/check", auth: adminToken, body: login}, 401, "invalid_token"},
		{"bridge exists", req{method: "POST", path: p + "bridge/exists", auth: bridgeSecret, body: `{"name":"Alice"}`}, 200, ""},
		{"bridge events from now", req{method: "POST", path: p + "bridge/events", auth: bridgeSecret, body: `{}`}, 200, ""},
		{"bridge events after", req{method: "POST", path: p + "bridge/events", auth: bridgeSecret, body: `{"after":0}`}, 200, ""},
		{"bridge events negative", req{method: "POST", path: p + "bridge/events", auth: bridgeSecret, body: `{"after":-1}`}, 400, "bad_request"},
		{"admin on the public handler", req{method: "GET", path: p + "admin/accounts/alice", auth: adminToken}, 404, "not_found"},
		{"admin invite", req{method: "POST", path: p + "admin/invites", auth: adminToken}, 201, ""},
		{"admin invite ttl", req{method: "POST", path: p + "admin/invites", auth: adminToken, body: `{"ttl_seconds":60}`}, 201, ""},
		{"admin invite bad ttl", req{method: "POST", path: p + "admin/invites", auth: adminToken, body: `{"ttl_seconds":-1}`}, 400, "bad_request"},
		{"register common password", req{method: "POST", path: p + "register", body: `{"name":"erin","password":"12345678"}`}, 400, "weak_password"},
		{"register name as password", req{method: "POST", path: p + "register", body: `{"name":"frankfrank","password":"FrankFrank"}`}, 400, "weak_password"},
		{"logout", req{method: "POST", path: p + "logout", auth: tok}, 204, ""},
		{"account after logout", req{method: "GET", path: p + "account", auth: tok}, 401, "invalid_token"},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		// The admin calls go to AdminHandler, which the admin listener
		// serves; one row checks that the public handler has none.
		handler := h
		if strings.HasPrefix(tt.r.path, clinkid.AdminPrefix) && tt.name != "admin on the public handler" {
			handler = ah
		}
		got := call(t, handler, tt.r)
		if got.status != tt.status || got.code != tt.code {
			t.Errorf("%s: %s %s = %d %q (%s), want %d %q", tt.name, tt.r.method, tt.r.path, got.status, got.code, got.raw, tt.status, tt.code)
		}
		if got.status >= 400 {
			if ct := got.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s: Content-Type = %q, want application/json", tt.name, ct)
			}
			seen[got.code] = true
		}
		if bytes.Contains(got.raw, []byte(alicePass)) || bytes.Contains(got.raw, []byte(adminToken)) || bytes.Contains(got.raw, []byte(bridgeSecret)) {
			t.Errorf("%s: the answer holds a secret: %s", tt.name, got.raw)
		}
		switch tt.name {
		case "login":
			if d := got.body["expires_at"]; d == nil || got.body["account"] != "alice" || !clinkid.IsToken(fmt.Sprint(got.body["token"])) {
				t.Errorf("login answer = %s", got.raw)
			}
		case "account":
			if got.body["jid"] != "alice@"+testDomain {
				t.Errorf("account answer = %s", got.raw)
			}
		case "bridge check password", "bridge check token":
			if got.body["ok"] != true {
				t.Errorf("%s answer = %s, want ok true", tt.name, got.raw)
			}
		case "bridge exists":
			if got.body["exists"] != true {
				t.Errorf("bridge exists answer = %s", got.raw)
			}
		case "bridge events after":
			// alice, bob and carol registered: three events from the start.
			if evs, _ := got.body["events"].([]any); len(evs) != 3 || got.body["last"] == nil {
				t.Errorf("bridge events answer = %s, want the three registrations", got.raw)
			}
		case "admin invite", "admin invite ttl":
			if !clinkid.IsInvite(fmt.Sprint(got.body["invite"])) || got.body["expires_at"] == nil {
				t.Errorf("%s answer = %s", tt.name, got.raw)
			}
		}
	}
	// The two login failures must be indistinguishable.
	a := call(t, h, req{method: "POST", path: p + "login", body: login})
	b := call(t, h, req{method: "POST", path: p + "login", body: `{"name":"nobody","password":"wrong password"}`})
	if a.status != b.status || !bytes.Equal(a.raw, b.raw) {
		t.Errorf("wrong password answers %d %s, unknown account %d %s: they differ", a.status, a.raw, b.status, b.raw)
	}

	// The codes that need a service of their own.
	locking, _ := newService(t, func(c *clinkid.Config) { c.LockoutThreshold = 1 })
	lh := locking.Handler()
	call(t, lh, req{method: "POST", path: p + "login", body: login})
	got := call(t, lh, req{method: "POST", path: p + "login", body: login})
	if got.status != 429 || got.code != "account_locked" || got.header.Get("Retry-After") == "" {
		t.Errorf("login on a locked name = %d %q Retry-After %q, want 429 account_locked with Retry-After", got.status, got.code, got.header.Get("Retry-After"))
	}
	seen[got.code] = true

	limited, _ := newService(t, func(c *clinkid.Config) { c.LoginPerMinute, c.LoginBurst = 0.001, 1 })
	call(t, limited.Handler(), req{method: "POST", path: p + "login", body: login})
	got = call(t, limited.Handler(), req{method: "POST", path: p + "login", body: login})
	if got.status != 429 || got.code != "rate_limited" {
		t.Errorf("second login from one address = %d %q, want 429 rate_limited", got.status, got.code)
	}
	seen[got.code] = true

	got = busyAnswer(t)
	seen[got.code] = true

	closed, _ := newService(t, func(c *clinkid.Config) { c.Registration = clinkid.RegistrationClosed })
	got = call(t, closed.Handler(), req{method: "POST", path: p + "register", body: `{"name":"gina","password":"gina's password"}`})
	if got.status != 403 || got.code != "registration_closed" {
		t.Errorf("register on a closed server = %d %q, want 403 registration_closed", got.status, got.code)
	}
	seen[got.code] = true

	invite, _ := newService(t, func(c *clinkid.Config) {
		c.Registration = clinkid.RegistrationInvite
		c.Secrets.AdminTokens = []string{adminToken}
	})
	inv := call(t, invite.AdminHandler(), req{method: "POST", path: p + "admin/invites", auth: adminToken})
	code, _ := inv.body["invite"].(string)
	for i, tt := range []struct {
		invite string
		status int
		code   string
	}{
		{"", 403, "invalid_invite"},
		{"ci1_" + strings.Repeat("A", 43), 403, "invalid_invite"}, // well formed, never issued
		{code, 201, ""},
		{code, 403, "invalid_invite"}, // used
	} {
		got = call(t, invite.Handler(), req{method: "POST", path: p + "register", body: jsonBody(map[string]string{"name": fmt.Sprint("ivy", i), "password": "ivy's password", "invite": tt.invite})})
		if got.status != tt.status || got.code != tt.code {
			t.Errorf("register with invite %d = %d %q, want %d %q", i, got.status, got.code, tt.status, tt.code)
		}
		if got.code != "" {
			seen[got.code] = true
		}
	}

	throttled, _ := newService(t, func(c *clinkid.Config) { c.GlobalFailuresPerMinute = 1 })
	call(t, throttled.Handler(), req{method: "POST", path: p + "login", body: login})
	got = call(t, throttled.Handler(), req{method: "POST", path: p + "login", body: login, remote: "198.51.100.1:1"})
	if got.status != 429 || got.code != "login_throttled" || got.header.Get("Retry-After") == "" {
		t.Errorf("login past the global failure budget = %d %q, want 429 login_throttled with Retry-After", got.status, got.code)
	}
	seen[got.code] = true

	off, _ := newService(t, nil) // no admin token, no bridge secret
	if got := call(t, off.AdminHandler(), req{method: "GET", path: p + "admin/accounts/alice", auth: "anything"}); got.status != 404 {
		t.Errorf("admin call with the feature off = %d, want 404", got.status)
	}
	if got := call(t, off.Handler(), req{method: "POST", path: p + "bridge/exists", auth: "anything", body: `{"name":"alice"}`}); got.status != 404 {
		t.Errorf("bridge call with the feature off = %d, want 404", got.status)
	}

	documented := documentedCodes(t)
	for code := range seen {
		if !slices.Contains(documented, code) {
			t.Errorf("error code %q is not documented in docs/clinkid.md", code)
		}
	}
	for _, code := range documented {
		if !seen[code] && code != "internal" {
			t.Errorf("documented error code %q is not exercised by this test", code)
		}
	}
}

// documentedCodes reads the error codes from the table in docs/clinkid.md
// (rows that start with | `code` | status |).
func documentedCodes(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("../docs/clinkid.md")
	if err != nil {
		t.Fatal(err)
	}
	var codes []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| [0-9]{3} \\|").FindAllSubmatch(doc, -1) {
		codes = append(codes, string(m[1]))
	}
	if len(codes) < 10 {
		t.Fatalf("docs/clinkid.md: found %d error codes in the table, want them all", len(codes))
	}
	return codes
}

// busyAnswer fills the hashing slot and the queue, then asks once more:
// the answer is 503 busy, at once.
func busyAnswer(t *testing.T) resp {
	t.Helper()
	svc, _ := newService(t, func(c *clinkid.Config) { c.HashConcurrency, c.HashQueue = 1, 1 })
	h := svc.Handler()
	ctx := t.Context()
	release, err := svc.HoldHashSlot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan resp, 1)
	body := `{"name":"alice","password":"wrong password"}`
	go func() { waiting <- call(t, h, req{method: "POST", path: clinkid.PathPrefix + "login", body: body}) }()
	for deadline := time.Now().Add(30 * time.Second); svc.HashWaiting() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first login never queued for the hashing slot")
		}
	}
	got := call(t, h, req{method: "POST", path: clinkid.PathPrefix + "login", body: body})
	if got.status != 503 || got.code != "busy" || got.header.Get("Retry-After") == "" {
		t.Errorf("login with slot and queue full = %d %q, want 503 busy with Retry-After", got.status, got.code)
	}
	release()
	if w := <-waiting; w.code != "invalid_credentials" {
		t.Errorf("the queued login = %d %q, want it served once the slot is free", w.status, w.code)
	}
	return got
}

// TestLockoutFlood floods one account with password guesses from many
// addresses at once. Exactly LockoutThreshold guesses are checked (each
// costing one argon2id); the rest are refused without hashing, and so is
// the owner's password from an unknown network; from a network the owner
// logged in from before, the password still works, and the owner's app
// token works everywhere: over HTTP, through the Prosody bridge and
// through ejabberd's extauth. A spray of names from one address runs into
// the per-address limit.
func TestLockoutFlood(t *testing.T) {
	t.Parallel()
	svc, _ := newService(t, func(c *clinkid.Config) {
		c.Secrets.BridgeSecrets = []string{bridgeSecret}
		c.TrustForwardedFor = true
		c.LockoutThreshold = 5
		// Production limits per address: the flood comes from many.
		c.LoginPerMinute, c.LoginBurst = 20, 10
	})
	h := svc.Handler()
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	sess, err := svc.Login(ctx, "alice", alicePass, "", "owner's phone", 0)
	if err != nil {
		t.Fatal(err)
	}
	// The owner's laptop logged in from home once: 203.0.113.0/24 is a
	// known network of alice.
	if _, err := svc.Login(ctx, "alice", alicePass, "203.0.113.77", "owner's laptop", 0); err != nil {
		t.Fatal(err)
	}

	const guesses = 300
	before := svc.HashCount()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		count = map[string]int{}
	)
	for i := range guesses {
		wg.Go(func() {
			r := call(t, h, req{
				method: "POST", path: clinkid.PathPrefix + "login",
				body:   jsonBody(map[string]string{"name": "alice", "password": fmt.Sprintf("guess %d", i)}),
				remote: "127.0.0.1:5000", xff: fmt.Sprintf("198.51.%d.%d", i/250, i%250+1),
			})
			mu.Lock()
			count[fmt.Sprintf("%d %s", r.status, r.code)]++
			mu.Unlock()
		})
	}
	wg.Wait()
	hashed := svc.HashCount() - before
	t.Logf("%d guesses from %d addresses: answers %v, argon2id computations %d", guesses, guesses, count, hashed)
	if hashed != 5 {
		t.Errorf("%d guesses were checked, want exactly the threshold, 5", hashed)
	}
	// The guesses that arrived while the first five were hashed and the
	// queue was full were shed with busy; none got further.
	if count["401 invalid_credentials"] != 5 || count["429 account_locked"]+count["503 busy"] != guesses-5 {
		t.Errorf("answers = %v, want 5 invalid_credentials and %d account_locked or busy", count, guesses-5)
	}

	// The owner's password from an unknown network is held back like any
	// guess...
	if r := call(t, h, req{method: "POST", path: clinkid.PathPrefix + "login", body: jsonBody(map[string]string{"name": "alice", "password": alicePass})}); r.code != "account_locked" {
		t.Errorf("owner's password login from an unknown network during the lock = %d %q, want account_locked", r.status, r.code)
	}
	if ok, _ := svc.CheckLogin(ctx, "alice", alicePass, ""); ok {
		t.Error("extauth (no address) accepted the password of a locked name")
	}
	// ...but from the network the owner used before it is not,
	if r := call(t, h, req{method: "POST", path: clinkid.PathPrefix + "login", remote: "203.0.113.78:1234", body: jsonBody(map[string]string{"name": "alice", "password": alicePass})}); r.status != 200 {
		t.Errorf("owner's password login from a known network during the lock = %d %q, want 200", r.status, r.code)
	}
	if r := call(t, h, req{method: "POST", path: clinkid.PathPrefix + "bridge/check", auth: bridgeSecret, body: jsonBody(map[string]string{"name": "alice", "password": alicePass, "address": "203.0.113.79"})}); r.body["ok"] != true {
		t.Errorf("Prosody bridge with the owner's password from a known network during the lock = %s, want ok", r.raw)
	}
	// ...and the owner's token works everywhere.
	if r := call(t, h, req{method: "GET", path: clinkid.PathPrefix + "account", auth: sess.Token}); r.status != 200 {
		t.Errorf("owner's token on the API during the lock = %d %q, want 200", r.status, r.code)
	}
	if r := call(t, h, req{method: "POST", path: clinkid.PathPrefix + "bridge/check", auth: bridgeSecret, body: jsonBody(map[string]string{"name": "alice", "password": sess.Token})}); r.body["ok"] != true {
		t.Errorf("Prosody bridge with the owner's token during the lock = %s, want ok", r.raw)
	}
	var out bytes.Buffer
	ext := &clinkid.Extauth{Checker: svc, Domain: testDomain}
	if err := ext.Serve(ctx, bytes.NewReader(frames("auth:alice:"+testDomain+":"+sess.Token, "auth:alice:"+testDomain+":"+alicePass)), &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), replies(yes, no)) {
		t.Errorf("extauth during the lock: token, password = % x, want yes, no", out.Bytes())
	}
	// An operator can lift the lock.
	if err := svc.Unlock(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if ok, err := svc.CheckLogin(ctx, "alice", alicePass, ""); !ok || err != nil {
		t.Errorf("password after Unlock = %v, %v, want accepted", ok, err)
	}

	// Spraying many names from one address: the address runs out first.
	count = map[string]int{}
	for i := range 30 {
		r := call(t, h, req{method: "POST", path: clinkid.PathPrefix + "login",
			body:   jsonBody(map[string]string{"name": fmt.Sprintf("user%d", i), "password": "password1"}),
			remote: "203.0.113.9:4000"})
		count[r.code]++
	}
	if count["invalid_credentials"] != 10 || count["rate_limited"] != 20 {
		t.Errorf("30 names from one address: %v, want 10 invalid_credentials then 20 rate_limited", count)
	}
}
