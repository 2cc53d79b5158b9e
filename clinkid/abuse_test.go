package clinkid_test

// The attacks of issue 13 ("Abuse-proof"), played against the real
// servers: Prosody with mod_auth_clinkid, ejabberd running `clinkd
// extauth`, clinkd over real TLS and PostgreSQL. Attackers come from
// other loopback addresses than the owner: every address of 127.0.0.0/8
// reaches the lab's servers, and each /24 of it is another network to
// clinkd's limits.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// ownerAddr is where owners connect from; attackers use other /24s.
const ownerAddr = "127.0.0.1"

// xmppSession is a logged-in session dialled from a chosen loopback
// address; done is closed when the server ends the stream.
type xmppSession struct {
	sess *xmpp.Session
	conn net.Conn
	done chan struct{}
	err  error // why the stream ended; read after done
}

// dialFrom logs user in over c2s (StartTLS, then SASL PLAIN, which is what
// the ClinkID bridges offer) from the loopback address local.
func dialFrom(ctx context.Context, srv *lab.XMPPServer, local, user, secret string) (*xmppSession, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := d.DialContext(ctx, "tcp", srv.C2SAddr)
	if err != nil {
		return nil, err
	}
	j, err := jid.Parse(user)
	if err != nil {
		conn.Close()
		return nil, err
	}
	sess, err := xmpp.NewClientSession(ctx, j.Bare(), conn,
		xmpp.StartTLS(clinkdtest.TLSConfig(srv)),
		xmpp.SASL("", secret, sasl.Plain),
		xmpp.BindResource(),
	)
	if err != nil {
		conn.Close()
		return nil, err
	}
	s := &xmppSession{sess: sess, conn: conn, done: make(chan struct{})}
	go func() {
		s.err = sess.Serve(xmpp.HandlerFunc(func(xmlstream.TokenReadEncoder, *xml.StartElement) error { return nil }))
		conn.Close()
		close(s.done)
	}()
	return s, nil
}

func (s *xmppSession) Close() {
	s.sess.Close()
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
	}
	s.conn.Close()
}

// loginFrom tries one login from local and closes the session if it
// succeeded.
func loginFrom(ctx context.Context, srv *lab.XMPPServer, local, user, secret string) error {
	s, err := dialFrom(ctx, srv, local, user, secret)
	if err == nil {
		s.Close()
	}
	return err
}

// refusedBy says how a login failed: "sasl" (the server's not-authorized),
// "banned" (ejabberd's mod_fail2ban stream error), or the error itself.
func refusedBy(kind lab.ServerKind, err error) string {
	switch {
	case err == nil:
		return "accepted"
	case kind == lab.Ejabberd && strings.Contains(err.Error(), "policy-violation"):
		// mod_fail2ban's stream error ("Too many (N) failed
		// authentications from this IP address").
		return "banned"
	case kind == lab.Prosody && strings.Contains(err.Error(), "Unable to authorize you"),
		kind == lab.Ejabberd && strings.Contains(err.Error(), "Invalid username or password"):
		return "sasl"
	}
	return err.Error()
}

// httpFrom is an HTTPS client of clinkd's public listener whose
// connections come from local.
func httpFrom(t *testing.T, local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext:     d.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: labtest.CA(t).Pool},
	}}
}

// apiCall sends one JSON request and returns the status and error code.
func apiCall(t *testing.T, hc *http.Client, method, url, auth string, body any) (int, string, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(raw, &out)
	code := ""
	if e, ok := out["error"].(map[string]any); ok {
		code, _ = e["code"].(string)
	}
	return resp.StatusCode, code, out
}

// failureRows counts the names and scopes clinkd counts failed password
// attempts for: each guess that reached a password check left one.
func (e *e2eSetup) failureRows(t *testing.T, like string) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM clinkid_failures WHERE name LIKE $1`, like).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// nameLocked reports whether password logins of name from unknown
// networks are being held back.
func (e *e2eSetup) nameLocked(t *testing.T, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM clinkid_failures WHERE name = $1 AND locked_until > now()`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func (e *e2eSetup) newAccount(t *testing.T, prefix string) (name, bare, password string) {
	t.Helper()
	name = prefix + randHex(3)
	password = "pass phrase " + randHex(8)
	if _, err := e.api.Register(t.Context(), name, password); err != nil {
		t.Fatal(err)
	}
	return name, name + "@" + labtest.Domain, password
}

