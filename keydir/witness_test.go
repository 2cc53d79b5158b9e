package keydir_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/note"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// startWitnessed starts n real witnesses (litewitness, each with its key
// in an ssh-agent of its own), registers a new log with them and starts
// clinkd over it with them configured, threshold of them required.
func startWitnessed(ctx context.Context, t *testing.T, srv *lab.XMPPServer, n, threshold int) *deployment {
	t.Helper()
	dep := newDeployment(t, srv)
	for i := range n {
		w := labtest.NewWitness(t, fmt.Sprintf("w%d.witness.lab.localhost", i+1))
		if err := w.AddLog(ctx, origin, dep.vkey); err != nil {
			t.Fatal(err)
		}
		dep.witnesses = append(dep.witnesses, w)
	}
	dep.threshold = threshold
	dep.start(t)
	return dep
}

// policy is the witness policy devices and auditors get: the first k of
// the deployment's witnesses... all of their keys, k required.
func (dep *deployment) policy(k int) client.WitnessPolicy {
	p := client.WitnessPolicy{Threshold: k}
	for _, w := range dep.witnesses {
		p.Keys = append(p.Keys, w.VerifierKey)
	}
	return p
}

func (dep *deployment) auditPolicy(t testing.TB, k int) keylog.WitnessPolicy {
	t.Helper()
	p, err := keylog.NewWitnessPolicy(dep.policy(k).Keys, k)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// witnessedDevice logs a new user in with a directory client that
// requires policy.
func (dep *deployment) witnessedDevice(t testing.TB, policy client.WitnessPolicy) (*client.Client, *client.KeyDirectory) {
	t.Helper()
	c := clinkdtest.NewDevice(t, dep.srv)
	kd, err := c.OpenKeyDirectory(client.KeyDirConfig{Service: dep.d.Component().Domain(), Verifier: dep.vkey, VRFKey: dep.vrfKey, Pins: &client.MemoryPins{}, Witnesses: policy})
	if err != nil {
		t.Fatal(err)
	}
	return c, kd
}

// cosignatures counts the valid cosignatures of dep's witnesses on a
// signed checkpoint, with keylog's code (the device checks with its own).
func (dep *deployment) cosignatures(t testing.TB, msg []byte) int {
	t.Helper()
	v, err := note.NewVerifier(dep.vkey)
	if err != nil {
		t.Fatal(err)
	}
	_, n, err := dep.auditPolicy(t, 0).Check(msg, v)
	if err != nil {
		t.Fatalf("checkpoint %q: %v", msg, err)
	}
	return n
}

// TestWitnessCosigning: clinkd with two real witnesses (litewitness),
// threshold 2, on each real server with real PostgreSQL. A device that
// requires both cosignatures publishes and looks keys up: every answer
// (the publish's own, made at a size nobody cosigned yet) carries both,
// so it accepts them; the checkpoint over XMPP and over HTTP
// (/keydir/log/checkpoint) carries them, and the auditor with the same
// policy passes. After a restart clinkd no longer knows the witnesses'
// sizes: the first submission gets 409 with the size, and the retry with
// the consistency proof from it is cosigned. With one witness stopped
// clinkd still answers: a device requiring 2 refuses (ErrNotCosigned),
// one requiring 1 accepts, and clinkd says so.
func TestWitnessCosigning(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startWitnessed(ctx, t, srv, 2, 2)
			alice, aliceKD := dep.witnessedDevice(t, dep.policy(2))
			if _, err := aliceKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatalf("PublishKey with 2 witnesses required: %v", err)
			}
			_, bobKD := dep.witnessedDevice(t, dep.policy(2))
			res, err := bobKD.LookupKeys(ctx, alice.JID().Bare().String())
			if err != nil || res[0].Key == nil {
				t.Fatalf("LookupKeys(alice) with 2 witnesses required = %+v, %v", res, err)
			}
			cp, err := bobKD.Checkpoint(ctx)
			if err != nil {
				t.Fatalf("Checkpoint: %v", err)
			}
			if n := dep.cosignatures(t, cp.Signed); n != 2 {
				t.Errorf("the XMPP checkpoint carries %d valid cosignatures, want 2:\n%s", n, cp.Signed)
			}
			code, body := getURL(t, dep.logURL+"/checkpoint")
			if code != 200 || dep.cosignatures(t, []byte(body)) != 2 {
				t.Errorf("GET /checkpoint = %d, %d valid cosignatures, want 200 and 2:\n%s", code, dep.cosignatures(t, []byte(body)), body)
			}
			for _, w := range dep.witnesses {
				if n, err := w.TreeSize(ctx, origin); err != nil || n != cp.Size {
					t.Errorf("witness %s has size %d (%v), want %d", w.Name, n, err, cp.Size)
				}
			}
			rep, err := audit.Run(ctx, audit.Config{URL: dep.logURL, Verifier: mustVerifier(t, dep.vkey), Witnesses: dep.auditPolicy(t, 2)})
			if err != nil || len(rep.Cosigners) != 2 {
				t.Fatalf("audit with 2 witnesses required = %v (cosigners %v)", err, rep.Cosigners)
			}

			// A restart: the witnesses' sizes are forgotten; 409, then
			// the retry from the size each reports.
			dep.stop()
			dep.start(t)
			_, carolKD := dep.witnessedDevice(t, dep.policy(2))
			if _, err := carolKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatalf("PublishKey after a restart: %v", err)
			}
			ws, n := dep.d.KeyDir().Witnesses()
			if n != 2 {
				t.Fatalf("after the restart the newest checkpoint has %d cosignatures, want 2 (%+v)", n, ws)
			}
			if got := metric(t, dep, `clinkd_keydir_witness_requests_total{outcome="ok",witness="w1.witness.lab.localhost"}`); got < 1 {
				t.Errorf("clinkd_keydir_witness_requests_total{ok, w1} = %v, want at least 1", got)
			}

			// One witness down: clinkd answers, with one cosignature.
			if err := dep.witnesses[1].Close(); err != nil {
				t.Fatal(err)
			}
			_, daveKD := dep.witnessedDevice(t, dep.policy(2))
			if _, err := daveKD.PublishKey(ctx, rsaKey(t, 3072)); !errors.Is(err, client.ErrNotCosigned) {
				t.Fatalf("PublishKey with a witness down, 2 required = %v, want ErrNotCosigned", err)
			}
			_, erinKD := dep.witnessedDevice(t, dep.policy(1))
			if _, err := erinKD.LookupKeys(ctx, alice.JID().Bare().String()); err != nil {
				t.Fatalf("LookupKeys with a witness down, 1 required = %v", err)
			}
			if got := metric(t, dep, "clinkd_keydir_checkpoint_cosignatures"); got != 1 {
				t.Errorf("clinkd_keydir_checkpoint_cosignatures = %v with a witness down, want 1", got)
			}
			if got := metric(t, dep, `clinkd_keydir_witness_requests_total{outcome="error",witness="w2.witness.lab.localhost"}`); got < 1 {
				t.Errorf("clinkd_keydir_witness_requests_total{error, w2} = %v, want at least 1", got)
			}
		})
	}
}

