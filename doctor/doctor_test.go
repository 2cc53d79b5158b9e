package doctor_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/doctor"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

func services(c *lab.Coturn) []string {
	return []string{
		"stun:" + c.UDPAddr,
		"turn:" + c.UDPAddr + "?transport=udp",
		"turn:" + c.TCPAddr + "?transport=tcp",
		"turns:" + c.TLSAddr + "?transport=tcp",
	}
}

// deployment runs clinkd on srv with TURN for the shared coturn and a TLS
// public listener, as an operator would, and returns a doctor config for
// a fresh user of it.
func deployment(t *testing.T, srv *lab.XMPPServer, tune func(*daemon.Config)) doctor.Config {
	t.Helper()
	turn := labtest.Coturn(t)
	cert, key, err := labtest.CA(t).Issue(t.TempDir(), "public", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.TURN.Services = services(turn)
		c.TURN.Secret = turn.Secret
		c.Public = daemon.PublicConfig{Listen: "127.0.0.1:0", CertFile: cert, KeyFile: key}
		if tune != nil {
			tune(c)
		}
	})
	user, pass := labtest.NewUser(t, srv)
	return doctor.Config{
		C2S: srv.C2SAddr, User: jid.MustParse(user), Password: pass, Component: d.Component().Domain(),
		PublicURL: d.PublicURL(), RootCAs: labtest.CA(t).Pool, Timeout: 30 * time.Second,
	}
}

func statuses(r doctor.Report) map[string][]doctor.Status {
	m := map[string][]doctor.Status{}
	for _, x := range r {
		m[x.Check] = append(m[x.Check], x.Status)
	}
	return m
}

// TestDoctor runs the doctor against a healthy deployment on each real
// server: every check passes but the key log and ClinkID ones, skipped
// because this deployment does not serve them; the report names no
// secret.
func TestDoctor(t *testing.T) {
	t.Parallel()
	turn := labtest.Coturn(t)
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			cfg := deployment(t, srv, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			r := doctor.Run(ctx, cfg)
			var out bytes.Buffer
			r.WriteTo(&out)
			t.Logf("\n%s", out.String())
			want := map[string][]doctor.Status{
				"c2s TLS": {doctor.OK}, "login": {doctor.OK}, "component": {doctor.OK},
				"key log": {doctor.Skipped}, "ClinkID": {doctor.Skipped}, "XEP-0215": {doctor.OK},
				"STUN": {doctor.OK}, "TURN": {doctor.OK, doctor.OK, doctor.OK}, "TURN peers": {doctor.OK},
			}
			got := statuses(r)
			for check, w := range want {
				if !equal(got[check], w) {
					t.Errorf("%s: %v, want %v", check, got[check], w)
				}
			}
			if r.Failed() {
				t.Error("Failed() = true")
			}
			for _, secret := range []string{cfg.Password, turn.Secret} {
				if strings.Contains(out.String(), secret) {
					t.Errorf("the report shows a secret")
				}
			}
			if !strings.Contains(out.String(), "StartTLS required") || !strings.Contains(out.String(), "verdict: all checks passed (2 skipped") {
				t.Errorf("report:\n%s", out.String())
			}
		})
	}
}

func equal(a, b []doctor.Status) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDoctorFinds proves each check fails on the fault it is for: clinkd
// signing TURN credentials with another secret than coturn's, clinkd not
// serving TURN, a component domain nobody links, a wrong password, a CA
// that does not vouch for the server.
func TestDoctorFinds(t *testing.T) {
	t.Parallel()
	srv := labtest.Servers(t)[0]
	tests := []struct {
		name  string
		tune  func(*daemon.Config)
		mod   func(*doctor.Config)
		check string
		want  doctor.Status
	}{
		{"wrong TURN secret", func(c *daemon.Config) { c.TURN.Secret = "not-coturns-secret-0123" }, nil, "TURN", doctor.Failed},
		{"no TURN", func(c *daemon.Config) { c.TURN.Services = nil }, nil, "XEP-0215", doctor.Failed},
		{"component not linked", nil, func(c *doctor.Config) { c.Component = jid.MustParse("nobody." + srv.Domain) }, "component", doctor.Failed},
		{"wrong password", nil, func(c *doctor.Config) { c.Password += "x" }, "login", doctor.Failed},
		{"unknown CA", nil, func(c *doctor.Config) { c.RootCAs = nil }, "c2s TLS", doctor.Failed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := deployment(t, srv, tt.tune)
			if tt.mod != nil {
				tt.mod(&cfg)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			r := doctor.Run(ctx, cfg)
			var out bytes.Buffer
			r.WriteTo(&out)
			if got := statuses(r)[tt.check]; len(got) == 0 || got[0] != tt.want || !r.Failed() {
				t.Errorf("%s: %s = %v, want %v first\n%s", tt.name, tt.check, got, tt.want, out.String())
			}
			if strings.Contains(out.String(), cfg.Password) && cfg.Password != "" {
				t.Error("the report shows the password")
			}
		})
	}
}

