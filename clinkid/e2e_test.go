package clinkid_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// The clinkd binary, built once per test binary for ejabberd to run as its
// extauth_program: the real `clinkd extauth`, not a stand-in.
var (
	buildOnce sync.Once
	binDir    string
	binData   []byte
	binErr    error
)

func clinkdBinary(t *testing.T) []byte {
	t.Helper()
	buildOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		if binDir, binErr = os.MkdirTemp("", "clinkd-bin-"); binErr != nil {
			return
		}
		out := filepath.Join(binDir, "clinkd")
		cmd := exec.Command(goBin, "build", "-o", out, "github.com/clinkme/clinkd/cmd/clinkd")
		if b, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/clinkd: %v\n%s", err, b)
			return
		}
		binData, binErr = os.ReadFile(out)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binData
}

// e2eSetup is one private XMPP server authenticating through ClinkID, and
// clinkd serving the account API over real TLS.
type e2eSetup struct {
	srv    *lab.XMPPServer
	d      *daemon.Daemon
	api    *client.ClinkID
	pubURL string
	admin  string
	bridge string
	dbURL  string
	cfg    daemon.ClinkIDConfig
}

// e2eParams are small argon2id parameters: the end-to-end tests are about
// the path, the benchmarks about the cost.
const e2eArgon2Memory = 1024

// e2eOptions adjust a setup.
type e2eOptions struct {
	// clinkid adjusts clinkd's clinkid section after the test defaults;
	// ejabberd's `clinkd extauth` gets the same section (but no secrets).
	clinkid func(*daemon.ClinkIDConfig)
	// prosody are more lines in Prosody's VirtualHost (module options).
	prosody []string
	// xmpp adjusts the server's options before it starts.
	xmpp func(*lab.XMPPOptions)
}