// TestSplitView: the operator shows one victim a log nobody else sees. A
// second clinkd serves a copy of the database taken earlier, with the
// same signing key and a copy of the signer's state (a fork), while the
// honest clinkd went on and had its next checkpoint cosigned. The copy
// as it is (smaller than what the witness saw, as a rolled-back log) is
// refused: 409 with a larger size. The fork then appends the victim's
// key: the witness refuses to cosign it (it saw the honest tree of that
// size: 409, then 422 on the retry), so the victim's device, which
// requires the witness, refuses every answer of the fork with
// ErrNotCosigned, from the first answer on; the auditor
// with the witness policy refuses the fork's checkpoint. A device without
// a witness policy accepts the fork's answer: what the witness adds.
func TestSplitView(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			honest := startWitnessed(ctx, t, srv, 1, 1)
			alice, aliceKD := honest.witnessedDevice(t, honest.policy(1))
			if _, err := aliceKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}

			// The fork's database and state: copies, taken now.
			honest.stop()
			fork := *honest
			fork.dbURL = copyDatabase(ctx, t, honest.dbURL)
			fork.stateFile = honest.keyFile + ".fork-state"
			state, err := os.ReadFile(honest.keyFile + ".state")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(fork.stateFile, state, 0o600); err != nil {
				t.Fatal(err)
			}
			honest.start(t)
			// The honest log goes on, cosigned.
			_, bobKD := honest.witnessedDevice(t, honest.policy(1))
			if _, err := bobKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			honestCP, err := bobKD.Checkpoint(ctx)
			if err != nil {
				t.Fatal(err)
			}
			w := honest.witnesses[0]

			fork.start(t) // another component domain, the same log key
			victim, victimKD := fork.witnessedDevice(t, fork.policy(1))
			// First the copied log as it is: smaller than what the
			// witness cosigned (a rollback, to the witness).
			if _, err := victimKD.LookupKeys(ctx, alice.JID().Bare().String()); !errors.Is(err, client.ErrNotCosigned) {
				t.Fatalf("the victim's lookup through the rolled-back copy = %v, want ErrNotCosigned", err)
			}
			if ws, n := fork.d.KeyDir().Witnesses(); n != 0 || ws[0].Outcome != "ahead" {
				t.Fatalf("the fork's witness status after a lookup = %+v, %d cosignatures; want ahead and none", ws, n)
			}
			// Then the fork proper: the victim's key appended, a tree of
			// the honest size with another root.
			_, err = victimKD.PublishKey(ctx, rsaKey(t, 3072))
			if !errors.Is(err, client.ErrNotCosigned) {
				t.Fatalf("the victim's publish through the fork = %v, want ErrNotCosigned", err)
			}
			if ws, n := fork.d.KeyDir().Witnesses(); n != 0 || ws[0].Outcome != "bad_proof" {
				t.Fatalf("the fork's witness status after the publish = %+v, %d cosignatures; want bad_proof and none", ws, n)
			}
			if got, err := w.TreeSize(ctx, origin); err != nil || got != honestCP.Size {
				t.Fatalf("the witness's size = %d (%v), want the honest %d", got, err, honestCP.Size)
			}
			// Same size as the honest checkpoint, another root: a fork
			// the witness saw and refused.
			forkCP, err := getCheckpoint(t, fork.logURL)
			if err != nil {
				t.Fatal(err)
			}
			if forkCP.Size != honestCP.Size || forkCP.Hash == honestCP.Hash {
				t.Fatalf("fork checkpoint %d %x, honest %d %x: want the same size, another root", forkCP.Size, forkCP.Hash, honestCP.Size, honestCP.Hash)
			}
			if _, err := audit.Run(ctx, audit.Config{URL: fork.logURL, Verifier: mustVerifier(t, fork.vkey), Witnesses: fork.auditPolicy(t, 1)}); !errors.Is(err, keylog.ErrNotCosigned) || !errors.Is(err, audit.ErrFailed) {
				t.Fatalf("audit of the fork with the witness required = %v, want ErrFailed and ErrNotCosigned", err)
			}
			if _, err := audit.Run(ctx, audit.Config{URL: honest.logURL, Verifier: mustVerifier(t, honest.vkey), Witnesses: honest.auditPolicy(t, 1)}); err != nil {
				t.Fatalf("audit of the honest log with the witness required = %v", err)
			}

			// Without a witness policy the fork's answer is accepted.
			c := clinkdtest.NewDevice(t, srv)
			plain := fork.directory(t, c, &client.MemoryPins{}, nil)
			if _, err := plain.LookupKeys(ctx, victim.JID().Bare().String()); err != nil {
				t.Fatalf("a device without a witness policy, through the fork: %v (the fork would go unnoticed there)", err)
			}
			// The honest log is still cosigned for its devices.
			if _, err := bobKD.LookupKeys(ctx, alice.JID().Bare().String()); err != nil {
				t.Fatalf("alice through the honest clinkd after the fork: %v", err)
			}
		})
	}
}

