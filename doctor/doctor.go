// Package doctor checks a ClinkMe deployment end to end, from outside, the
// way a device and an auditor see it: the XMPP server's TLS and
// certificate, clinkd linked as a component, the key transparency log's
// checkpoint, the ClinkID HTTPS API, and calls' STUN and TURN with fresh
// credentials from clinkd's XEP-0215 answer. `clinkd doctor` prints its
// report.
//
// A check that the deployment does not serve (no public URL, keydir or
// ClinkID not configured) is skipped, not failed. No check prints a
// secret: not the account's password, not a TURN credential.
package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/labfile"
	"github.com/clinkme/clinkd/extensions/extdisco"
	"github.com/clinkme/clinkd/internal/turnprobe"
	"github.com/clinkme/clinkd/keylog"
)

// Paths on clinkd's public listener.
const (
	KeyLogCheckpointPath = "/keydir/log/checkpoint" // C2SP tlog-tiles checkpoint of the key log
	ClinkIDProbePath     = "/clinkid/v1/account"    // answers 401 without a token
)

// Config says what to check.
type Config struct {
	C2S       string  // the XMPP server's client port, host:port
	User      jid.JID // an account of the server's domain, to log in as
	Password  string  // its password; never printed
	Component jid.JID // clinkd's component domain
	// PublicURL is clinkd's public listener (https://host:port); empty
	// skips the key log and ClinkID checks.
	PublicURL string
	// RootCAs verifies every TLS certificate (nil: the system's roots).
	RootCAs *x509.CertPool
	// KeyLogKey is the key log's verifier key (a note vkey, as `clinkd
	// keys genkey` prints it); empty checks the checkpoint's form only.
	KeyLogKey string
	// Witnesses is the witness policy devices are given: the key log's
	// checkpoint must carry that many valid cosignatures (zero: not
	// checked).
	Witnesses keylog.WitnessPolicy
	// Timeout bounds each check (default 20s).
	Timeout time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// FromLab returns the Config that checks a lab deployment (lab.json) as
// its first demo account.
func FromLab(info labfile.Info) (Config, error) {
	if len(info.Users) == 0 {
		return Config{}, errors.New("doctor: lab.json names no user")
	}
	u, err := jid.Parse(info.Users[0].JID)
	if err != nil {
		return Config{}, fmt.Errorf("doctor: lab.json user: %w", err)
	}
	comp, err := jid.Parse(info.Component)
	if err != nil {
		return Config{}, fmt.Errorf("doctor: lab.json component: %w", err)
	}
	roots, err := client.LoadCertPool(info.CAFile)
	if err != nil {
		return Config{}, fmt.Errorf("doctor: %w", err)
	}
	witnesses, err := keylog.NewWitnessPolicy(info.Witnesses, info.WitnessThreshold)
	if err != nil {
		return Config{}, fmt.Errorf("doctor: lab.json: %w", err)
	}
	return Config{
		C2S: info.C2S, User: u, Password: info.Users[0].Password, Component: comp,
		PublicURL: info.PublicURL, RootCAs: roots, KeyLogKey: info.VerifierKey, Witnesses: witnesses,
	}, nil
}

// Status is a check's outcome.
type Status int

// Outcomes, from best to worst.
const (
	OK Status = iota
	Skipped
	Warning
	Failed
)

func (s Status) String() string {
	return [...]string{"ok", "skip", "warn", "FAIL"}[s]
}

// Result is one line of the report.
type Result struct {
	Check  string
	Status Status
	Detail string
	// blocked: skipped because a check it needs did not pass, not
	// because the deployment does not serve it.
	blocked bool
}

// Report is the outcome of every check, in order.
type Report []Result

// Failed reports whether any check failed.
func (r Report) Failed() bool {
	return slices.ContainsFunc(r, func(x Result) bool { return x.Status == Failed })
}

// WriteTo writes the report for people.
func (r Report) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	counts := map[Status]int{}
	for _, x := range r {
		counts[x.Status]++
		fmt.Fprintf(&b, "  %-4s  %-12s %s\n", x.Status, x.Check, x.Detail)
	}
	switch {
	case counts[Failed] > 0:
		fmt.Fprintf(&b, "verdict: %d of %d checks failed", counts[Failed], len(r))
	case counts[Warning] > 0:
		fmt.Fprintf(&b, "verdict: working, with %d warnings", counts[Warning])
	default:
		b.WriteString("verdict: all checks passed")
	}
	blocked := 0
	for _, x := range r {
		if x.Status == Skipped && x.blocked {
			blocked++
		}
	}
	if n := counts[Skipped] - blocked; n > 0 {
		fmt.Fprintf(&b, " (%d skipped: not served by this deployment)", n)
	}
	if blocked > 0 {
		fmt.Fprintf(&b, " (%d not run: they need a check that did not pass)", blocked)
	}
	b.WriteString("\n")
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

type doctor struct {
	cfg    Config
	report Report
}

func (d *doctor) add(check string, s Status, format string, args ...any) {
	d.report = append(d.report, Result{Check: check, Status: s, Detail: fmt.Sprintf(format, args...)})
}

// blocked records a check skipped because one it needs did not pass.
func (d *doctor) blocked(check, why string) {
	d.report = append(d.report, Result{Check: check, Status: Skipped, Detail: why, blocked: true})
}

// Run runs every check and returns the report. It never returns early: a
// check that depends on a failed one says so.
func Run(ctx context.Context, cfg Config) Report {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 20 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &doctor{cfg: cfg}
	dev := d.login(ctx)
	if dev != nil {
		defer dev.Close()
	}
	d.component(ctx, dev)
	d.keyLog(ctx)
	d.clinkID(ctx)
	svcs := d.externalServices(ctx, dev)
	d.stun(ctx, svcs)
	d.turn(ctx, svcs)
	return d.report
}

func (d *doctor) tlsConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: d.cfg.RootCAs, ServerName: serverName, MinVersion: tls.VersionTLS12}
}