func startE2E(t *testing.T, kind lab.ServerKind, opt e2eOptions) *e2eSetup {
	t.Helper()
	ca := labtest.CA(t)
	e := &e2eSetup{admin: "admin-" + randHex(32), bridge: randHex(32)}
	var extauthRole string
	if kind == lab.Ejabberd {
		// ejabberd's bridge connects as a role with exactly the grants
		// docs/clinkid.md lists. Roles outlive databases: this cleanup,
		// registered first, runs after the database is dropped.
		extauthRole = "clinkd_extauth_" + randHex(4)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if conn, err := pgx.Connect(ctx, labtest.Postgres(t).AdminURL); err == nil {
				conn.Exec(ctx, "DROP ROLE IF EXISTS "+extauthRole)
				conn.Close(ctx)
			}
		})
	}
	e.dbURL = labtest.NewDatabase(t)
	port, err := lab.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	publicAddr := fmt.Sprintf("127.0.0.1:%d", port)
	certFile, keyFile, err := ca.Issue(t.TempDir(), "clinkd", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = daemon.ClinkIDConfig{
		Enabled:          true,
		Argon2MemoryKiB:  e2eArgon2Memory,
		Argon2Iterations: 1, Argon2Parallelism: 1,
		// The owners of every test log in and register from 127.0.0.1.
		LoginBurst:    100,
		RegisterBurst: 100,
		AdminToken:    e.admin,
		BridgeSecret:  e.bridge,
		// The tests register their accounts over HTTPS.
		Registration: string(clinkid.RegistrationOpen),
	}
	if opt.clinkid != nil {
		opt.clinkid(&e.cfg)
	}

	opts := lab.XMPPOptions{Kind: kind, Dir: t.TempDir(), Domain: labtest.Domain}
	switch kind {
	case lab.Prosody:
		// Installed as an operator would: one file copied into a plugin
		// directory, three lines of config.
		module, err := os.ReadFile("../prosody/mod_auth_clinkid.lua")
		if err != nil {
			t.Fatal(err)
		}
		caPEM, err := os.ReadFile(ca.CertFile)
		if err != nil {
			t.Fatal(err)
		}
		opts.Files = []lab.File{
			{Name: "mod_auth_clinkid.lua", Data: module},
			{Name: "clinkid.secret", Data: []byte(e.bridge + "\n")},
			{Name: "clinkid-ca.pem", Data: caPEM},
		}
		opts.ProsodyAuth = &lab.ProsodyAuth{Module: "clinkid", Config: append([]string{
			fmt.Sprintf("clinkid_url = %q", "https://"+publicAddr),
			`clinkid_secret_file = "files/clinkid.secret"`,
			`clinkid_ca_file = "files/clinkid-ca.pem"`,
			// Account events within a second (default 5 s).
			`clinkid_events_interval = 1`,
		}, opt.prosody...)}
	case lab.Ejabberd:
		u, err := url.Parse(e.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(extauthRole, "pw-"+randHex(8))
		// The extauth processes share clinkd's clinkid section, as the
		// docs say, but never its secrets.
		section := e.cfg
		section.Enabled, section.AdminToken, section.BridgeSecret = false, "", ""
		conf, err := yaml.Marshal(map[string]any{
			"log":      map[string]string{"level": "debug"},
			"database": map[string]string{"url": u.String()},
			"link":     map[string]string{"server_domain": labtest.Domain},
			"clinkid":  section,
		})
		if err != nil {
			t.Fatal(err)
		}
		opts.Files = []lab.File{
			{Name: "clinkd", Data: clinkdBinary(t), Mode: 0o700},
			{Name: "extauth.yaml", Data: conf},
		}
		opts.ExtAuthProgram = []string{opts.FilePath("clinkd"), "extauth", "--config", opts.FilePath("extauth.yaml")}
		// ejabberd's own per-address limit, as docs/clinkid.md sets it
		// up: four failed logins ban an address, below the five that
		// delay a name. 127.0.0.1, where the tests play the owners, is
		// never banned; attackers come from other loopback addresses.
		opts.Fail2Ban = &lab.Fail2Ban{MaxFailures: 4, BanLifetime: 10 * time.Minute, Exempt: []string{"127.0.0.1/32"}}
		// clinkd ends sessions through ejabberd's API.
		opts.SessionAPI = true
	}
	if opt.xmpp != nil {
		opt.xmpp(&opts)
	}
	e.srv = labtest.NewXMPP(t, opts)
	e.d = clinkdtest.Start(t, e.srv, func(c *daemon.Config) {
		c.Database = daemon.DatabaseConfig{URL: e.dbURL, Migrate: true}
		c.Public = daemon.PublicConfig{Listen: publicAddr, CertFile: certFile, KeyFile: keyFile}
		c.ClinkID = e.cfg
		if kind == lab.Ejabberd {
			c.ClinkID.EjabberdAPIURL = e.srv.APIURL
		}
	})
	if kind == lab.Ejabberd {
		applyExtauthGrants(t, e.dbURL, extauthRole)
	}
	e.pubURL = e.d.PublicURL()
	if !strings.HasPrefix(e.pubURL, "https://") {
		t.Fatalf("public URL = %s, want https", e.pubURL)
	}
	// The device verifies clinkd's certificate against the lab's CA, and
	// nothing else.
	e.api, err = client.NewClinkID(e.pubURL, &tls.Config{RootCAs: ca.Pool})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// applyExtauthGrants creates role with the grants of docs/clinkid.md, on
// the migrated database.
func applyExtauthGrants(t *testing.T, dbURL, role string) {
	t.Helper()
	doc, err := os.ReadFile("../docs/clinkid.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(doc), "<!-- extauth-grants -->\n```sql\n")
	sql, _, ok2 := strings.Cut(after, "```")
	if !ok || !ok2 || !strings.Contains(sql, "GRANT") {
		t.Fatal("docs/clinkid.md has no extauth-grants SQL block")
	}
	sql = strings.ReplaceAll(sql, "clinkd_extauth", role)
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for stmt := range strings.SplitSeq(sql, ";") {
		if stmt = strings.TrimSpace(stmt); stmt != "" {
			if _, err := conn.Exec(t.Context(), stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
	}
	// The role is as narrow as documented: it cannot touch tokens or
	// entitlements.
	u, _ := url.Parse(dbURL)
	u.User = url.User(role)
	rc, err := pgx.Connect(t.Context(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(context.Background())
	for _, q := range []string{`DELETE FROM clinkid_tokens`, `INSERT INTO clinkid_entitlements (account_id, name, granted_by) VALUES (1, 'secure', 'x')`} {
		if _, err := rc.Exec(t.Context(), q); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s as the extauth role = %v, want permission denied", q, err)
		}
	}
}

// xmppLogin tries a real XMPP login (StartTLS, then SASL) and closes the
// session at once when it succeeds.
func (e *e2eSetup) xmppLogin(t *testing.T, user, secret string) error {
	t.Helper()
	c, err := e.dial(t, user, secret)
	if err == nil {
		c.Close()
	}
	return err
}

func (e *e2eSetup) dial(t *testing.T, user, secret string) (*client.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	return client.Dial(ctx, client.Config{
		Addr:     e.srv.C2SAddr,
		JID:      jid.MustParse(user),
		Password: secret,
		TLS:      clinkdtest.TLSConfig(e.srv),
	})
}

func (e *e2eSetup) mustLogin(t *testing.T, what, user, secret string) {
	t.Helper()
	if err := e.xmppLogin(t, user, secret); err != nil {
		t.Errorf("XMPP login with %s = %v, want success", what, err)
	}
}

// mustFail checks that a login is refused by authentication, not by
// anything else (TLS, a timeout).
func (e *e2eSetup) mustFail(t *testing.T, what, user, secret string) {
	t.Helper()
	err := e.xmppLogin(t, user, secret)
	if err == nil {
		t.Errorf("XMPP login with %s succeeded, want it refused", what)
		return
	}
	// mellium keeps the SASL condition in an internal type; the text is
	// what each server sends with not-authorized.
	want := map[lab.ServerKind]string{
		lab.Prosody:  "Unable to authorize you with the authentication credentials you've sent.", // util/sasl/plain.lua
		lab.Ejabberd: "Invalid username or password",
	}[e.srv.Kind]
	if !strings.Contains(err.Error(), want) {
		t.Errorf("XMPP login with %s = %v, want the server's SASL not-authorized failure %q", what, err, want)
	}
}

// adminCall calls the admin API, which clinkd serves on its (loopback)
// admin listener only.
func (e *e2eSetup) adminCall(t *testing.T, method, path string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, "http://"+e.d.AdminAddr()+clinkid.AdminPrefix+path, nil)
	req.Header.Set("Authorization", "Bearer "+e.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestXMPPLogin is issue 6's end-to-end proof, on real Prosody (with
// mod_auth_clinkid) and real ejabberd (with `clinkd extauth`): an account
// registered over real HTTPS logs in over XMPP with TLS with its password
// and with an app token; a wrong password, a revoked token, an expired
// token, an account that never existed and a deleted account are refused;
// the device reads its entitlements over XMPP; and the server's own
// storage holds no ClinkID password, token or hash.
func TestXMPPLogin(t *testing.T) {
	t.Parallel()
	for _, kind := range lab.Kinds() {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			e := startE2E(t, kind, e2eOptions{})
			ctx := t.Context()
			name := "alice" + randHex(3)
			password := "e2e password " + randHex(8)
			acct, err := e.api.Register(ctx, name, password)
			if err != nil {
				t.Fatal(err)
			}
			if acct.JID != name+"@"+labtest.Domain {
				t.Fatalf("Register = %+v, want the JID %s@%s", acct, name, labtest.Domain)
			}

			// clinkd writes to the account before it ever logged in: the
			// server must know the account exists (Prosody asks from
			// outside a session's thread, ejabberd through isuser) and keep
			// the message for it instead of bouncing it.
			comp := e.d.Component().Domain()
			body := "hello " + randHex(4)
			if err := e.d.Component().SendMessage(ctx, stanza.Message{To: jid.MustParse(acct.JID), From: comp, Type: stanza.ChatMessage},
				struct {
					XMLName xml.Name `xml:"jabber:client body"`
					Text    string   `xml:",chardata"`
				}{Text: body}); err != nil {
				t.Fatal(err)
			}
			// Wait until the server has stored it. Logging in at once
			// raced the server's own lookup (ejabberd's isuser through
			// extauth, Prosody's through the module): when the lookup
			// ended after the login, the server, which had decided
			// "offline" before, stored the message for the next login, and
			// the device waited in vain (seen under load on ejabberd).
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				dump, err := e.srv.DumpStorage(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Contains(dump, []byte(body)) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the message clinkd sent before the first login was not stored within 30 s")
				}
			}

			// The password logs a device in, which gets that message and
			// reads its own entitlements from clinkd over XMPP.
			dev, err := e.dial(t, acct.JID, password)
			if err != nil {
				t.Fatalf("XMPP login with the password = %v", err)
			}
			if err := dev.SendPresence(ctx, stanza.Presence{}); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			m, err := dev.Next(wctx, func(s *client.Stanza) bool { return s.Kind == "message" && bytes.Contains(s.Raw, []byte(body)) })
			cancel()
			if err != nil {
				t.Errorf("the message clinkd sent before the first login never arrived: %v", err)
			} else if m.From.String() != comp.String() {
				t.Errorf("message from %s, want %s", m.From, comp)
			}
			if ents, err := dev.Entitlements(ctx, comp); err != nil || len(ents) != 0 {
				t.Errorf("Entitlements before a grant = %v, %v, want none", ents, err)
			}
			if st := e.adminCall(t, "PUT", "accounts/"+name+"/entitlements/secure"); st != 204 {
				t.Fatalf("admin grant = %d, want 204", st)
			}
			if ents, err := dev.Entitlements(ctx, comp); err != nil || len(ents) != 1 || ents[0] != "secure" {
				t.Errorf("Entitlements after a grant = %v, %v, want [secure]", ents, err)
			}
			dev.Close()

			sess, err := e.api.Login(ctx, name, password, "e2e device", 0)
			if err != nil {
				t.Fatal(err)
			}
			short, err := e.api.Login(ctx, name, password, "short-lived", 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			revoked, err := e.api.Login(ctx, name, password, "to revoke", 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.api.Logout(ctx, revoked.Token, false); err != nil {
				t.Fatal(err)
			}

			e.mustLogin(t, "the app token", acct.JID, sess.Token)
			e.mustFail(t, "a wrong password", acct.JID, password+"x")
			e.mustFail(t, "a revoked token", acct.JID, revoked.Token)
			e.mustFail(t, "an account that never existed", "nobody"+randHex(3)+"@"+labtest.Domain, password)
			e.mustFail(t, "another account's token", "bob@"+labtest.Domain, sess.Token)
			time.Sleep(time.Until(short.ExpiresAt) + time.Second)
			e.mustFail(t, "an expired token", acct.JID, short.Token)

			// What the XMPP server keeps: nothing of the password, the
			// tokens or the hash.
			var phc string
			conn, err := pgx.Connect(ctx, e.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			err = conn.QueryRow(ctx, `SELECT password_hash FROM clinkid_accounts WHERE name = $1`, name).Scan(&phc)
			conn.Close(ctx)
			if err != nil {
				t.Fatal(err)
			}
			dump, err := e.srv.DumpStorage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			f := strings.Split(phc, "$") // "", argon2id, v=19, params, salt, key
			secrets := map[string]string{"password": password, "app token": sess.Token, "short token": short.Token, "hash": phc, "salt": f[4], "key": f[5]}
			for what, s := range secrets {
				if bytes.Contains(dump, []byte(s)) {
					t.Errorf("the %s storage holds the %s", kind, what)
				}
				if strings.Contains(e.srv.LogTail(), s) {
					t.Errorf("the %s log holds the %s", kind, what)
				}
			}
			if bytes.Contains(dump, []byte("{passwd,{<<\""+name)) || bytes.Contains(dump, []byte("/accounts/"+name)) {
				t.Errorf("the %s storage has an account record for %s", kind, name)
			}
			t.Logf("%s storage: %d bytes, none of them a ClinkID secret", kind, len(dump))
			if os.Getenv("E2E_DEBUG") != "" {
				t.Logf("log:\n%s\ndump:\n%s", e.srv.LogTail(), dump)
			}

			// Deletion ends every way in.
			if err := e.api.Delete(ctx, sess.Token, password); err != nil {
				t.Fatal(err)
			}
			e.mustFail(t, "the password of a deleted account", acct.JID, password)
			e.mustFail(t, "a token of a deleted account", acct.JID, sess.Token)
			var apiErr *client.APIError
			if _, err := e.api.Login(ctx, name, password, "", 0); !errors.As(err, &apiErr) || apiErr.Code != "invalid_credentials" {
				t.Errorf("HTTPS login of a deleted account = %v, want invalid_credentials", err)
			}
		})
	}
}