// TestAuditorRequiresCosignatures: a clinkd whose witness does not know
// its log (an operator who never registered it, or one who wants to
// show auditors an unwitnessed log) serves checkpoints without
// cosignatures: the auditor with a witness policy fails the audit with
// ErrNotCosigned before downloading anything, the same auditor without
// a policy passes, and once the witness knows the log the next
// checkpoint is cosigned and the audit passes.
func TestAuditorRequiresCosignatures(t *testing.T) {
	t.Parallel()
	srv := labtest.Servers(t)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dep := newDeployment(t, srv)
	w := labtest.NewWitness(t, "w1.witness.lab.localhost")
	dep.witnesses, dep.threshold = []*lab.Witness{w}, 1
	dep.start(t)
	_, kd := dep.device(t)
	if _, err := kd.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
		t.Fatal(err)
	}
	cfg := audit.Config{URL: dep.logURL, Verifier: mustVerifier(t, dep.vkey), Witnesses: dep.auditPolicy(t, 1)}
	rep, err := audit.Run(ctx, cfg)
	if !errors.Is(err, keylog.ErrNotCosigned) || !errors.Is(err, audit.ErrFailed) {
		t.Fatalf("audit of an uncosigned checkpoint = %v, want ErrFailed and ErrNotCosigned", err)
	}
	if rep == nil || len(rep.Cosigners) != 0 || rep.Counts[keylog.KindPublish] != 0 {
		t.Fatalf("report of the refused audit = %+v, want no cosigners and nothing downloaded", rep)
	}
	if ws, _ := dep.d.KeyDir().Witnesses(); ws[0].Outcome != "refused" {
		t.Errorf("witness status = %+v, want refused", ws)
	}
	if _, err := audit.Run(ctx, audit.Config{URL: dep.logURL, Verifier: mustVerifier(t, dep.vkey)}); err != nil {
		t.Fatalf("audit without a witness policy = %v", err)
	}
	if err := w.AddLog(ctx, origin, dep.vkey); err != nil {
		t.Fatal(err)
	}
	_, kd2 := dep.device(t)
	if _, err := kd2.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
		t.Fatal(err)
	}
	if rep, err := audit.Run(ctx, cfg); err != nil || len(rep.Cosigners) != 1 {
		t.Fatalf("audit once the witness knows the log = %v (cosigners %v)", err, rep.Cosigners)
	}
}

