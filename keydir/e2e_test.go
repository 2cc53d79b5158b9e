package keydir_test

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/disco/info"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// deployment is clinkd with the key directory on, linked to a real
// server, with a database of its own and the log on a loopback listener.
type deployment struct {
	d       *daemon.Daemon
	stop    func()
	srv     *lab.XMPPServer
	vkey    string
	vrfKey  string
	keyFile string
	vrfFile string
	dbURL   string
	logURL  string
	tune    func(*daemon.Config)
	// register, if set, adds handlers to the component before it runs.
	register func(*daemon.Daemon)
	// stateFile, if set, is the signer's state file (default: beside
	// the key); witnesses, if set, cosign every checkpoint, threshold of
	// them required (witness_test.go).
	stateFile string
	witnesses []*lab.Witness
	threshold int
	// link, when set, is the component link a restart keeps (devices
	// made before it go on talking to the same domain); else every start
	// leases a new one.
	link     *daemon.LinkConfig
	lastLink daemon.LinkConfig // the link of the last start
}

const origin = "clink.lab.localhost/keydir"

func startDeployment(t testing.TB, srv *lab.XMPPServer, tune func(*daemon.Config)) *deployment {
	t.Helper()
	return startDeploymentWith(t, srv, tune, nil)
}

func startDeploymentWith(t testing.TB, srv *lab.XMPPServer, tune func(*daemon.Config), register func(*daemon.Daemon)) *deployment {
	t.Helper()
	dir := t.TempDir()
	keyFile, vrfFile := filepath.Join(dir, "keydir.signer"), filepath.Join(dir, "keydir.vrf")
	vkey, err := keylog.GenerateKey(origin, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	vrfKey, err := keylog.GenerateVRFKey(origin, vrfFile)
	if err != nil {
		t.Fatal(err)
	}
	dep := &deployment{srv: srv, vkey: vkey, vrfKey: vrfKey, keyFile: keyFile, vrfFile: vrfFile, dbURL: labtest.NewDatabase(t), tune: tune, register: register}
	dep.start(t)
	return dep
}

// newDeployment is startDeployment without the start.
func newDeployment(t testing.TB, srv *lab.XMPPServer) *deployment {
	t.Helper()
	dir := t.TempDir()
	keyFile, vrfFile := filepath.Join(dir, "keydir.signer"), filepath.Join(dir, "keydir.vrf")
	vkey, err := keylog.GenerateKey(origin, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	vrfKey, err := keylog.GenerateVRFKey(origin, vrfFile)
	if err != nil {
		t.Fatal(err)
	}
	return &deployment{srv: srv, vkey: vkey, vrfKey: vrfKey, keyFile: keyFile, vrfFile: vrfFile, dbURL: labtest.NewDatabase(t)}
}

// start runs clinkd over the deployment's database and keys: again after
// stop, it is a restart.
func (dep *deployment) start(t testing.TB) {
	t.Helper()
	cfg := dep.config(t)
	if dep.register == nil {
		dep.d, dep.stop = clinkdtest.Run(t, cfg, clinkdtest.Logger(t))
	} else {
		dep.d, dep.stop = runWith(t, cfg, dep.register)
	}
	dep.logURL = dep.d.PublicURL() + daemon.KeyDirLogPrefix
}

// config is the configuration start runs clinkd with: a new component
// link unless dep.link is set, the deployment's database and keys, its
// witnesses, then dep.tune.
func (dep *deployment) config(t testing.TB) daemon.Config {
	t.Helper()
	cfg := clinkdtest.Config(t, dep.srv)
	if dep.link != nil {
		cfg.Link = *dep.link
	}
	cfg.Database.URL = dep.dbURL
	cfg.Database.Migrate = true
	cfg.Public.Listen = "127.0.0.1:0"
	cfg.KeyDir.SignerKeyFile = dep.keyFile
	cfg.KeyDir.VRFKeyFile = dep.vrfFile
	cfg.KeyDir.Origin = origin
	cfg.KeyDir.SignerStateFile = dep.stateFile
	for _, w := range dep.witnesses {
		cfg.KeyDir.Witness.URLs = append(cfg.KeyDir.Witness.URLs, w.URL)
		cfg.KeyDir.Witness.Keys = append(cfg.KeyDir.Witness.Keys, w.VerifierKey)
	}
	cfg.KeyDir.Witness.Threshold = dep.threshold
	if dep.tune != nil {
		dep.tune(&cfg)
	}
	dep.lastLink = cfg.Link
	return cfg
}

// runWith is clinkdtest.Run with register called between New and Run:
// a benchmark's extra handler on the same component.
func runWith(t testing.TB, cfg daemon.Config, register func(*daemon.Daemon)) (*daemon.Daemon, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, clinkdtest.Logger(t))
	if err != nil {
		cancel()
		t.Fatalf("clinkd: %v", err)
	}
	register(d)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := d.Component().WaitState(wctx, component.Linked); err != nil {
		t.Fatalf("clinkd did not link: %v", err)
	}
	return d, stop
}

// device logs a new user in and gives it a v1 directory client with pins
// of its own.
func (dep *deployment) device(t testing.TB) (*client.Client, *client.KeyDirectory) {
	t.Helper()
	c := clinkdtest.NewDevice(t, dep.srv)
	return c, dep.directory(t, c, &client.MemoryPins{}, nil)
}

func (dep *deployment) directory(t testing.TB, c *client.Client, pins client.PinStore, now func() time.Time) *client.KeyDirectory {
	t.Helper()
	kd, err := c.OpenKeyDirectory(client.KeyDirConfig{Service: dep.d.Component().Domain(), Verifier: dep.vkey, VRFKey: dep.vrfKey, Pins: pins, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return kd
}

func (dep *deployment) db(ctx context.Context, t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dep.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (dep *deployment) exec(ctx context.Context, t testing.TB, sql string, args ...any) {
	t.Helper()
	tag, err := dep.db(ctx, t).Exec(ctx, sql, args...)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("%s: %v, %d rows; want 1 row", sql, err, tag.RowsAffected())
	}
}

// readyz returns clinkd's /readyz status and body.
func (dep *deployment) readyz(t testing.TB) (int, map[string]string) {
	t.Helper()
	resp, err := http.Get("http://" + dep.d.AdminAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var checks map[string]string
	json.NewDecoder(resp.Body).Decode(&checks)
	return resp.StatusCode, checks
}

func rsaKey(t testing.TB, bits int) *rsa.PublicKey {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(keydirtest.FakeRSAKey(t, bits))
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*rsa.PublicKey)
}

func fingerprint(k *rsa.PublicKey) [32]byte {
	der, _ := x509.MarshalPKIXPublicKey(k)
	return sha256.Sum256(der)
}

func condition(err error) stanza.Condition {
	var se stanza.Error
	if errors.As(err, &se) {
		return se.Condition
	}
	return ""
}

// TestDirectory is the story on each real server with real
// PostgreSQL: two users publish and look each other up, every answer
// verified on the device (client.KeyDirectory: the VRF, the map proof
// against the head's map root, the entry's inclusion, the key); a JID
// without a key is proven absent; a second key gets conflict; an
// operator reset shows in the owner's history, complete by proof, is
// reported to the contact as a key change and is flagged by the audit,
// which also recomputes the map and checks consistency with the
// checkpoint it kept; a row changed in PostgreSQL is caught by the audit,
// and a changed hash makes the server refuse to answer rather than hand
// out a proof that fails.
func TestDirectory(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) { cfg.KeyDir.PublishBurst = 10 })
			alice, aliceKD := dep.device(t)
			bob, bobKD := dep.device(t)
			aliceJID, bobJID := alice.JID().Bare().String(), bob.JID().Bare().String()
			kA, kB, kA2 := rsaKey(t, 3072), rsaKey(t, 4096), rsaKey(t, 3072)

			di, err := alice.DiscoInfo(ctx, dep.d.Component().Domain())
			for _, ns := range []string{keydirxml.NS, keydirxml.NS1} {
				if err != nil || !slices.ContainsFunc(di.Features, func(f info.Feature) bool { return f.Var == ns }) {
					t.Errorf("disco#info = %+v, %v; want feature %s", di.Features, err, ns)
				}
			}
			pa, err := aliceKD.PublishKey(ctx, kA)
			if err != nil {
				t.Fatalf("alice PublishKey = %v", err)
			}
			if _, err := bobKD.PublishKey(ctx, kB); err != nil {
				t.Fatalf("bob PublishKey = %v", err)
			}
			res, err := aliceKD.LookupKeys(ctx, bobJID, "nobody@"+srv.Domain)
			if err != nil {
				t.Fatalf("alice LookupKeys = %v", err)
			}
			if len(res) != 2 || res[0].Key == nil || res[0].Key.Fingerprint != fingerprint(kB) || res[0].Key.Key.N.Cmp(kB.N) != 0 || res[0].Version != 1 || res[1].Key != nil || res[1].Version != 0 {
				t.Fatalf("alice LookupKeys(bob, nobody) = %+v; want bob's key (version 1) and a proven absence", res)
			}
			res, err = bobKD.LookupKeys(ctx, strings.ToUpper(aliceJID))
			if err != nil || len(res) != 1 || res[0].JID != aliceJID || res[0].Key.Fingerprint != fingerprint(kA) {
				t.Fatalf("bob LookupKeys(ALICE) = %+v, %v; want alice's key", res, err)
			}
			// Independently of the SDK: the server's proofs, checked with
			// keylog's map verifier and tlog.CheckRecord.
			checkRawLookup(ctx, t, alice, dep, bobJID)

			again, err := aliceKD.PublishKey(ctx, kA)
			if err != nil || again.Index != pa.Index || !again.Time.Equal(pa.Time) {
				t.Errorf("alice PublishKey(same key) = %+v, %v; want the first binding (index %d)", again, err, pa.Index)
			}
			if _, err := aliceKD.PublishKey(ctx, kA2); condition(err) != stanza.Conflict {
				t.Fatalf("alice PublishKey(second key) = %v, want conflict", err)
			}

			state := filepath.Join(t.TempDir(), "audit.checkpoint")
			v, _ := keylog.ParseVerifier(dep.vkey)
			runAudit := func() (*audit.Report, error) {
				return audit.Run(ctx, audit.Config{URL: dep.logURL, Verifier: v, StateFile: state})
			}
			if rep, err := runAudit(); err != nil || rep.Checkpoint.Size != 3 || len(rep.Findings) != 0 || !rep.Migrated {
				t.Fatalf("Audit = %+v, %v; want genesis and 2 entries, no findings", rep, err)
			}

			// The operator resets alice.
			if _, err := dep.d.KeyDir().Store().End(ctx, aliceJID, keylog.KindReset, "lost her phone", time.Now()); err != nil {
				t.Fatalf("End(reset) = %v", err)
			}
			hist, err := aliceKD.History(ctx)
			if err != nil || len(hist) != 2 || hist[0].Kind != "publish" || hist[1].Kind != "reset" || hist[1].Fingerprint != fingerprint(kA) || hist[1].Version != 2 {
				t.Fatalf("alice History = %+v, %v; want publish then reset of her key, versions 1 and 2", hist, err)
			}
			var kc *client.KeyChangeError
			res, err = bobKD.LookupKeys(ctx, aliceJID)
			if !errors.As(err, &kc) || len(kc.Changes) != 1 || kc.Changes[0].New != nil || res[0].Key != nil || !res[0].Ended || res[0].Version != 2 {
				t.Fatalf("bob LookupKeys(alice after reset) = %+v, %v; want a proven end (version 2) and a KeyChangeError", res, err)
			}
			if _, err := aliceKD.PublishKey(ctx, kA2); err != nil {
				t.Fatalf("alice PublishKey(after reset) = %v", err)
			}
			res, err = bobKD.LookupKeys(ctx, aliceJID)
			if !errors.As(err, &kc) || kc.Changes[0].New == nil || *kc.Changes[0].New != fingerprint(kA2) || res[0].Key.Fingerprint != fingerprint(kA2) || res[0].Version != 3 {
				t.Fatalf("bob LookupKeys(alice republished) = %+v, %v; want her new key at version 3 and a KeyChangeError", res, err)
			}
			if _, err := bobKD.LookupKeys(ctx, aliceJID); err != nil {
				t.Errorf("bob LookupKeys(alice, third time) = %v; want no second report", err)
			}

			rep, err := runAudit()
			if err != nil {
				t.Fatalf("Audit(after reset) = %v", err)
			}
			aliceIndex, _ := dep.d.KeyDir().Store().Index(jid.MustParse(aliceJID))
			var flagged []string
			for _, f := range rep.Findings {
				if f.Label == aliceIndex {
					flagged = append(flagged, f.What)
				}
			}
			if rep.Previous == nil || rep.Previous.Size != 3 || !slices.Equal(flagged, []string{"reset", "rebound"}) {
				t.Fatalf("Audit(after reset) previous %+v, alice flagged %v; want previous size 3 and reset, rebound", rep.Previous, flagged)
			}

			// Someone changes bob's entry in PostgreSQL.
			dep.exec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 2`)
			if _, err := runAudit(); !errors.Is(err, audit.ErrFailed) {
				t.Fatalf("Audit(entry tampered) = %v, want audit.ErrFailed", err)
			}
			// And the hash of leaf 3, the sibling on bob's (leaf 2's)
			// proof path: the server's own check fails and it refuses
			// to answer rather than hand out a proof that fails.
			dep.exec(ctx, t, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(0, 3))
			if _, err := aliceKD.LookupKeys(ctx, bobJID); condition(err) != stanza.InternalServerError {
				t.Fatalf("LookupKeys(bob, hash tampered) = %v, want internal-server-error", err)
			}
		})
	}
}

// checkRawLookup looks who up without the SDK and checks the server's
// proofs with keylog and x/mod's tlog: a second, independent verifier.
func checkRawLookup(ctx context.Context, t *testing.T, c *client.Client, dep *deployment, who string) {
	t.Helper()
	var res keydirxml.Lookup1
	if err := c.IQ(ctx, stanza.GetIQ, dep.d.Component().Domain(), keydirxml.Lookup1{JIDs: []string{who}}, &res); err != nil {
		t.Fatalf("raw lookup = %v", err)
	}
	v, _ := keylog.ParseVerifier(dep.vkey)
	cp, err := keylog.OpenCheckpoint([]byte(res.Checkpoint), v)
	if err != nil {
		t.Fatalf("OpenCheckpoint = %v", err)
	}
	head, _ := base64.StdEncoding.DecodeString(res.Head.Record)
	hr, err := keylog.ParseRecordV1(head)
	if err != nil {
		t.Fatalf("head record: %v", err)
	}
	checkInclusion(t, cp, res.Head.Index, head, res.Head.Proof)
	e := res.Entries[0]
	vk, _ := keylog.ParseVRFKey(dep.vrfKey)
	proof, _ := base64.StdEncoding.DecodeString(e.VRF)
	x, err := vk.Index(who, proof)
	if err != nil {
		t.Fatalf("VRF proof of %s: %v", who, err)
	}
	fp, _ := keydirxml.DecodeFingerprint(e.Fingerprint)
	val := keylog.MapValue{Fingerprint: fp, Entry: e.Index, Version: e.Version}
	mp, _ := base64.StdEncoding.DecodeString(e.Map)
	p, err := keylog.ParseMapProof(mp)
	if err != nil || keylog.VerifyMap(hr.Map, x, &val, p) != nil {
		t.Fatalf("map proof of %s: %v", who, err)
	}
	root, _ := base64.StdEncoding.DecodeString(e.Root)
	rec := keylog.RecordV1{Kind: keylog.KindPublish, Index: x, Fingerprint: fp, Version: e.Version, Time: e.Time, Map: [32]byte(root)}
	checkInclusion(t, cp, e.Index, rec.Marshal(), e.Proof)
}

func checkInclusion(t *testing.T, cp keylog.Checkpoint, idx int64, record []byte, blob string) {
	t.Helper()
	hs, err := keydirxml.DecodeHashBlob(blob)
	if err != nil {
		t.Fatal(err)
	}
	p := make(tlog.RecordProof, len(hs))
	for i := range hs {
		p[i] = tlog.Hash(hs[i])
	}
	if err := tlog.CheckRecord(p, cp.Size, cp.Hash, idx, tlog.RecordHash(record)); err != nil {
		t.Fatalf("tlog.CheckRecord(leaf %d) = %v", idx, err)
	}
}

// TestDirectoryErrors: every refusal on the wire, with its condition, on
// each real server; a v0 publish, lookup and history get
// feature-not-implemented naming v1, while v0 checkpoints and
// consistency proofs are still served.
func TestDirectoryErrors(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) {
				cfg.KeyDir.PublishPerMinute, cfg.KeyDir.PublishBurst = 1, 10
				cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1, 30
			})
			alice, aliceKD := dep.device(t)
			bob, _ := dep.device(t)
			comp := dep.d.Component().Domain()
			raw := func(typ stanza.IQType, payload any) error {
				return alice.IQ(ctx, typ, comp, payload, nil)
			}
			many := make([]string, 21)
			for i := range many {
				many[i] = fmt.Sprintf("u%d@%s", i, srv.Domain)
			}
			tests := []struct {
				name string
				err  error
				want stanza.Condition
			}{
				{"weak key", func() error { _, err := aliceKD.PublishKey(ctx, rsaKey(t, 2048)); return err }(), stanza.NotAcceptable},
				{"oversized key", func() error { _, err := aliceKD.PublishKey(ctx, rsaKey(t, 8200)); return err }(), stanza.BadRequest},
				{"key over the envelopes' bound", func() error { _, err := aliceKD.PublishKey(ctx, rsaKey(t, 4097)); return err }(), stanza.BadRequest},
				{"not base64", raw(stanza.SetIQ, keydirxml.Publish1{Key: "MIIB!!"}), stanza.BadRequest},
				{"no key", raw(stanza.SetIQ, keydirxml.Publish1{}), stanza.BadRequest},
				{"publish as get", raw(stanza.GetIQ, keydirxml.Publish1{Key: "AAAA"}), stanza.BadRequest},
				{"batch too large", raw(stanza.GetIQ, keydirxml.Lookup1{JIDs: many}), stanza.PolicyViolation},
				{"empty lookup", raw(stanza.GetIQ, keydirxml.Lookup1{}), stanza.BadRequest},
				{"malformed JID", raw(stanza.GetIQ, keydirxml.Lookup1{JIDs: []string{"a@b/c"}}), stanza.JIDMalformed},
				{"negative size known", raw(stanza.GetIQ, keydirxml.Lookup1{Known: -1, JIDs: []string{"a@b"}}), stanza.BadRequest},
				{"a request saying unchanged", raw(stanza.GetIQ, keydirxml.Lookup1{Unchanged: 1, JIDs: []string{"a@b"}}), stanza.BadRequest},
				{"size known not a number", raw(stanza.GetIQ, struct {
					XMLName xml.Name `xml:"urn:clinkme:keydir:1 lookup"`
					Known   string   `xml:"known,attr"`
					JIDs    []string `xml:"jid"`
				}{Known: "12a", JIDs: []string{"a@b"}}), stanza.BadRequest},
				{"history of another", raw(stanza.GetIQ, keydirxml.History1{JID: bob.JID().Bare().String()}), stanza.Forbidden},
				{"consistency beyond the log", raw(stanza.GetIQ, keydirxml.Consistency1{Old: 1, New: 5}), stanza.ItemNotFound},
				{"consistency backwards", raw(stanza.GetIQ, keydirxml.Consistency1{Old: 5, New: 1}), stanza.BadRequest},
				{"v0 publish", raw(stanza.SetIQ, keydirxml.Publish{Key: "AAAA"}), stanza.FeatureNotImplemented},
				{"v0 lookup", raw(stanza.GetIQ, keydirxml.Lookup{JIDs: []string{"a@b"}}), stanza.FeatureNotImplemented},
				{"v0 history", raw(stanza.GetIQ, keydirxml.History{}), stanza.FeatureNotImplemented},
				{"v0 consistency still served", raw(stanza.GetIQ, keydirxml.Consistency{Old: 1, New: 1}), ""},
				{"v0 checkpoint still served", raw(stanza.GetIQ, keydirxml.Checkpoint{}), ""},
			}
			for _, tt := range tests {
				if got := condition(tt.err); got != tt.want || (tt.want == "" && tt.err != nil) {
					t.Errorf("%s: error %v, want %q", tt.name, tt.err, tt.want)
				}
			}
			// Rate limits, per requester: bob has his own buckets.
			k := rsaKey(t, 3072)
			_, bobKD := dep.device(t)
			var last error
			for range 11 {
				_, last = bobKD.PublishKey(ctx, k)
			}
			if condition(last) != stanza.ResourceConstraint {
				t.Errorf("11th publish in a burst of 10 = %v, want resource-constraint", last)
			}
			// alice spent a few lookup tokens above; 20 more ones drain
			// the rest of her 30. The lookups after the first are
			// conditional (the device holds many[0] at the log's size)
			// and answered "unchanged": they cost a token each all the
			// same.
			_, err := aliceKD.LookupKeys(ctx, many[:20]...)
			for i := 0; err == nil && i < 10; i++ {
				_, err = aliceKD.LookupKeys(ctx, many[0])
			}
			if condition(err) != stanza.ResourceConstraint {
				t.Errorf("lookups past the burst = %v, want resource-constraint", err)
			}
			if aliceKD.UnchangedLookups() == 0 {
				t.Error("no lookup past the first was answered \"unchanged\": the burst was not spent on conditional lookups")
			}
		})
	}
}

// TestV0DeviceAfterMigration: a v0 log (written as clinkd before v1 wrote
// it) migrated with clinkd keys migrate's store call, then served: the
// released v0 device (client.NewKeyDirectory, no VRF key) keeps its pin
// (checkpoint and consistency proofs are unchanged) and gets
// feature-not-implemented naming urn:clinkme:keydir:1 for a lookup; a v1
// device pinned on the v0 log accepts the migrated one and finds bob's
// v0 binding and carol's v0 reset, proven through the map.
func TestV0DeviceAfterMigration(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, nil)
			dep.stop()
			conn := dep.db(ctx, t)
			// Back to an empty v0 database: what v0 clinkd left.
			for _, q := range []string{`DELETE FROM keydir_map`, `DELETE FROM keydir_entries`, `DELETE FROM keydir_hashes`,
				`UPDATE keydir_tree SET size = 0, genesis = NULL, map_root = NULL, v1_time = NULL`} {
				if _, err := conn.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			os.Remove(dep.keyFile + ".state")
			pool, err := pgxpool.New(ctx, dep.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			bob, carol := clinkdtest.NewDevice(t, srv), clinkdtest.NewDevice(t, srv)
			kb, kc := keydirtest.FakeRSAKey(t, 3072), keydirtest.FakeRSAKey(t, 3072)
			keydirtest.WriteV0Log(ctx, t, pool, []keydirtest.V0Entry{
				{JID: bob.JID().Bare().String(), Kind: keylog.KindPublish, Key: kb, Time: 1795636700},
				{JID: carol.JID().Bare().String(), Kind: keylog.KindPublish, Key: kc, Time: 1795636710},
				{JID: carol.JID().Bare().String(), Kind: keylog.KindReset, Key: kc, Time: 1795636900},
			})
			// The v0 log is served by a v0-era server: here a v1 clinkd
			// refuses it (not migrated), so the devices' pins are made
			// from its checkpoint directly.
			signer, verifier, err := keylog.LoadSignerKey(dep.keyFile)
			if err != nil {
				t.Fatal(err)
			}
			vrf, _ := keylog.LoadVRFSigner(dep.vrfFile)
			store, err := logdb.New(logdb.Config{DB: pool, Log: slog.New(slog.DiscardHandler), VRF: vrf})
			if err != nil {
				t.Fatal(err)
			}
			root, err := keylog.TreeHash(3, store.HashReader(ctx))
			if err != nil {
				t.Fatal(err)
			}
			v0cp, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: origin, Size: 3, Hash: root}, signer)
			if _, err := store.Migrate(ctx, time.Now()); err != nil {
				t.Fatal(err)
			}
			if _, err := keydir.Adopt(ctx, store, signer, verifier, dep.keyFile+".state", v0cp); err != nil {
				t.Fatal(err)
			}
			dep.start(t)

			alice := clinkdtest.NewDevice(t, srv)
			pins := &client.MemoryPins{}
			pins.SetCheckpoint(origin, v0cp)
			v0, err := alice.NewKeyDirectory(dep.d.Component().Domain(), dep.vkey, pins)
			if err != nil {
				t.Fatal(err)
			}
			if cp, err := v0.Checkpoint(ctx); err != nil || cp.Size != 6 {
				t.Errorf("v0 device Checkpoint = %+v, %v; want the migrated log of 6, extending its pin", cp, err)
			}
			_, err = v0.LookupKeys(ctx, bob.JID().Bare().String())
			var se stanza.Error
			if !errors.As(err, &se) || se.Condition != stanza.FeatureNotImplemented || !strings.Contains(se.Text[""], keydirxml.NS1) {
				t.Errorf("v0 device LookupKeys = %v, want feature-not-implemented naming %s", err, keydirxml.NS1)
			}
			pins1 := &client.MemoryPins{}
			pins1.SetCheckpoint(origin, v0cp)
			v1 := dep.directory(t, alice, pins1, nil)
			res, err := v1.LookupKeys(ctx, bob.JID().Bare().String(), carol.JID().Bare().String())
			if err != nil || res[0].Key == nil || res[0].Key.Index != 0 || res[0].Version != 1 || res[1].Key != nil || !res[1].Ended || res[1].Version != 2 {
				t.Fatalf("v1 device LookupKeys(bob, carol) after migration = %+v, %v; want bob's v0 binding and carol's v0 reset", res, err)
			}
			// carol's history is her two v0 entries; her republish is
			// version 3, a v1 record.
			ckd := dep.directory(t, carol, &client.MemoryPins{}, nil)
			if _, err := ckd.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			hist, err := ckd.History(ctx)
			if err != nil || len(hist) != 3 || hist[0].Index != 1 || hist[1].Index != 2 || hist[2].Version != 3 {
				t.Fatalf("carol History = %+v, %v; want her two v0 entries and her v1 publish", hist, err)
			}
			rep, err := audit.Run(ctx, audit.Config{URL: dep.logURL, Verifier: verifier})
			if err != nil || rep.Genesis != 3 || rep.Counts[keylog.KindMigrate] != 2 {
				t.Fatalf("audit of the migrated log = %+v, %v", rep, err)
			}
		})
	}
}

// TestDeviceRefusesRewrittenLog: someone with the database and the
// signing key rewrites the log's past (an entry changed and every hash
// recomputed, so the log is self-consistent) and, to get the signer past
// its state file, signs the rewritten tree into it too; the restarted
// clinkd then serves the rewritten log. A device that pinned a checkpoint
// before refuses every answer from it with ErrLogInconsistent. (Without
// the forged state file, clinkd itself refuses: TestRollback.)
func TestDeviceRefusesRewrittenLog(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, nil)
			pins := &client.MemoryPins{}
			alice := clinkdtest.NewDevice(t, srv)
			kd := dep.directory(t, alice, pins, nil)
			_, bobKD := dep.device(t)
			if _, err := bobKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			if _, err := kd.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			if _, err := kd.Checkpoint(ctx); err != nil { // pins the tree of 3
				t.Fatal(err)
			}
			dep.stop()

			// Rewrite entry 1 (bob's) and recompute every hash.
			dep.exec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 1`)
			pool, err := pgxpool.New(ctx, dep.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			vrf, _ := keylog.LoadVRFSigner(dep.vrfFile)
			store, err := logdb.New(logdb.Config{DB: pool, Log: slog.New(slog.DiscardHandler), VRF: vrf})
			if err != nil {
				t.Fatal(err)
			}
			recs, err := store.ReadRecords(ctx, 0, 3)
			if err != nil {
				t.Fatal(err)
			}
			var mem keylog.Hashes
			for _, rec := range recs {
				mem.Append(rec)
			}
			for i, h := range mem.Stored() {
				dep.exec(ctx, t, `UPDATE keydir_hashes SET hash = $2 WHERE idx = $1`, i, h[:])
			}
			signer, _, _ := keylog.LoadSignerKey(dep.keyFile)
			root, _ := keylog.TreeHash(3, &mem)
			msg, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: origin, Size: 3, Hash: root}, signer)
			if err := keydir.WriteState(dep.keyFile+".state", msg); err != nil {
				t.Fatal(err)
			}

			dep.start(t)
			kd2 := dep.directory(t, alice, pins, nil)
			// Same size, another root: a fork.
			if _, err := kd2.Checkpoint(ctx); !errors.Is(err, client.ErrLogInconsistent) {
				t.Fatalf("Checkpoint(rewritten log, same size) = %v, want ErrLogInconsistent", err)
			}
			// The log grows (carol publishes through the restarted
			// clinkd; her device pinned nothing before, so it trusts
			// what it first sees): the consistency proof from alice's
			// pinned tree to the new one fails.
			c := clinkdtest.NewDevice(t, srv)
			ckd := dep.directory(t, c, &client.MemoryPins{}, nil)
			if _, err := ckd.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			if _, err := kd2.LookupKeys(ctx, c.JID().Bare().String()); !errors.Is(err, client.ErrLogInconsistent) {
				t.Fatalf("LookupKeys(rewritten log, grown) = %v, want ErrLogInconsistent", err)
			}
		})
	}
}

// get fetches url and returns the status and body.
func getURL(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