// TestAbuseEjabberd plays the login attacks on ejabberd, whose extauth
// protocol carries no client address.
func TestAbuseEjabberd(t *testing.T) {
	t.Parallel()
	e := startE2E(t, lab.Ejabberd, e2eOptions{
		// A small global budget, for the last subtest: the subtests
		// before it fail 8 logins.
		clinkid: func(c *daemon.ClinkIDConfig) { c.GlobalFailuresPerMinute = 12 },
	})

	// 30 password guesses for 30 names from one address: without a
	// per-address limit every one cost an argon2id in clinkd extauth.
	t.Run("spray", func(t *testing.T) {
		answers := map[string]int{}
		for i := range 30 {
			err := loginFrom(t.Context(), e.srv, "127.66.1.1", fmt.Sprintf("spray%d-%s@%s", i, randHex(2), labtest.Domain), "password1")
			answers[refusedBy(lab.Ejabberd, err)]++
		}
		checked := e.failureRows(t, "spray%")
		t.Logf("30 names from one address: %v; %d reached a password check", answers, checked)
		if checked > 4 {
			t.Errorf("%d of 30 guesses from one address reached a password check, want at most 4 (mod_fail2ban's c2s_max_auth_failures)", checked)
		}
		if answers["banned"] == 0 {
			t.Errorf("answers %v: the address was never banned", answers)
		}
	})

	// Guessing one name's password from one address: the name must not be
	// locked for its owner.
	t.Run("owner not locked out", func(t *testing.T) {
		name, bare, password := e.newAccount(t, "owner")
		answers := map[string]int{}
		for i := range 10 {
			answers[refusedBy(lab.Ejabberd, loginFrom(t.Context(), e.srv, "127.66.2.1", bare, fmt.Sprintf("guess %d", i)))]++
		}
		t.Logf("10 guesses at %s from one address: %v", name, answers)
		if answers["accepted"] != 0 {
			t.Fatalf("a guess was accepted: %v", answers)
		}
		if err := loginFrom(t.Context(), e.srv, ownerAddr, bare, password); err != nil {
			t.Errorf("the owner's password login on ejabberd after the guesses = %v, want accepted", err)
		}
	})

	t.Run("sessions end", func(t *testing.T) { testSessionsEnd(t, e) })

	// What ejabberd kept for a deleted account goes with it: a later
	// owner of the name (after the quarantine) must not inherit it.
	t.Run("deleted data", func(t *testing.T) {
		ctx := t.Context()
		name, bare, password := e.newAccount(t, "kept")
		body := "kept for " + randHex(6)
		comp := e.d.Component()
		if err := comp.SendMessage(ctx, stanza.Message{To: jid.MustParse(bare), From: comp.Domain(), Type: stanza.ChatMessage},
			struct {
				XMLName xml.Name `xml:"jabber:client body"`
				Text    string   `xml:",chardata"`
			}{Text: body}); err != nil {
			t.Fatal(err)
		}
		stored := func() bool {
			dump, err := e.srv.DumpStorage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return bytes.Contains(dump, []byte(body))
		}
		for deadline := time.Now().Add(30 * time.Second); !stored(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the offline message was never stored")
			}
		}
		tok, err := e.api.Login(ctx, name, password, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.api.Delete(ctx, tok.Token, password); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); stored(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("ejabberd still stores the deleted account's offline message 30 s after the deletion")
			}
		}
	})

	// Many addresses, each below mod_fail2ban's threshold, spraying names:
	// no per-address limit can see them, so the global budget of failures
	// from unknown networks, shared by every clinkd extauth process, stops
	// the hashing; the owner's app token still logs in.
	t.Run("global budget", func(t *testing.T) {
		name, bare, password := e.newAccount(t, "tokenowner")
		tok, err := e.api.Login(t.Context(), name, password, "phone", 0)
		if err != nil {
			t.Fatal(err)
		}
		answers := map[string]int{}
		for i := range 18 {
			err := loginFrom(t.Context(), e.srv, fmt.Sprintf("127.67.%d.1", i/3+1), fmt.Sprintf("global%d-%s@%s", i, randHex(2), labtest.Domain), "password1")
			answers[refusedBy(lab.Ejabberd, err)]++
		}
		checked := e.failureRows(t, "global%")
		t.Logf("18 guesses from 6 addresses, 3 each: %v; %d reached a password check", answers, checked)
		if checked >= 18 || checked == 0 {
			t.Errorf("%d of 18 guesses reached a password check, want the global budget (12 a minute, 8 spent before) to stop some", checked)
		}
		if answers["banned"] != 0 {
			t.Errorf("answers %v: an address was banned with fewer failures than mod_fail2ban's threshold", answers)
		}
		if err := loginFrom(t.Context(), e.srv, ownerAddr, bare, tok.Token); err != nil {
			t.Errorf("the owner's app token on ejabberd past the global budget = %v, want accepted", err)
		}
	})
}