func mustVerifier(t testing.TB, vkey string) note.Verifier {
	t.Helper()
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func getCheckpoint(t testing.TB, logURL string) (keylog.Checkpoint, error) {
	t.Helper()
	code, body := getURL(t, logURL+"/checkpoint")
	if code != 200 {
		return keylog.Checkpoint{}, fmt.Errorf("GET checkpoint: %d %s", code, body)
	}
	n := strings.Index(body, "\n\n")
	if n < 0 {
		return keylog.Checkpoint{}, fmt.Errorf("no signatures: %q", body)
	}
	return keylog.ParseCheckpoint([]byte(body[:n+1]))
}

// copyDatabase makes a copy of the database at dbURL (nobody may be
// connected to it) and returns the copy's URL; it is dropped when the
// test ends.
func copyDatabase(ctx context.Context, t testing.TB, dbURL string) string {
	t.Helper()
	dst := labtest.NewDatabase(t)
	src, _ := url.Parse(dbURL)
	du, _ := url.Parse(dst)
	admin := *src
	admin.Path = "/postgres"
	conn, err := pgx.Connect(ctx, admin.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := func(u *url.URL) string { return pgx.Identifier{strings.TrimPrefix(u.Path, "/")}.Sanitize() }
	for _, sql := range []string{"DROP DATABASE " + name(du), "CREATE DATABASE " + name(du) + " TEMPLATE " + name(src)} {
		var err error
		for range 50 { // the stopped clinkd's connections may take a moment to end
			if _, err = conn.Exec(ctx, sql); err == nil || !strings.Contains(err.Error(), "being accessed by other users") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	return dst
}

// metric reads one sample from clinkd's /metrics: name with its labels
// as Prometheus's text format writes them (sorted), e.g.
// `x_total{a="1",b="2"}`; 0 when absent.
func metric(t testing.TB, dep *deployment, name string) float64 {
	t.Helper()
	code, body := getURL(t, "http://"+dep.d.AdminAddr()+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d", code)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric %s: %q", name, line)
			}
			return f
		}
	}
	return 0
}
