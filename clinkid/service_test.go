package clinkid_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/clinkid"
)

// recordingBindings is a KeyBindings that records what it was told, and
// fails while err is set.
type recordingBindings struct {
	mu    sync.Mutex
	ended []string
	err   error
}

func (r *recordingBindings) End(_ context.Context, bareJID, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.ended = append(r.ended, bareJID+" ("+reason+")")
	return nil
}

const alicePass = "correct horse battery"

// TestAccountLifecycle walks one account through register, login, token
// use, password change, logout and deletion on a real database.
func TestAccountLifecycle(t *testing.T) {
	t.Parallel()
	kb := &recordingBindings{}
	svc, _ := newService(t, func(c *clinkid.Config) { c.KeyBindings = kb })
	ctx := t.Context()

	a, err := svc.CreateAccount(ctx, "Alice", alicePass, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "alice" || a.JID != "alice@"+testDomain {
		t.Errorf("CreateAccount(Alice) = %+v, want alice@%s", a, testDomain)
	}
	for _, name := range []string{"alice", "ALICE", "ａｌｉｃｅ"} {
		if _, err := svc.CreateAccount(ctx, name, alicePass, ""); !errors.Is(err, clinkid.ErrNameTaken) {
			t.Errorf("CreateAccount(%q) again = %v, want ErrNameTaken", name, err)
		}
	}
	if _, err := svc.CreateAccount(ctx, "bob", "short", ""); !errors.Is(err, clinkid.ErrWeakPassword) {
		t.Errorf("CreateAccount(bob, short) = %v, want ErrWeakPassword", err)
	}
	if _, err := svc.CreateAccount(ctx, "b@b", alicePass, ""); !errors.Is(err, clinkid.ErrInvalidName) {
		t.Errorf("CreateAccount(b@b) = %v, want ErrInvalidName", err)
	}

	if _, err := svc.Login(ctx, "alice", "wrong password", "", "", 0); !errors.Is(err, clinkid.ErrInvalidCredentials) {
		t.Errorf("Login(wrong) = %v, want ErrInvalidCredentials", err)
	}
	s1, err := svc.Login(ctx, "ALICE", alicePass, "", "phone", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !clinkid.IsToken(s1.Token) || s1.Name != "alice" || time.Until(s1.ExpiresAt) < 29*24*time.Hour {
		t.Errorf("Login = %+v, want a token for alice living 30 days", s1)
	}
	s2, err := svc.Login(ctx, "alice", alicePass, "", "laptop", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(s2.ExpiresAt); d > time.Hour || d < 50*time.Minute {
		t.Errorf("Login(ttl 1h) expires in %v, want about 1h", d)
	}

	check := func(name, secret string, want bool) {
		t.Helper()
		got, err := svc.CheckLogin(ctx, name, secret, "")
		if err != nil || got != want {
			t.Errorf("CheckLogin(%s, ...) = %v, %v, want %v", name, got, err, want)
		}
	}
	check("alice", alicePass, true)
	check("alice", s1.Token, true)
	check("alice", s2.Token, true)
	check("bob", s1.Token, false) // another account's token
	check("alice", "wrong", false)
	check("nobody", alicePass, false)

	// A password change keeps the token used for it and revokes the others.
	if err := svc.ChangePassword(ctx, s1.Token, "not it", "new password 1", ""); !errors.Is(err, clinkid.ErrInvalidCredentials) {
		t.Errorf("ChangePassword(wrong current) = %v, want ErrInvalidCredentials", err)
	}
	if err := svc.ChangePassword(ctx, s1.Token, alicePass, "new password 1", ""); err != nil {
		t.Fatal(err)
	}
	check("alice", alicePass, false)
	check("alice", "new password 1", true)
	check("alice", s1.Token, true)
	check("alice", s2.Token, false)

	// Logout revokes one token; all revokes every token.
	s3, err := svc.Login(ctx, "alice", "new password 1", "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Logout(ctx, s3.Token, false); err != nil {
		t.Fatal(err)
	}
	check("alice", s3.Token, false)
	check("alice", s1.Token, true)
	s4, _ := svc.Login(ctx, "alice", "new password 1", "", "", 0)
	if err := svc.Logout(ctx, s4.Token, true); err != nil {
		t.Fatal(err)
	}
	check("alice", s1.Token, false)
	check("alice", s4.Token, false)
	if err := svc.Logout(ctx, s4.Token, false); !errors.Is(err, clinkid.ErrInvalidToken) {
		t.Errorf("Logout(revoked token) = %v, want ErrInvalidToken", err)
	}

	// Deletion: the key binding must end first; while it cannot, the
	// account stays.
	s5, _ := svc.Login(ctx, "alice", "new password 1", "", "", 0)
	kb.err = errors.New("key directory unreachable")
	if err := svc.DeleteAccount(ctx, s5.Token, "new password 1", ""); !errors.Is(err, clinkid.ErrKeyBinding) {
		t.Fatalf("DeleteAccount with the key directory down = %v, want ErrKeyBinding", err)
	}
	if ok, _ := svc.Exists(ctx, "alice"); !ok {
		t.Fatal("account deleted although its key binding did not end")
	}
	kb.err = nil
	if err := svc.DeleteAccount(ctx, s5.Token, "wrong", ""); !errors.Is(err, clinkid.ErrInvalidCredentials) {
		t.Errorf("DeleteAccount(wrong password) = %v, want ErrInvalidCredentials", err)
	}
	if err := svc.DeleteAccount(ctx, s5.Token, "new password 1", ""); err != nil {
		t.Fatal(err)
	}
	if want := []string{"alice@" + testDomain + " (ClinkID account deleted by its owner)"}; len(kb.ended) != 1 || kb.ended[0] != want[0] {
		t.Errorf("key bindings ended = %q, want %q", kb.ended, want)
	}
	if ok, _ := svc.Exists(ctx, "alice"); ok {
		t.Error("Exists(alice) after deletion = true")
	}
	check("alice", "new password 1", false)
	check("alice", s5.Token, false)
	// The name is quarantined.
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); !errors.Is(err, clinkid.ErrNameTaken) {
		t.Errorf("CreateAccount(deleted name) = %v, want ErrNameTaken", err)
	}
}

// TestTokenExpiry: an expired token is refused everywhere.
func TestTokenExpiry(t *testing.T) {
	t.Parallel()
	svc, db := newService(t, nil)
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	s, err := svc.Login(ctx, "alice", alicePass, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `UPDATE clinkid_tokens SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if ok, err := svc.CheckLogin(ctx, "alice", s.Token, ""); ok || err != nil {
		t.Errorf("CheckLogin(expired token) = %v, %v, want false", ok, err)
	}
	if _, err := svc.Authenticate(ctx, s.Token); !errors.Is(err, clinkid.ErrInvalidToken) {
		t.Errorf("Authenticate(expired token) = %v, want ErrInvalidToken", err)
	}
}

// TestMaxTokens: logins beyond MaxTokens revoke the oldest tokens.
func TestMaxTokens(t *testing.T) {
	t.Parallel()
	svc, _ := newService(t, func(c *clinkid.Config) { c.MaxTokens = 3 })
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	var toks []string
	for range 5 {
		s, err := svc.Login(ctx, "alice", alicePass, "", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, s.Token)
	}
	for i, tok := range toks {
		ok, _ := svc.CheckLogin(ctx, "alice", tok, "")
		if want := i >= 2; ok != want {
			t.Errorf("token %d valid = %v, want %v", i, ok, want)
		}
	}
}

// TestRehash: raising the argon2id parameters upgrades a hash at the next
// successful password login, and only then.
func TestRehash(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	ctx := t.Context()
	old := newServiceOn(t, db, nil)
	if _, err := old.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	hash := func() string {
		var h string
		if err := db.QueryRow(ctx, `SELECT password_hash FROM clinkid_accounts WHERE name = 'alice'`).Scan(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := hash(); !strings.HasPrefix(h, "$argon2id$v=19$m=256,t=1,p=1$") {
		t.Fatalf("stored hash = %s, want the old parameters", h)
	}
	raised := newServiceOn(t, db, func(c *clinkid.Config) { c.Params = clinkid.Params{Memory: 512, Iterations: 2, Parallelism: 2} })
	if ok, _ := raised.CheckLogin(ctx, "alice", "wrong", ""); ok {
		t.Fatal("wrong password accepted")
	}
	if h := hash(); !strings.HasPrefix(h, "$argon2id$v=19$m=256,t=1,p=1$") {
		t.Errorf("hash after a failed login = %s, want it unchanged", h)
	}
	if ok, err := raised.CheckLogin(ctx, "alice", alicePass, ""); !ok || err != nil {
		t.Fatalf("CheckLogin with the old hash = %v, %v", ok, err)
	}
	if h := hash(); !strings.HasPrefix(h, "$argon2id$v=19$m=512,t=2,p=2$") {
		t.Errorf("hash after a successful login = %s, want the raised parameters", h)
	}
	if ok, err := old.CheckLogin(ctx, "alice", alicePass, ""); !ok || err != nil {
		t.Errorf("CheckLogin with the upgraded hash = %v, %v", ok, err)
	}
}

// TestEntitlements: grant, revoke and read entitlements; HasEntitlement
// takes bare JIDs of the service's domain only.
func TestEntitlements(t *testing.T) {
	t.Parallel()
	svc, _ := newService(t, nil)
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	has := func(account string, want bool) {
		t.Helper()
		got, err := svc.HasEntitlement(ctx, account, clinkid.EntitlementSecure)
		if err != nil || got != want {
			t.Errorf("HasEntitlement(%q, secure) = %v, %v, want %v", account, got, err, want)
		}
	}
	has("alice@"+testDomain, false)
	if err := svc.Grant(ctx, "Alice", "secure", "test"); err != nil {
		t.Fatal(err)
	}
	if err := svc.Grant(ctx, "alice", "secure", "test"); err != nil {
		t.Errorf("Grant twice = %v, want nil", err)
	}
	has("alice@"+testDomain, true)
	has("Alice@"+testDomain, true)
	has("alice@"+testDomain+"/phone", true)
	has("alice@example.org", false)
	has("alice", false)
	has(testDomain, false)
	has("bob@"+testDomain, false)
	has("not a jid@@", false)
	if a, _ := svc.Show(ctx, "alice"); len(a.Entitlements) != 1 || a.Entitlements[0] != "secure" {
		t.Errorf("Show(alice).Entitlements = %v, want [secure]", a.Entitlements)
	}
	if err := svc.Grant(ctx, "alice", "platinum", "test"); !errors.Is(err, clinkid.ErrUnknownEntitlement) {
		t.Errorf("Grant(platinum) = %v, want ErrUnknownEntitlement", err)
	}
	if err := svc.Grant(ctx, "bob", "secure", "test"); !errors.Is(err, clinkid.ErrNoAccount) {
		t.Errorf("Grant(bob) = %v, want ErrNoAccount", err)
	}
	if err := svc.Revoke(ctx, "alice", "secure", "test"); err != nil {
		t.Fatal(err)
	}
	has("alice@"+testDomain, false)
	if err := svc.Revoke(ctx, "alice", "secure", "test"); err != nil {
		t.Errorf("Revoke twice = %v, want nil", err)
	}
}

// TestNoExistenceLeak: an unknown name and a wrong password cost the same
// argon2id work, give the same error, and lock out alike.
func TestNoExistenceLeak(t *testing.T) {
	t.Parallel()
	svc, _ := newService(t, func(c *clinkid.Config) { c.LockoutThreshold = 3 })
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alice", "nobody"} {
		for i := range 3 {
			before := svc.HashCount()
			_, err := svc.Login(ctx, name, "wrong guess", "", "", 0)
			if !errors.Is(err, clinkid.ErrInvalidCredentials) || errors.Is(err, clinkid.ErrLocked) {
				t.Errorf("%s attempt %d: Login = %v, want ErrInvalidCredentials", name, i+1, err)
			}
			if n := svc.HashCount() - before; n != 1 {
				t.Errorf("%s attempt %d: %d argon2id computations, want 1", name, i+1, n)
			}
		}
		before := svc.HashCount()
		_, err := svc.Login(ctx, name, "wrong guess", "", "", 0)
		var locked *clinkid.LockedError
		if !errors.As(err, &locked) || time.Until(locked.Until) <= 0 {
			t.Errorf("%s after 3 failures: Login = %v, want a LockedError in the future", name, err)
		}
		if n := svc.HashCount() - before; n != 0 {
			t.Errorf("%s locked: %d argon2id computations, want 0", name, n)
		}
	}
}

// TestSweep: expired tokens, stale failures and ended quarantines are
// deleted; live ones stay.
func TestSweep(t *testing.T) {
	t.Parallel()
	svc, db := newService(t, func(c *clinkid.Config) { c.NameQuarantine = time.Hour })
	ctx := t.Context()
	if _, err := svc.CreateAccount(ctx, "alice", alicePass, ""); err != nil {
		t.Fatal(err)
	}
	live, _ := svc.Login(ctx, "alice", alicePass, "", "", 0)
	dead, _ := svc.Login(ctx, "alice", alicePass, "", "", 0)
	svc.CheckLogin(ctx, "stale", "wrong password", "")
	svc.CheckLogin(ctx, "fresh", "wrong password", "")
	for _, q := range []string{
		`UPDATE clinkid_tokens SET expires_at = now() - interval '1 minute' WHERE created_at = (SELECT max(created_at) FROM clinkid_tokens)`,
		`UPDATE clinkid_failures SET last_failure = now() - interval '25 hours' WHERE name = 'stale'`,
		`INSERT INTO clinkid_tombstones (name, deleted_at) VALUES ('old', now() - interval '2 hours'), ('recent', now())`,
	} {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	count := func(q string) int {
		var n int
		if err := db.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM clinkid_tokens`); n != 1 {
		t.Errorf("%d tokens after the sweep, want 1", n)
	}
	if ok, _ := svc.CheckLogin(ctx, "alice", live.Token, ""); !ok {
		t.Error("the live token was swept")
	}
	if ok, _ := svc.CheckLogin(ctx, "alice", dead.Token, ""); ok {
		t.Error("the expired token still works")
	}
	if n := count(`SELECT count(*) FROM clinkid_failures WHERE name = 'stale'`); n != 0 {
		t.Error("a failure older than a day was kept")
	}
	if n := count(`SELECT count(*) FROM clinkid_failures WHERE name = 'fresh'`); n != 1 {
		t.Error("a fresh failure was swept")
	}
	if n := count(`SELECT count(*) FROM clinkid_tombstones`); n != 1 {
		t.Errorf("%d tombstones after the sweep, want the recent one", n)
	}
}