// TestAbuseProsody plays the login and account-life attacks on Prosody
// with mod_auth_clinkid.
func TestAbuseProsody(t *testing.T) {
	t.Parallel()
	e := startE2E(t, lab.Prosody, e2eOptions{
		// Strangers' networks get 3 attempts at once; the owners, at the
		// network they registered from, are not counted there.
		// (and no refill while the test runs, however slow the machine).
		clinkid: func(c *daemon.ClinkIDConfig) { c.LoginNetworkBurst, c.LoginNetworkPerMinute = 3, 0.001 },
		// XEP-0078 non-SASL authentication calls the provider's
		// test_password, outside SASL.
		prosody: []string{`modules_enabled = { "legacyauth" }`},
	})

	// Guessing one name's password: the owner, at a network it logged in
	// from before, still logs in with the password.
	t.Run("owner not locked out", func(t *testing.T) {
		name, bare, password := e.newAccount(t, "owner")
		if err := loginFrom(t.Context(), e.srv, ownerAddr, bare, password); err != nil {
			t.Fatal(err)
		}
		answers := map[string]int{}
		for i := range 8 {
			answers[refusedBy(lab.Prosody, loginFrom(t.Context(), e.srv, fmt.Sprintf("127.66.%d.1", 10+i), bare, fmt.Sprintf("guess %d", i)))]++
		}
		t.Logf("8 guesses at %s: %v", name, answers)
		if !e.nameLocked(t, name) {
			t.Error("the guesses did not slow down: no delay on the name")
		}
		if err := loginFrom(t.Context(), e.srv, ownerAddr, bare, password); err != nil {
			t.Errorf("the owner's password login on Prosody after the guesses = %v, want accepted", err)
		}
	})

	// test_password (here through XEP-0078) must carry the client's
	// address, so the per-address limit applies there too.
	t.Run("test_password address", func(t *testing.T) {
		before := e.d.ClinkID().HashCount()
		answers := map[string]int{}
		for i := range 10 {
			answers[legacyAuth(t, e.srv, "127.66.3.1", fmt.Sprintf("legacy%d", i), "password1")]++
		}
		hashed := e.d.ClinkID().HashCount() - before
		t.Logf("10 XEP-0078 guesses from one address: %v; %d hashed", answers, hashed)
		if answers["result"] != 0 {
			t.Fatalf("a guess was accepted: %v", answers)
		}
		if hashed > 3 {
			t.Errorf("%d of 10 guesses through test_password were hashed, want at most the network's burst, 3", hashed)
		}
		// The budget spent was that network's, not one shared by every
		// check without an address: another network still gets checked.
		before = e.d.ClinkID().HashCount()
		if got := legacyAuth(t, e.srv, "127.66.4.1", "legacy-other", "password1"); got != "not-authorized" {
			t.Errorf("XEP-0078 guess from another network = %s, want not-authorized", got)
		}
		if n := e.d.ClinkID().HashCount() - before; n != 1 {
			t.Errorf("a guess from another network was hashed %d times, want 1: clinkd did not see the client's address", n)
		}
	})

	t.Run("user exists", func(t *testing.T) { testUserExists(t, e) })
	t.Run("sessions end", func(t *testing.T) { testSessionsEnd(t, e) })
}

