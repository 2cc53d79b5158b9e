package keydir_test

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
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
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
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
	srv     *lab.XMPPServer
	vkey    string
	keyFile string
	dbURL   string
	logURL  string
}

func startDeployment(t testing.TB, srv *lab.XMPPServer, tune func(*daemon.Config)) *deployment {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "keydir.signer")
	origin := "clink.lab.localhost/keydir"
	vkey, err := keylog.GenerateKey(origin, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	dbURL := labtest.NewDatabase(t)
	d := clinkdtest.Start(t, srv, func(cfg *daemon.Config) {
		cfg.Database.URL = dbURL
		cfg.Database.Migrate = true
		cfg.Public.Listen = "127.0.0.1:0"
		cfg.KeyDir.SignerKeyFile = keyFile
		cfg.KeyDir.Origin = origin
		if tune != nil {
			tune(cfg)
		}
	})
	return &deployment{d: d, srv: srv, vkey: vkey, keyFile: keyFile, dbURL: dbURL, logURL: d.PublicURL() + daemon.KeyDirLogPrefix}
}

// device logs a new user in and gives it a directory client with pins of
// its own.
func (dep *deployment) device(t testing.TB) (*client.Client, *client.KeyDirectory) {
	t.Helper()
	c := clinkdtest.NewDevice(t, dep.srv)
	kd, err := c.NewKeyDirectory(dep.d.Component().Domain(), dep.vkey, &client.MemoryPins{})
	if err != nil {
		t.Fatal(err)
	}
	return c, kd
}