// TestKeyLogAndClinkID checks the verdicts of the two HTTPS checks on
// answers a real clinkd never gives (a checkpoint signed by another key, a
// non-canonical one, a missing endpoint), from a stand-in public listener;
// the real endpoints pass them end to end in cmd/clinklab's
// TestLabCommand. The checkpoint is signed with a real note key.
func TestKeyLogAndClinkID(t *testing.T) {
	t.Parallel()
	skey, vkey, err := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	checkpoint, err := note.Sign(&note.Note{Text: "clink.example.org/keydir\n42\nq1Y3DSaNRdLBwsLbmUMsT7tGVHKh4r6Wwmh+gKs0VN4=\n"}, signer)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	// A size with a leading zero: a signed note, but not a checkpoint
	// (C2SP wants canonical decimal, and auditors refuse it).
	uncanonical, err := note.Sign(&note.Note{Text: "clink.example.org/keydir\n042\nq1Y3DSaNRdLBwsLbmUMsT7tGVHKh4r6Wwmh+gKs0VN4=\n"}, signer)
	if err != nil {
		t.Fatal(err)
	}

	serve := func(checkpoint []byte, clinkid bool) *httptest.Server {
		mux := http.NewServeMux()
		if checkpoint != nil {
			mux.HandleFunc("GET "+doctor.KeyLogCheckpointPath, func(w http.ResponseWriter, r *http.Request) { w.Write(checkpoint) })
		}
		if clinkid {
			mux.HandleFunc(doctor.ClinkIDProbePath, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				w.Write([]byte(`{"error":{"code":"unauthenticated","message":"no token"}}`))
			})
		}
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"code":"not_found","message":"no such endpoint"}}`))
		})
		s := httptest.NewUnstartedServer(mux)
		s.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		s.StartTLS()
		t.Cleanup(s.Close)
		return s
	}
	tests := []struct {
		name                string
		checkpoint          []byte
		key                 string
		clinkid             bool
		wantLog, wantClinkD doctor.Status
	}{
		{"served and verified", checkpoint, vkey, true, doctor.OK, doctor.OK},
		{"not served", nil, vkey, false, doctor.Skipped, doctor.Skipped},
		{"no key given", checkpoint, "", true, doctor.Warning, doctor.OK},
		{"another key", checkpoint, otherKey, true, doctor.Failed, doctor.OK},
		{"tampered", bytes.Replace(checkpoint, []byte("\n42\n"), []byte("\n43\n"), 1), vkey, true, doctor.Failed, doctor.OK},
		{"not a checkpoint", []byte("<html>hello</html>"), vkey, true, doctor.Failed, doctor.OK},
		{"size not canonical", uncanonical, "", true, doctor.Failed, doctor.OK},
	}
	for _, tt := range tests {
		s := serve(tt.checkpoint, tt.clinkid)
		// No XMPP server at all: those checks fail fast, these two run.
		r := doctor.Run(context.Background(), doctor.Config{
			C2S: "127.0.0.1:1", User: jid.MustParse("a@example.org"), Component: jid.MustParse("c.example.org"),
			PublicURL: s.URL, RootCAs: poolOf(s), KeyLogKey: tt.key, Timeout: 10 * time.Second,
		})
		got := statuses(r)
		if !equal(got["key log"], []doctor.Status{tt.wantLog}) || !equal(got["ClinkID"], []doctor.Status{tt.wantClinkD}) {
			var out bytes.Buffer
			r.WriteTo(&out)
			t.Errorf("%s: key log %v, ClinkID %v; want %v, %v\n%s", tt.name, got["key log"], got["ClinkID"], tt.wantLog, tt.wantClinkD, out.String())
		}
	}
}

// TestWitnessCheck: the doctor's verdict on the key log's cosignatures
// against a witness policy, on checkpoints that litewitness cosigned
// (keylog/testdata/cosignature_vectors.json) served by a stand-in
// listener; clinklab's TestLabCommand passes it end to end with two real
// witnesses.
func TestWitnessCheck(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../keylog/testdata/cosignature_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vec struct {
		LogVKey   string   `json:"log_vkey"`
		Witnesses []string `json:"witnesses"`
		Cases     []struct {
			Checkpoint string `json:"checkpoint"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &vec); err != nil {
		t.Fatal(err)
	}
	cosigned := vec.Cases[1].Checkpoint
	bare := cosigned[:strings.Index(cosigned, "\n— w1")+1]
	for _, tt := range []struct {
		name       string
		checkpoint string
		threshold  int
		want       []doctor.Status
	}{
		{"both cosigned, both required", cosigned, 2, []doctor.Status{doctor.OK}},
		{"none, one required", bare, 1, []doctor.Status{doctor.Failed}},
		{"no policy", bare, -1, nil},
	} {
		mux := http.NewServeMux()
		mux.HandleFunc("GET "+doctor.KeyLogCheckpointPath, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(tt.checkpoint)) })
		s := httptest.NewTLSServer(mux)
		defer s.Close()
		cfg := doctor.Config{
			C2S: "127.0.0.1:1", User: jid.MustParse("a@example.org"), Component: jid.MustParse("c.example.org"),
			PublicURL: s.URL, RootCAs: poolOf(s), KeyLogKey: vec.LogVKey, Timeout: 10 * time.Second,
		}
		if tt.threshold >= 0 {
			if cfg.Witnesses, err = keylog.NewWitnessPolicy(vec.Witnesses, tt.threshold); err != nil {
				t.Fatal(err)
			}
		}
		r := doctor.Run(context.Background(), cfg)
		if got := statuses(r)["witnesses"]; !equal(got, tt.want) {
			var out bytes.Buffer
			r.WriteTo(&out)
			t.Errorf("%s: witnesses %v, want %v\n%s", tt.name, got, tt.want, out.String())
		}
	}
}

func poolOf(s *httptest.Server) *x509.CertPool {
	return s.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
}