// login checks the c2s TLS and certificate on a connection of its own,
// then logs in.
func (d *doctor) login(ctx context.Context) *client.Client {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	domain := d.cfg.User.Domainpart()
	st, required, err := startTLS(ctx, d.cfg.C2S, domain, d.tlsConfig(domain))
	if err != nil {
		d.add("c2s TLS", Failed, "%s: %v", d.cfg.C2S, err)
		d.blocked("login", "needs TLS first")
		return nil
	}
	s, detail := d.certificate(st, domain)
	if !required {
		s = max(s, Warning)
		detail += "; StartTLS is offered but NOT required"
	} else {
		detail += "; StartTLS required"
	}
	d.add("c2s TLS", s, "%s: %s (%s); %s", d.cfg.C2S, tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), detail)
	dev, err := client.Dial(ctx, client.Config{
		Addr: d.cfg.C2S, JID: d.cfg.User, Password: d.cfg.Password, TLS: d.tlsConfig(domain), Timeout: d.cfg.Timeout,
	})
	if err != nil {
		d.add("login", Failed, "as %s: %s", d.cfg.User.Bare(), redact(err, d.cfg.Password))
		return nil
	}
	d.add("login", OK, "as %s (SASL inside TLS)", dev.JID().Bare())
	return dev
}

// startTLS opens a client stream to domain at addr, upgrades it with
// StartTLS (RFC 6120 §5) and returns the TLS state, and whether the
// server marked StartTLS required.
func startTLS(ctx context.Context, addr, domain string, cfg *tls.Config) (tls.ConnectionState, bool, error) {
	var none tls.ConnectionState
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "tcp", addr)
	if err != nil {
		return none, false, err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	var to strings.Builder
	xml.EscapeText(&to, []byte(domain))
	if _, err := fmt.Fprintf(conn, "<?xml version='1.0'?><stream:stream to='%s' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", to.String()); err != nil {
		return none, false, err
	}
	dec := xml.NewDecoder(conn)
	offered, required := false, false
	// Read the stream features.
features:
	for {
		tok, err := dec.Token()
		if err != nil {
			return none, false, fmt.Errorf("reading stream features: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Local == "starttls" {
				offered = true
			}
			if t.Name.Local == "required" && offered {
				required = true
			}
			if t.Name.Local == "error" && t.Name.Space == "http://etherx.jabber.org/streams" {
				return none, false, errors.New("the server answered with a stream error")
			}
		case xml.EndElement:
			if t.Name.Local == "features" {
				break features
			}
		}
	}
	if !offered {
		return none, false, errors.New("the server does not offer StartTLS")
	}
	if _, err := io.WriteString(conn, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"); err != nil {
		return none, false, err
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return none, false, fmt.Errorf("waiting for <proceed/>: %w", err)
		}
		if t, ok := tok.(xml.StartElement); ok {
			if t.Name.Local != "proceed" {
				return none, false, fmt.Errorf("StartTLS answered with <%s/>", t.Name.Local)
			}
			break
		}
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return none, false, fmt.Errorf("TLS: %w", err)
	}
	st := tc.ConnectionState()
	tc.Close()
	return st, required, nil
}