func (dep *deployment) exec(ctx context.Context, t testing.TB, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dep.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tag, err := conn.Exec(ctx, sql, args...)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("%s: %v, %d rows; want 1 row", sql, err, tag.RowsAffected())
	}
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
// verified on the device with transparency-dev/merkle and the note
// verifier (client.KeyDirectory, no server code); a second key gets
// conflict; an operator reset shows in the owner's history, is reported
// to the contact as a key change and is flagged by the audit, which also
// checks consistency with the checkpoint it kept; a row changed in
// PostgreSQL is caught by the audit, and a changed hash makes the server
// refuse to answer rather than hand out a proof that fails.
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
			if err != nil || !slices.ContainsFunc(di.Features, func(f info.Feature) bool { return f.Var == keydirxml.NS }) {
				t.Errorf("disco#info = %+v, %v; want feature %s", di.Features, err, keydirxml.NS)
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
			if len(res) != 2 || res[0].Key == nil || res[0].Key.Fingerprint != fingerprint(kB) || res[0].Key.Key.N.Cmp(kB.N) != 0 || res[1].Key != nil {
				t.Fatalf("alice LookupKeys(bob, nobody) = %+v; want bob's key and none", res)
			}
			res, err = bobKD.LookupKeys(ctx, strings.ToUpper(aliceJID))
			if err != nil || len(res) != 1 || res[0].JID != aliceJID || res[0].Key.Fingerprint != fingerprint(kA) {
				t.Fatalf("bob LookupKeys(ALICE) = %+v, %v; want alice's key", res, err)
			}
			// Independently of the SDK: the server's own proof, checked
			// with tlog.CheckRecord against the signed checkpoint.
			checkRawLookup(ctx, t, alice, dep, bobJID)

			again, err := aliceKD.PublishKey(ctx, kA)
			if err != nil || again.Index != pa.Index || !again.Time.Equal(pa.Time) {
				t.Errorf("alice PublishKey(same key) = %+v, %v; want the first binding (index %d)", again, err, pa.Index)
			}
			if _, err := aliceKD.PublishKey(ctx, kA2); condition(err) != stanza.Conflict {
				t.Fatalf("alice PublishKey(second key) = %v, want conflict", err)
			}

			state := filepath.Join(t.TempDir(), "audit.checkpoint")
			runAudit := func() (*audit.Report, error) {
				v, _ := keylog.ParseVerifier(dep.vkey)
				return audit.Run(ctx, audit.Config{URL: dep.logURL, Verifier: v, StateFile: state})
			}
			if rep, err := runAudit(); err != nil || rep.Checkpoint.Size != 2 || len(rep.Findings) != 0 {
				t.Fatalf("Audit = %+v, %v; want 2 entries, no findings", rep, err)
			}

			// The operator resets alice.
			if _, err := dep.d.KeyDir().Store().End(ctx, aliceJID, keylog.KindReset, "lost her phone", time.Now()); err != nil {
				t.Fatalf("End(reset) = %v", err)
			}
			hist, err := aliceKD.History(ctx)
			if err != nil || len(hist) != 2 || hist[0].Kind != "publish" || hist[1].Kind != "reset" || hist[1].Fingerprint != fingerprint(kA) {
				t.Fatalf("alice History = %+v, %v; want publish then reset of her key", hist, err)
			}
			var kc *client.KeyChangeError
			res, err = bobKD.LookupKeys(ctx, aliceJID)
			if !errors.As(err, &kc) || len(kc.Changes) != 1 || kc.Changes[0].New != nil || res[0].Key != nil {
				t.Fatalf("bob LookupKeys(alice after reset) = %+v, %v; want no key and a KeyChangeError", res, err)
			}
			if _, err := aliceKD.PublishKey(ctx, kA2); err != nil {
				t.Fatalf("alice PublishKey(after reset) = %v", err)
			}
			res, err = bobKD.LookupKeys(ctx, aliceJID)
			if !errors.As(err, &kc) || kc.Changes[0].New == nil || *kc.Changes[0].New != fingerprint(kA2) || res[0].Key.Fingerprint != fingerprint(kA2) {
				t.Fatalf("bob LookupKeys(alice republished) = %+v, %v; want her new key and a KeyChangeError", res, err)
			}
			if _, err := bobKD.LookupKeys(ctx, aliceJID); err != nil {
				t.Errorf("bob LookupKeys(alice, third time) = %v; want no second report", err)
			}

			rep, err := runAudit()
			if err != nil {
				t.Fatalf("Audit(after reset) = %v", err)
			}
			aliceLabel := keylog.Label(jid.MustParse(aliceJID))
			var flagged []string
			for _, f := range rep.Findings {
				if f.Label == aliceLabel {
					flagged = append(flagged, f.What)
				}
			}
			if rep.Previous == nil || rep.Previous.Size != 2 || !slices.Equal(flagged, []string{"reset", "rebound"}) {
				t.Fatalf("Audit(after reset) previous %+v, alice flagged %v; want previous size 2 and reset, rebound", rep.Previous, flagged)
			}

			// Someone changes bob's entry in PostgreSQL.
			dep.exec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 1`)
			if _, err := runAudit(); !errors.Is(err, audit.ErrFailed) {
				t.Fatalf("Audit(entry tampered) = %v, want audit.ErrFailed", err)
			}
			// And the hash of leaf 0, the sibling on bob's (leaf 1's)
			// proof path: the server's own check fails and it refuses
			// to answer rather than hand out a proof that fails.
			dep.exec(ctx, t, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(0, 0))
			if _, err := aliceKD.LookupKeys(ctx, bobJID); condition(err) != stanza.InternalServerError {
				t.Fatalf("LookupKeys(bob, hash tampered) = %v, want internal-server-error", err)
			}
		})
	}
}

// checkRawLookup looks bob up without the SDK and checks the server's
// proof with x/mod's tlog.CheckRecord and the checkpoint with
// keylog.OpenCheckpoint: a second, independent verifier.
func checkRawLookup(ctx context.Context, t *testing.T, c *client.Client, dep *deployment, who string) {
	t.Helper()
	var res keydirxml.Lookup
	if err := c.IQ(ctx, stanza.GetIQ, dep.d.Component().Domain(), keydirxml.Lookup{JIDs: []string{who}}, &res); err != nil {
		t.Fatalf("raw lookup = %v", err)
	}
	v, _ := keylog.ParseVerifier(dep.vkey)
	cp, err := keylog.OpenCheckpoint([]byte(res.Checkpoint), v)
	if err != nil {
		t.Fatalf("OpenCheckpoint = %v", err)
	}
	e := res.Entries[0]
	fp, _ := keydirxml.DecodeFingerprint(e.Fingerprint)
	hs, err := keydirxml.DecodeHashes(e.Proof.Hashes)
	if err != nil {
		t.Fatal(err)
	}
	p := make(tlog.RecordProof, len(hs))
	for i := range hs {
		p[i] = tlog.Hash(hs[i])
	}
	rec := keylog.Record{Label: keylog.Label(jid.MustParse(who)), Kind: keylog.KindPublish, Fingerprint: fp, Time: e.Time}
	if err := tlog.CheckRecord(p, cp.Size, cp.Hash, e.Index, tlog.RecordHash(rec.Marshal())); err != nil {
		t.Fatalf("tlog.CheckRecord(lookup of %s) = %v", who, err)
	}
}

// TestDirectoryErrors: every refusal on the wire, with its condition, on
// each real server.
func TestDirectoryErrors(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) {
				cfg.KeyDir.PublishPerMinute, cfg.KeyDir.PublishBurst = 1, 10
				cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1, 25
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
				{"not base64", raw(stanza.SetIQ, keydirxml.Publish{Key: "MIIB!!"}), stanza.BadRequest},
				{"no key", raw(stanza.SetIQ, keydirxml.Publish{}), stanza.BadRequest},
				{"publish as get", raw(stanza.GetIQ, keydirxml.Publish{Key: "AAAA"}), stanza.BadRequest},
				{"batch too large", raw(stanza.GetIQ, keydirxml.Lookup{JIDs: many}), stanza.PolicyViolation},
				{"empty lookup", raw(stanza.GetIQ, keydirxml.Lookup{}), stanza.BadRequest},
				{"malformed JID", raw(stanza.GetIQ, keydirxml.Lookup{JIDs: []string{"a@b/c"}}), stanza.JIDMalformed},
				{"history of another", raw(stanza.GetIQ, keydirxml.History{JID: bob.JID().Bare().String()}), stanza.Forbidden},
				{"consistency beyond the log", raw(stanza.GetIQ, keydirxml.Consistency{Old: 1, New: 5}), stanza.ItemNotFound},
				{"consistency backwards", raw(stanza.GetIQ, keydirxml.Consistency{Old: 5, New: 1}), stanza.BadRequest},
			}
			for _, tt := range tests {
				if got := condition(tt.err); got != tt.want {
					t.Errorf("%s: error %v, want %s", tt.name, tt.err, tt.want)
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
			// alice spent a few lookup tokens above; 20 more empty
			// ones drain the rest of her 25.
			_, err := aliceKD.LookupKeys(ctx, many[:20]...)
			for i := 0; err == nil && i < 5; i++ {
				_, err = aliceKD.LookupKeys(ctx, many[0])
			}
			if condition(err) != stanza.ResourceConstraint {
				t.Errorf("lookups past the burst = %v, want resource-constraint", err)
			}
		})
	}
}

// TestDeviceRefusesRewrittenLog: someone with the database rewrites the
// log's past (an entry changed and every hash recomputed, so the log is
// self-consistent) and a restarted clinkd, with no memory of what it
// signed, signs the rewritten tree. A device that pinned a checkpoint
// before refuses every answer from it with ErrLogInconsistent: the
// consistency proof to the new tree does not start from the pinned root.
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
			kd, err := alice.NewKeyDirectory(dep.d.Component().Domain(), dep.vkey, pins)
			if err != nil {
				t.Fatal(err)
			}
			_, bobKD := dep.device(t)
			if _, err := bobKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			if _, err := kd.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			if _, err := kd.Checkpoint(ctx); err != nil { // pins the tree of 2
				t.Fatal(err)
			}

			// Rewrite entry 0 (bob's) and recompute every hash.
			dep.exec(ctx, t, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 0`)
			db, err := pgxpool.New(ctx, dep.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			store, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			recs, err := store.ReadRecords(ctx, 0, 2)
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

			// A second clinkd over the same database and key: a restart.
			d2 := clinkdtest.Start(t, srv, func(cfg *daemon.Config) {
				cfg.Database.URL = dep.dbURL
				cfg.KeyDir.SignerKeyFile = dep.keyFile
			})
			kd2, err := alice.NewKeyDirectory(d2.Component().Domain(), dep.vkey, pins)
			if err != nil {
				t.Fatal(err)
			}
			// Same size, another root: a fork.
			if _, err := kd2.Checkpoint(ctx); !errors.Is(err, client.ErrLogInconsistent) {
				t.Fatalf("Checkpoint(rewritten log, same size) = %v, want ErrLogInconsistent", err)
			}
			// The log grows (carol publishes through the restarted
			// clinkd; her device pinned nothing before, so it trusts
			// what it first sees): the consistency proof from alice's
			// pinned tree to the new one fails.
			c := clinkdtest.NewDevice(t, srv)
			ckd, _ := c.NewKeyDirectory(d2.Component().Domain(), dep.vkey, &client.MemoryPins{})
			if _, err := ckd.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			if _, err := kd2.LookupKeys(ctx, c.JID().Bare().String()); !errors.Is(err, client.ErrLogInconsistent) {
				t.Fatalf("LookupKeys(rewritten log, grown) = %v, want ErrLogInconsistent", err)
			}
		})
	}
}