// legacyAuth tries XEP-0078 non-SASL authentication from local: StartTLS,
// then an iq:auth set. It returns "result", an error condition, or what
// went wrong.
func legacyAuth(t *testing.T, srv *lab.XMPPServer, local, user, password string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := d.DialContext(ctx, "tcp", srv.C2SAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	header := fmt.Sprintf("<?xml version='1.0'?><stream:stream to='%s' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", srv.Domain)
	io.WriteString(conn, header)
	if _, err := readUntil(conn, "</stream:features>"); err != nil {
		return "features: " + err.Error()
	}
	io.WriteString(conn, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
	if _, err := readUntil(conn, "<proceed"); err != nil {
		return "starttls: " + err.Error()
	}
	tc := tls.Client(conn, clinkdtest.TLSConfig(srv))
	if err := tc.HandshakeContext(ctx); err != nil {
		return "tls: " + err.Error()
	}
	io.WriteString(tc, header)
	if _, err := readUntil(tc, "</stream:features>"); err != nil {
		return "features: " + err.Error()
	}
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(password))
	fmt.Fprintf(tc, "<iq type='set' id='a1'><query xmlns='jabber:iq:auth'><username>%s</username><password>%s</password><resource>r</resource></query></iq>", user, b.String())
	got, err := readUntil(tc, "</iq>")
	if err != nil {
		return "auth: " + err.Error()
	}
	if strings.Contains(got, "type='result'") || strings.Contains(got, `type="result"`) {
		return "result"
	}
	if m := regexp.MustCompile(`<([a-z-]+) xmlns=['"]urn:ietf:params:xml:ns:xmpp-stanzas['"]`).FindStringSubmatch(got); m != nil {
		return m[1]
	}
	return "unexpected: " + got
}

// readUntil reads from r until want has been read, and returns it all.
func readUntil(r io.Reader, want string) (string, error) {
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte(want)) {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return string(got), err
		}
		if len(got) > 1<<20 {
			return "", errors.New("too much")
		}
	}
	return string(got), nil
}