// certificate describes the peer's certificate and whether it expires
// soon. The TLS handshake has verified it already.
func (d *doctor) certificate(st tls.ConnectionState, name string) (Status, string) {
	if st.Version < tls.VersionTLS12 {
		return Failed, "TLS older than 1.2"
	}
	if len(st.PeerCertificates) == 0 {
		return Failed, "no certificate"
	}
	c := st.PeerCertificates[0]
	left := c.NotAfter.Sub(d.cfg.Now())
	days := int(left.Hours() / 24)
	desc := fmt.Sprintf("certificate for %s verified, issued by %q, valid until %s (%d days)",
		name, c.Issuer.CommonName, c.NotAfter.UTC().Format("2006-01-02"), days)
	if left < 14*24*time.Hour {
		return Warning, desc + ": renew it"
	}
	return OK, desc
}

// component checks that clinkd answers disco#info and ping through the
// server: it is linked.
func (d *doctor) component(ctx context.Context, dev *client.Client) {
	if dev == nil {
		d.blocked("component", "needs a login")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	info, err := dev.DiscoInfo(ctx, d.cfg.Component)
	if err != nil {
		d.add("component", Failed, "%s does not answer disco#info (%v): is clinkd linked to the server?", d.cfg.Component, err)
		return
	}
	name := ""
	for _, id := range info.Identity {
		if id.Category == "component" {
			name = id.Name
		}
	}
	var feats []string
	for _, f := range info.Features {
		feats = append(feats, f.Var)
	}
	t0 := time.Now()
	if err := dev.Ping(ctx, d.cfg.Component); err != nil {
		d.add("component", Failed, "%s answers disco but not ping: %v", d.cfg.Component, err)
		return
	}
	rtt := time.Since(t0)
	if name != "clinkd" {
		d.add("component", Warning, "%s answers, but as %q, not clinkd", d.cfg.Component, name)
		return
	}
	d.add("component", OK, "%s is clinkd, linked (ping %v); features: %s", d.cfg.Component, rtt.Round(100*time.Microsecond), strings.Join(feats, " "))
}

// httpGet fetches a URL of the public listener and says how TLS went.
func (d *doctor) httpGet(ctx context.Context, u string) (*http.Response, []byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	pu, err := url.Parse(u)
	if err != nil {
		return nil, nil, "", err
	}
	tr := &http.Transport{TLSClientConfig: d.tlsConfig(pu.Hostname()), Proxy: nil}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, "", err
	}
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, nil, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	transport := "plain HTTP"
	if res.TLS != nil {
		transport = tls.VersionName(res.TLS.Version)
	}
	return res, body, transport, err
}

// keyLog checks the key transparency log's checkpoint: served over TLS,
// in the C2SP checkpoint form, signed by the expected key.
func (d *doctor) keyLog(ctx context.Context) {
	const check = "key log"
	if d.cfg.PublicURL == "" {
		d.add(check, Skipped, "no public URL given")
		return
	}
	u := strings.TrimSuffix(d.cfg.PublicURL, "/") + KeyLogCheckpointPath
	res, body, transport, err := d.httpGet(ctx, u)
	if err != nil {
		d.add(check, Failed, "%s: %v", u, err)
		return
	}
	if res.StatusCode == http.StatusNotFound {
		d.add(check, Skipped, "%s: 404, the key directory is not configured", u)
		return
	}
	if res.StatusCode != http.StatusOK {
		d.add(check, Failed, "%s: %s", u, res.Status)
		return
	}
	origin, size, err := parseCheckpoint(body)
	if err != nil {
		d.add(check, Failed, "%s: not a checkpoint: %v", u, err)
		return
	}
	status := OK
	if res.TLS == nil {
		status = Warning
	}
	if d.cfg.KeyLogKey == "" {
		d.add(check, Warning, "%s over %s: checkpoint of %q at %d entries, signature NOT checked (give the log's verifier key)", u, transport, origin, size)
		return
	}
	v, err := note.NewVerifier(d.cfg.KeyLogKey)
	if err != nil {
		d.add(check, Failed, "the verifier key given is not a note verifier key: %v", err)
		return
	}
	if _, err := note.Open(body, note.VerifierList(v)); err != nil {
		d.add(check, Failed, "%s: the checkpoint does not verify with key %q: %v", u, v.Name(), err)
		return
	}
	if origin != v.Name() {
		status = Warning
	}
	d.add(check, status, "%s over %s: checkpoint of %q at %d entries verifies with key %q", u, transport, origin, size, v.Name())
	d.cosignatures(body, v)
}

