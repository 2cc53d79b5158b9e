package clinkid_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/clinkid"
)

// FuzzHTTP sends arbitrary requests to the API, backed by a real
// PostgreSQL database. Whatever the method, path, headers and body: no
// panic, no 5xx (the database is healthy and nothing waits for a hashing
// slot), every error is the JSON error shape, a 204 has no body, and no
// answer holds a secret. In auth, $TOKEN, $ADMIN and $BRIDGE stand for a
// live app token of a fixture account, the admin token and the bridge
// secret, so the fuzzer reaches the authenticated handlers too.
func FuzzHTTP(f *testing.F) {
	svc, _ := newService(f, func(c *clinkid.Config) {
		c.Secrets = clinkid.Secrets{AdminTokens: []string{adminToken}, BridgeSecrets: []string{bridgeSecret}}
	})
	// The public and the admin API, each where daemon mounts it (the
	// public and the admin listener).
	pub, adm := svc.Handler(), svc.AdminHandler()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, clinkid.AdminPrefix) {
			adm.ServeHTTP(w, r)
			return
		}
		pub.ServeHTTP(w, r)
	})
	ctx := f.Context()
	fixture, token := "", ""
	n := 0
	ensureFixture := func(t *testing.T) {
		if token != "" {
			if _, err := svc.Authenticate(ctx, token); err == nil {
				return
			}
		}
		// Deleted, logged out or changed by an earlier input: make anew
		// (a deleted name is quarantined, so a new name each time).
		n++
		fixture = fmt.Sprintf("fixture%d", n)
		if _, err := svc.CreateAccount(ctx, fixture, alicePass, ""); err != nil {
			t.Fatal(err)
		}
		s, err := svc.Login(ctx, fixture, alicePass, "", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		token = s.Token
	}
	const p = clinkid.PathPrefix
	for _, s := range []struct{ method, path, ctype, auth, body string }{
		{"POST", p + "register", "application/json", "", `{"name":"bob","password":"bob's password"}`},
		{"POST", p + "login", "application/json", "", `{"name":"fixture1","password":"` + alicePass + `","label":"x","ttl_seconds":60}`},
		{"POST", p + "logout", "application/json", "$TOKEN", `{"all":true}`},
		{"POST", p + "logout", "", "$TOKEN", ``},
		{"POST", p + "password", "application/json", "$TOKEN", `{"password":"` + alicePass + `","new_password":"another password"}`},
		{"GET", p + "account", "", "$TOKEN", ``},
		{"POST", p + "account/delete", "application/json", "$TOKEN", `{"password":"` + alicePass + `"}`},
		{"POST", p + "bridge/check", "application/json", "$BRIDGE", `{"name":"fixture1","password":"x","address":"::1"}`},
		{"POST", p + "bridge/exists", "application/json", "$BRIDGE", `{"name":"fixture1"}`},
		{"GET", p + "admin/accounts/fixture1", "", "$ADMIN", ``},
		{"PUT", p + "admin/accounts/fixture1/entitlements/secure", "", "$ADMIN", ``},
		{"DELETE", p + "admin/accounts/%41/entitlements/secure", "", "$ADMIN", ``},
		{"POST", p + "login", "application/json; charset=utf-8", "", `{"name":"\u0000","password":"\ud800"}`},
		{"POST", p + "register", "application/json", "", `{"name":"a","password":"aaaaaaaa"}garbage`},
		{"PATCH", p + "../clinkid/v1/login", "text/html", "ck1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", `<x/>`},
		{"POST", p + "bridge/events", "application/json", "$BRIDGE", `{"after":0}`},
		{"POST", p + "bridge/events", "application/json", "$BRIDGE", `{"after":-9223372036854775808}`},
		{"POST", p + "bridge/check", "application/json", "$BRIDGE", `{"name":"fixture1","password":"x","address":"fe80::1%eth0"}`},
		{"POST", p + "admin/invites", "application/json", "$ADMIN", `{"ttl_seconds":9223372036854775807}`},
		{"POST", p + "register", "application/json", "", `{"name":"ivy","password":"ivy's password","invite":"ci1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}`},
	} {
		f.Add(s.method, s.path, s.ctype, s.auth, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, method, path, ctype, auth string, body []byte) {
		ensureFixture(t)
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		auth = strings.NewReplacer("$TOKEN", token, "$ADMIN", adminToken, "$BRIDGE", bridgeSecret).Replace(auth)
		r, err := http.NewRequestWithContext(ctx, method, "http://clinkd.test"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a server can receive
		}
		r.RemoteAddr = "192.0.2.1:1234"
		r.Header.Set("Content-Type", ctype)
		if auth != "" {
			r.Header.Set("Authorization", "Bearer "+auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		res := w.Result()
		out := w.Body.Bytes()
		if res.StatusCode >= 500 {
			t.Fatalf("%s %s = %d %s", method, path, res.StatusCode, out)
		}
		if res.StatusCode == http.StatusNoContent && len(out) != 0 {
			t.Fatalf("%s %s = 204 with a body %q", method, path, out)
		}
		if res.StatusCode >= 400 {
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(out, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
				t.Fatalf("%s %s = %d with body %q, want the JSON error shape", method, path, res.StatusCode, out)
			}
		}
		for _, secret := range []string{alicePass, adminToken, bridgeSecret, token} {
			if bytes.Contains(out, []byte(secret)) {
				t.Fatalf("%s %s: the answer holds a secret: %s", method, path, out)
			}
		}
	})
}