// testUserExists: stanzas that components send to local names that have
// no account must bounce, not fill Prosody's offline store; a deleted
// account must stop existing.
func testUserExists(t *testing.T, e *e2eSetup) {
	ctx := t.Context()
	comp := e.d.Component()
	send := func(to, body string) {
		t.Helper()
		err := comp.SendMessage(ctx, stanza.Message{To: jid.MustParse(to), From: comp.Domain(), Type: stanza.ChatMessage},
			struct {
				XMLName xml.Name `xml:"jabber:client body"`
				Text    string   `xml:",chardata"`
			}{Text: body})
		if err != nil {
			t.Fatal(err)
		}
	}
	offline := func(name string) bool {
		t.Helper()
		dump, err := e.srv.DumpStorage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Contains(dump, []byte("offline/"+name))
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30 s", what)
			}
		}
	}

	ghost := "ghost" + randHex(3)
	for i := range 50 {
		send(fmt.Sprintf("%s%d@%s", ghost, i, labtest.Domain), strings.Repeat("x", 1000))
	}
	// A real account that has never logged in gets its message kept; once
	// it is, the ghosts have been handled too.
	marker, markerJID, _ := e.newAccount(t, "marker")
	send(markerJID, "for a real account")
	waitFor("the message to a real offline account is stored", func() bool { return offline(marker) })
	// Deferred lookups end in milliseconds; watch a while for late writes.
	for range 20 {
		if offline(ghost) {
			dump, _ := e.srv.DumpStorage(ctx)
			t.Fatalf("Prosody stored offline messages for local names with no account (%d files)", bytes.Count(dump, []byte("offline/"+ghost)))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A deleted account stops existing: what was stored for it goes, and
	// nothing new is kept for it.
	name, bare, password := e.newAccount(t, "dora")
	send(bare, "before deletion")
	waitFor("the message to dora is stored", func() bool { return offline(name) })
	tok, err := e.api.Login(ctx, name, password, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.api.Delete(ctx, tok.Token, password); err != nil {
		t.Fatal(err)
	}
	waitFor("Prosody forgets the deleted account's offline messages", func() bool { return !offline(name) })
	send(bare, "after deletion")
	marker2, marker2JID, _ := e.newAccount(t, "marker")
	send(marker2JID, "after deletion")
	waitFor("the second marker is stored", func() bool { return offline(marker2) })
	if offline(name) {
		t.Error("Prosody stored a message for a deleted account")
	}
}

// testSessionsEnd: deleting an account, or changing its password, ends
// the XMPP sessions it has open.
func testSessionsEnd(t *testing.T, e *e2eSetup) {
	ctx := t.Context()
	// sessionBound is how long a session may outlive the change: the
	// Prosody module polls every second in these tests (default 5 s) and
	// clinkd tells ejabberd at once; 30 s leaves room for a loaded machine.
	const sessionBound = 30 * time.Second
	for _, change := range []string{"password change", "deletion"} {
		name, bare, password := e.newAccount(t, "life")
		tok, err := e.api.Login(ctx, name, password, "the device that acts", 0)
		if err != nil {
			t.Fatal(err)
		}
		byPassword, err := dialFrom(ctx, e.srv, ownerAddr, bare, password)
		if err != nil {
			t.Fatal(err)
		}
		defer byPassword.Close()
		other, err := e.api.Login(ctx, name, password, "another device", 0)
		if err != nil {
			t.Fatal(err)
		}
		byToken, err := dialFrom(ctx, e.srv, ownerAddr, bare, other.Token)
		if err != nil {
			t.Fatal(err)
		}
		defer byToken.Close()
		start := time.Now()
		switch change {
		case "password change":
			err = e.api.ChangePassword(ctx, tok.Token, password, password+" changed")
		case "deletion":
			err = e.api.Delete(ctx, tok.Token, password)
		}
		if err != nil {
			t.Fatal(err)
		}
		for what, s := range map[string]*xmppSession{"logged in with the password": byPassword, "logged in with another token": byToken} {
			select {
			case <-s.done:
				t.Logf("%s on %s: the session %s ended after %v: %v", change, e.srv.Kind, what, time.Since(start).Round(time.Millisecond), s.err)
			case <-time.After(sessionBound - time.Since(start)):
				t.Errorf("%s on %s: the session %s is still open %v later", change, e.srv.Kind, what, sessionBound)
			}
		}
	}
}

// TestAbuseHTTP plays the attacks on clinkd's HTTPS API.
func TestAbuseHTTP(t *testing.T) {
	t.Parallel()
	e := startE2E(t, lab.Prosody, e2eOptions{
		clinkid: func(c *daemon.ClinkIDConfig) { c.LoginBurst, c.LoginNetworkBurst = 10, 5 },
	})
	login := e.pubURL + "/clinkid/v1/login"

	// Addresses of one IPv4 /24 share a budget.
	t.Run("ipv4 /24", func(t *testing.T) {
		answers := map[string]int{}
		for i := range 40 {
			st, code, _ := apiCall(t, httpFrom(t, fmt.Sprintf("127.9.9.%d", i+1)), "POST", login, "", map[string]string{"name": fmt.Sprintf("v4n%d", i), "password": "wrong password"})
			answers[fmt.Sprint(st, " ", code)]++
		}
		t.Logf("40 guesses from 40 addresses of one /24: %v", answers)
		if answers["429 rate_limited"] == 0 {
			t.Errorf("40 guesses from one /24 = %v, want the network's budget to run out", answers)
		}
	})

	// Addresses of one IPv6 /64 share a budget (through the Prosody
	// bridge, which vouches for the client's address).
	t.Run("ipv6 /64", func(t *testing.T) {
		before := e.d.ClinkID().HashCount()
		for i := range 40 {
			st, _, out := apiCall(t, httpFrom(t, ownerAddr), "POST", e.pubURL+"/clinkid/v1/bridge/check", e.bridge,
				map[string]string{"name": fmt.Sprintf("v6n%d", i), "password": "wrong password", "address": fmt.Sprintf("2001:db8:1:2::%x", i+1)})
			if st != 200 || out["ok"] != false {
				t.Fatalf("bridge check = %d %v", st, out)
			}
		}
		hashed := e.d.ClinkID().HashCount() - before
		t.Logf("40 guesses from 40 addresses of one /64: %d hashed", hashed)
		if hashed >= 40 {
			t.Errorf("%d of 40 guesses from one IPv6 /64 were hashed, want the /64's budget to run out", hashed)
		}
	})

	// The admin API is not on the public listener; on the admin listener
	// its limiter comes before the secret, so a limited address learns
	// nothing even from the right token.
	t.Run("admin api", func(t *testing.T) {
		name, _, _ := e.newAccount(t, "adm")
		pub := httpFrom(t, ownerAddr)
		if st, code, _ := apiCall(t, pub, "GET", e.pubURL+"/clinkid/v1/admin/accounts/"+name, e.admin, nil); st != 404 || code != "not_found" {
			t.Errorf("admin call on the public listener = %d %q, want 404 not_found", st, code)
		}
		adminURL := "http://" + e.d.AdminAddr() + "/clinkid/v1/admin/accounts/" + name
		if st, code, _ := apiCall(t, http.DefaultClient, "GET", adminURL, e.admin, nil); st != 200 {
			t.Errorf("admin call on the admin listener = %d %q, want 200", st, code)
		}
		// Wrong tokens until the address is limited (10, unless the
		// machine is so slow that the bucket refills meanwhile: one a
		// wrong token every 6 s), then at once the right one.
		limit := func(hc *http.Client, method, url, wrong string, body any) int {
			for n := 1; n <= 100; n++ {
				if st, code, _ := apiCall(t, hc, method, url, wrong, body); st == 429 && code == "rate_limited" {
					return n
				}
			}
			t.Fatalf("%s: 100 wrong secrets and still not limited", url)
			return 0
		}
		n := limit(http.DefaultClient, "GET", adminURL, e.admin+"x", nil)
		if st, code, _ := apiCall(t, http.DefaultClient, "GET", adminURL, e.admin, nil); st != 429 || code != "rate_limited" {
			t.Errorf("the right admin token after %d wrong ones = %d %q, want 429 rate_limited", n, st, code)
		}
		// The bridge secret, on the public listener, the same.
		bridge := httpFrom(t, "127.77.0.1")
		body := map[string]string{"name": name}
		n = limit(bridge, "POST", e.pubURL+"/clinkid/v1/bridge/exists", e.bridge+"x", body)
		if st, code, _ := apiCall(t, bridge, "POST", e.pubURL+"/clinkid/v1/bridge/exists", e.bridge, body); st != 429 || code != "rate_limited" {
			t.Errorf("the right bridge secret after %d wrong ones = %d %q, want 429 rate_limited", n, st, code)
		}
	})

	t.Run("weak password", func(t *testing.T) {
		st, code, _ := apiCall(t, httpFrom(t, ownerAddr), "POST", e.pubURL+"/clinkid/v1/register", "", map[string]string{"name": "weak" + randHex(3), "password": "12345678"})
		if st != 400 || code != "weak_password" {
			t.Errorf("register with 12345678 = %d %q, want 400 weak_password", st, code)
		}
	})
}

// TestAbuseRegistrationClosed: by default nobody registers over HTTPS.
func TestAbuseRegistrationClosed(t *testing.T) {
	t.Parallel()
	// The shipped default: no clinkid.registration key.
	e := startE2E(t, lab.Prosody, e2eOptions{clinkid: func(c *daemon.ClinkIDConfig) { c.Registration = "" }})
	st, code, _ := apiCall(t, httpFrom(t, ownerAddr), "POST", e.pubURL+"/clinkid/v1/register", "", map[string]string{"name": "walkin" + randHex(3), "password": "a fine long password"})
	if st != 403 || code != "registration_closed" {
		t.Errorf("register with the default config = %d %q, want 403 registration_closed", st, code)
	}
}

// TestAbuseHashFlood floods the password checks from many networks while
// the owner, at a network it used before, logs in: the owner gets in.
func TestAbuseHashFlood(t *testing.T) {
	t.Parallel()
	e := startE2E(t, lab.Prosody, e2eOptions{clinkid: func(c *daemon.ClinkIDConfig) {
		// Checks slow enough that a queue forms: one slot, four waiting.
		c.Argon2MemoryKiB, c.Argon2Iterations = 8192, 2
		c.HashConcurrency, c.HashQueue = 1, 4
		c.LoginBurst = 10
	}})
	name, _, password := e.newAccount(t, "flooded")
	owner := httpFrom(t, ownerAddr)
	login := e.pubURL + "/clinkid/v1/login"
	if st, code, _ := apiCall(t, owner, "POST", login, "", map[string]string{"name": name, "password": password}); st != 200 {
		t.Fatalf("owner's first login = %d %q", st, code)
	}
	stop := make(chan struct{})
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		answers = map[string]int{}
		busy    = make(chan struct{}, 1)
	)
	for i := range 40 {
		hc := httpFrom(t, fmt.Sprintf("127.%d.0.1", 100+i))
		wg.Go(func() {
			for n := 0; n < 50; n++ {
				select {
				case <-stop:
					return
				default:
				}
				st, code, _ := apiCall(t, hc, "POST", login, "", map[string]string{"name": fmt.Sprintf("flood%d-%d", i, n), "password": "wrong password"})
				mu.Lock()
				answers[fmt.Sprint(st, " ", code)]++
				mu.Unlock()
				if code == "busy" {
					select {
					case busy <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	select {
	case <-busy:
	case <-time.After(time.Minute):
	}
	st, code, _ := apiCall(t, owner, "POST", login, "", map[string]string{"name": name, "password": password})
	close(stop)
	wg.Wait()
	t.Logf("flood answers: %v", answers)
	if st != 200 {
		t.Errorf("the owner's login during the flood = %d %q, want 200", st, code)
	}
}