// cosignatures checks the key log's checkpoint against the witness
// policy devices are given: fewer valid cosignatures than its threshold
// and those devices refuse every answer.
func (d *doctor) cosignatures(body []byte, v note.Verifier) {
	const check = "witnesses"
	p := d.cfg.Witnesses
	if len(p.Witnesses) == 0 {
		return // no policy given: nothing devices would refuse
	}
	n, err := note.Open(body, note.VerifierList(v))
	if err != nil {
		d.add(check, Failed, "%v", err)
		return
	}
	var names []string
	for _, w := range p.Cosigners(n.Text, n.UnverifiedSigs) {
		names = append(names, w.Name())
	}
	if _, _, err := p.Check(body, v); err != nil {
		d.add(check, Failed, "%v; cosigned by [%s] of %d witnesses: devices that require %d refuse every answer (is a witness down, or does it not know this log? docs/keydir.md, \"Witnesses\")",
			err, strings.Join(names, ", "), len(p.Witnesses), p.Threshold)
		return
	}
	d.add(check, OK, "the checkpoint carries valid cosignatures of %s (%d required)", strings.Join(names, ", "), p.Threshold)
}

// parseCheckpoint reads the body of a signed C2SP checkpoint (origin,
// tree size, base64 root hash) without checking the signature, with the
// parser auditors use (keylog.ParseCheckpoint).
func parseCheckpoint(b []byte) (origin string, size int64, err error) {
	// A signed note's text ends at the blank line before its signatures.
	text, _, ok := strings.Cut(string(b), "\n\n")
	if !ok {
		return "", 0, errors.New("no signature block")
	}
	cp, err := keylog.ParseCheckpoint([]byte(text + "\n"))
	if err != nil {
		return "", 0, err
	}
	return cp.Origin, cp.Size, nil
}

// clinkID checks that the ClinkID API answers over TLS: without a token,
// a protected route must say 401 in the API's JSON error form.
func (d *doctor) clinkID(ctx context.Context) {
	const check = "ClinkID"
	if d.cfg.PublicURL == "" {
		d.add(check, Skipped, "no public URL given")
		return
	}
	u := strings.TrimSuffix(d.cfg.PublicURL, "/") + ClinkIDProbePath
	res, body, transport, err := d.httpGet(ctx, u)
	if err != nil {
		d.add(check, Failed, "%s: %v", u, err)
		return
	}
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	jsonErr := json.Unmarshal(body, &e) == nil && e.Error.Code != ""
	switch {
	case res.StatusCode == http.StatusNotFound && (!jsonErr || e.Error.Code == "not_found"):
		d.add(check, Skipped, "%s: 404, ClinkID accounts are not configured", u)
	case res.StatusCode == http.StatusUnauthorized && jsonErr:
		status := OK
		if res.TLS == nil {
			status = Warning
		}
		d.add(check, status, "%s over %s answers 401 %q without a token, as it should", u, transport, e.Error.Code)
	default:
		d.add(check, Failed, "%s: %s, want 401 with a JSON error without a token", u, res.Status)
	}
}

// externalServices asks clinkd for STUN and TURN servers (XEP-0215) and
// checks the credentials' form.
func (d *doctor) externalServices(ctx context.Context, dev *client.Client) []extdisco.Service {
	const check = "XEP-0215"
	if dev == nil {
		d.blocked(check, "needs a login")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	svcs, err := dev.ExternalServices(ctx, d.cfg.Component)
	switch {
	case errors.Is(err, stanza.Error{Condition: stanza.ServiceUnavailable}) || errors.Is(err, stanza.Error{Condition: stanza.FeatureNotImplemented}):
		d.add(check, Failed, "%s does not hand out STUN and TURN servers: set turn.services and turn.secret", d.cfg.Component)
		return nil
	case errors.Is(err, stanza.Error{Condition: stanza.Forbidden}):
		d.add(check, Failed, "%s refuses %s: is link.server_domain the users' domain?", d.cfg.Component, dev.JID().Bare())
		return nil
	case err != nil:
		d.add(check, Failed, "%s: %v", d.cfg.Component, err)
		return nil
	}
	var kinds []string
	var soonest time.Time
	bare := dev.JID().Bare().String()
	for _, s := range svcs {
		kinds = append(kinds, s.Type+"/"+s.Transport)
		if s.Type == "stun" {
			continue
		}
		exp, user, ok := strings.Cut(s.Username, ":")
		n, perr := strconv.ParseInt(exp, 10, 64)
		if !ok || perr != nil || user != bare || s.Password == "" || s.Expires == nil || s.Expires.Unix() != n {
			d.add(check, Failed, "the %s credentials are not TURN REST credentials for %s (EXPIRY:bare-jid with its expiry)", s.Type, bare)
			return svcs
		}
		if soonest.IsZero() || s.Expires.Before(soonest) {
			soonest = *s.Expires
		}
	}
	if len(svcs) == 0 {
		d.add(check, Failed, "%s announces no service", d.cfg.Component)
		return nil
	}
	detail := fmt.Sprintf("%d services (%s)", len(svcs), strings.Join(kinds, ", "))
	if !soonest.IsZero() {
		detail += fmt.Sprintf("; fresh TURN credentials for %s, valid for %v", bare, soonest.Sub(d.cfg.Now()).Round(time.Second))
	}
	d.add(check, OK, "%s", detail)
	return svcs
}

// stun sends a Binding to each STUN service.
func (d *doctor) stun(ctx context.Context, svcs []extdisco.Service) {
	n := 0
	for _, s := range svcs {
		if s.Type != "stun" {
			continue
		}
		n++
		addr := net.JoinHostPort(s.Host, strconv.Itoa(port(s)))
		cctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		mapped, err := turnprobe.Binding(cctx, addr)
		cancel()
		if err != nil {
			d.add("STUN", Failed, "stun:%s: %v", addr, err)
			continue
		}
		d.add("STUN", OK, "stun:%s answers a Binding; this host is %s to it", addr, mapped)
	}
	if n == 0 && svcs != nil {
		d.add("STUN", Warning, "no STUN service announced: devices cannot learn their public address")
	}
}

// turn allocates a relay on each TURN service with the fresh credentials,
// then checks with the first allocation that the relay refuses a private
// peer.
func (d *doctor) turn(ctx context.Context, svcs []extdisco.Service) {
	n := 0
	var first *turnprobe.Allocation
	for _, s := range svcs {
		if s.Type != "turn" && s.Type != "turns" {
			continue
		}
		n++
		addr := net.JoinHostPort(s.Host, strconv.Itoa(port(s)))
		transport := s.Transport
		if transport == "" {
			transport = "udp"
			if s.Type == "turns" {
				transport = "tcp"
			}
		}
		via := transport
		if s.Type == "turns" {
			via = "tls"
		}
		uri := fmt.Sprintf("%s:%s?transport=%s", s.Type, addr, transport)
		cctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
		a, err := turnprobe.Allocate(cctx, via, addr, d.tlsConfig(s.Host), s.Username, s.Password)
		cancel()
		if err != nil {
			d.add("TURN", Failed, "%s: no allocation with the XEP-0215 credentials: %v", uri, redact(err, s.Password))
			continue
		}
		d.add("TURN", OK, "%s: allocation with the XEP-0215 credentials, relayed address %s", uri, a.RelayedAddr())
		if first == nil {
			first = a
		} else {
			a.Close()
		}
	}
	if n == 0 && svcs != nil {
		d.add("TURN", Failed, "no TURN service announced: calls between devices behind NAT will fail")
	}
	if first != nil {
		defer first.Close()
		private := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 9}
		if err := first.Permit(private); err == nil {
			d.add("TURN peers", Warning, "the relay accepts %s as a peer: deny private ranges (denied-peer-ip, docs/calls.md)", private.IP)
		} else {
			d.add("TURN peers", OK, "the relay refuses private peers (%s)", private.IP)
		}
	}
}

func port(s extdisco.Service) int {
	if s.Port != 0 {
		return s.Port
	}
	if s.Type == "turns" {
		return 5349
	}
	return 3478
}

// redact removes a secret from an error message, should a library quote
// it.
func redact(err error, secret string) string {
	msg := err.Error()
	if secret != "" {
		msg = strings.ReplaceAll(msg, secret, "[redacted]")
	}
	return msg
}
