package keydir_test

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// The end-to-end tests of issue 12, items 2 and 4: a split view for one
// victim caught by gossip, and a checkpoint older than the pin refused.

// events collects a device's events, as an app's loop would.
type events struct {
	mu     sync.Mutex
	alarms []*client.Alarm
	shown  []string
	drops  []error
	ch     chan struct{}
}

func collect(ctx context.Context, d *client.Device) *events {
	e := &events{ch: make(chan struct{}, 1)}
	go func() {
		for ctx.Err() == nil {
			ev, err := d.NextEvent(ctx)
			if err != nil {
				return
			}
			e.mu.Lock()
			switch ev := ev.(type) {
			case *client.Alarm:
				e.alarms = append(e.alarms, ev)
			case *client.Message:
				e.shown = append(e.shown, ev.Text)
			case *client.DropError:
				e.drops = append(e.drops, ev)
			}
			e.mu.Unlock()
			select {
			case e.ch <- struct{}{}:
			default:
			}
		}
	}()
	return e
}

func (e *events) wait(ctx context.Context, t *testing.T, what string, done func() bool) {
	t.Helper()
	for {
		e.mu.Lock()
		ok := done()
		e.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-e.ch:
		case <-ctx.Done():
			e.mu.Lock()
			defer e.mu.Unlock()
			t.Fatalf("%s: not within the deadline; alarms %v, shown %v, drops %v", what, e.alarms, e.shown, e.drops)
		}
	}
}

// gossipDevice makes a device of the logged-in session c with the key
// store at path (made from the test key named key if it does not
// exist), messaging through dep's clinkd and asking dir's for keys.
func gossipDevice(t *testing.T, dep, dir *deployment, c *client.Client, path, key string) *client.Device {
	t.Helper()
	store, err := keystore.Open(path, []byte("pass"))
	if err != nil {
		store, err = keystore.Create(path, []byte("pass"), clinkdtest.Identity(t, key, c.JID().Bare().String()))
	}
	if err != nil {
		t.Fatal(err)
	}
	d, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: dep.d.Component().Domain(),
		DirectoryComponent: dir.d.Component().Domain(), VerifierKey: dep.vkey, VRFKey: dep.vrfKey})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// fork stops dep, copies its database (CREATE DATABASE … TEMPLATE) and
// its signer's state file, starts dep again and starts a second clinkd
// over the copy with the same keys: the operator's fork, on a component
// of its own.
func (dep *deployment) fork(ctx context.Context, t *testing.T) *deployment {
	t.Helper()
	link := dep.lastLink
	dep.link = &link
	dep.stop()
	pg := labtest.Postgres(t)
	src, err := url.Parse(dep.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(src.Path, "/") + "_fork"
	admin, err := pgx.Connect(ctx, pg.AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{strings.TrimPrefix(src.Path, "/")}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	admin.Close(ctx)
	dst := *src
	dst.Path = "/" + name
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pg.DropDatabase(ctx, dst.String()); err != nil {
			t.Error(err)
		}
	})
	state, err := os.ReadFile(dep.keyFile + ".state")
	if err != nil {
		t.Fatal(err)
	}
	fstate := filepath.Join(t.TempDir(), "fork.state")
	if err := os.WriteFile(fstate, state, 0o600); err != nil {
		t.Fatal(err)
	}
	dep.start(t)
	f := &deployment{srv: dep.srv, vkey: dep.vkey, vrfKey: dep.vrfKey, keyFile: dep.keyFile, vrfFile: dep.vrfFile, dbURL: dst.String(),
		tune: func(cfg *daemon.Config) {
			if dep.tune != nil {
				dep.tune(cfg)
			}
			cfg.KeyDir.SignerStateFile = fstate
		}}
	f.start(t)
	return f
}

// TestSplitViewGossip: the operator keeps alice (the victim) on a fork
// of the log (a second clinkd over a copy of the database, diverged,
// with the same signing key) in which bob's key was reset and replaced;
// everyone else sees the real log, which grew on its own. No witness.
// bob's next envelope to alice carries his checkpoint of the real log:
// alice's device asks its (forked) directory for the consistency proof,
// which does not verify, and raises a fork alarm with both signed
// checkpoints. alice's next envelope to dave carries her checkpoint of
// the fork: the real directory cannot prove it (it never had that
// tree), and dave's device raises the alarm too. On the code before
// this, envelopes carried no checkpoint and nobody noticed.
func TestSplitViewGossip(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) { cfg.KeyDir.PublishBurst = 10 })
			aliceJIDs, alicePass := labtest.NewUser(t, srv)
			ac, bc, dc := clinkdtest.Login(t, srv, aliceJIDs, alicePass), clinkdtest.NewDevice(t, srv), clinkdtest.NewDevice(t, srv)
			alicePath := filepath.Join(t.TempDir(), "alice")
			alice0 := gossipDevice(t, dep, dep, ac, alicePath, "alice")
			bob := gossipDevice(t, dep, dep, bc, filepath.Join(t.TempDir(), "bob"), "bob")
			dave := gossipDevice(t, dep, dep, dc, filepath.Join(t.TempDir(), "dave"), "dave")
			for _, d := range []*client.Device{alice0, bob, dave} {
				if err := d.Start(ctx); err != nil {
					t.Fatal(err)
				}
			}
			ac.Close() // alice comes back to a server that forked the log for her
			aliceJID, bobJID, daveJID := ac.JID().Bare(), bc.JID().Bare(), dc.JID().Bare()

			f := dep.fork(ctx, t)
			// The fork: bob's key reset and replaced, for alice's eyes.
			if _, err := f.d.KeyDir().Store().End(ctx, bobJID.String(), keylog.KindReset, "split view", time.Now()); err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.d.KeyDir().Store().Publish(ctx, bobJID, derOf(t, rsaKey(t, 3072)), time.Now()); err != nil {
				t.Fatal(err)
			}
			// The real log grows on its own: carol publishes.
			if _, err := fresh(t, dep, clinkdtest.NewDevice(t, srv), nil).PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}

			// alice, back, is served the fork (it extends what she saw).
			alice := gossipDevice(t, dep, f, clinkdtest.Login(t, srv, aliceJIDs, alicePass), alicePath, "alice")
			if err := alice.Start(ctx); err != nil {
				t.Fatalf("alice's start on the fork: %v", err)
			}
			mine, err := alice.Directory().Checkpoint(ctx)
			if err != nil {
				t.Fatal(err)
			}
			real, err := dave.Directory().Checkpoint(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if mine.Size != real.Size+1 {
				t.Fatalf("alice's fork has %d entries, the real log %d; want one more on the fork", mine.Size, real.Size)
			}
			la, ld := collect(ctx, alice), collect(ctx, dave)

			// dave (not a victim) writes to alice: his envelope carries
			// the real log's checkpoint.
			if _, err := dave.Send(ctx, aliceJID, "from dave, on the real log", client.SendOptions{}); err != nil {
				t.Fatal(err)
			}
			la.wait(ctx, t, "alice's fork alarm", func() bool { return len(la.alarms) > 0 })
			checkFork(t, "alice", la.alarms[0], daveJID.String(), mine, real)

			// alice writes to dave: her envelope carries the fork's.
			if _, err := alice.Send(ctx, daveJID, "from alice, on the fork", client.SendOptions{}); err != nil {
				t.Fatal(err)
			}
			ld.wait(ctx, t, "dave's fork alarm", func() bool { return len(ld.alarms) > 0 })
			checkFork(t, "dave", ld.alarms[0], aliceJID.String(), real, mine)
			if a := dave.Alarms(); len(a) != 1 || a[0].Kind != keystore.AlarmFork || string(a[0].Evidence[1]) != string(mine.Signed) {
				t.Errorf("dave's key store keeps %+v; want the fork alarm with alice's checkpoint", a)
			}
			_ = bob
		})
	}
}

// checkFork checks a fork alarm raised at who by an envelope of from:
// this device's signed checkpoint and the other, as evidence.
func checkFork(t *testing.T, who string, a *client.Alarm, from string, mine, theirs *client.VerifiedCheckpoint) {
	t.Helper()
	if a.Kind != client.AlarmFork || a.JID != from || string(a.Evidence[0]) != string(mine.Signed) || string(a.Evidence[1]) != string(theirs.Signed) {
		t.Errorf("%s's alarm = %v (evidence %q, %q); want a fork raised by %s's envelope, with %s's checkpoint of %d entries and the other of %d",
			who, a, a.Evidence[0], a.Evidence[1], from, who, mine.Size, theirs.Size)
		return
	}
	t.Logf("%s: %s", who, a.Text)
}

func derOf(t *testing.T, k *rsa.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestCheckpointOlderThanPin: the operator rolls the database and the
// signer's state file back together (a backup of both restored), so
// that clinkd serves, validly signed, a log older than one alice's
// device already accepted. Her send is refused with ErrStaleCheckpoint,
// as a StaleCheckpointError naming both trees; the device asked again
// once (two answers can cross) and then raised a rollback alarm with
// both signed checkpoints; the pin stays. On the code before this the
// send failed with ErrStaleCheckpoint too, and nothing else said so: a
// receiving device kept the envelope waiting for 30 minutes in silence.
func TestCheckpointOlderThanPin(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) { cfg.KeyDir.PublishBurst = 10 })
			aliceJIDs, alicePass := labtest.NewUser(t, srv)
			alicePath := filepath.Join(t.TempDir(), "alice")
			alice0 := gossipDevice(t, dep, dep, clinkdtest.Login(t, srv, aliceJIDs, alicePass), alicePath, "alice")
			if err := alice0.Start(ctx); err != nil {
				t.Fatal(err)
			}
			snapshotTables(ctx, t, dep, "old") // genesis, alice
			oldState, err := os.ReadFile(dep.keyFile + ".state")
			if err != nil {
				t.Fatal(err)
			}
			bc := clinkdtest.NewDevice(t, srv)
			if _, err := fresh(t, dep, bc, nil).PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			pinned, err := alice0.Directory().Checkpoint(ctx) // alice pins the log of 3
			if err != nil {
				t.Fatal(err)
			}
			alice0.Close()

			dep.stop()
			restoreTables(ctx, t, dep, "old")
			if err := os.WriteFile(dep.keyFile+".state", oldState, 0o600); err != nil {
				t.Fatal(err)
			}
			dep.start(t)

			alice := gossipDevice(t, dep, dep, clinkdtest.Login(t, srv, aliceJIDs, alicePass), alicePath, "alice")
			la := collect(ctx, alice)
			_, err = alice.Send(ctx, bc.JID().Bare(), "to bob", client.SendOptions{})
			var se *client.StaleCheckpointError
			if !errors.Is(err, client.ErrStaleCheckpoint) || !errors.As(err, &se) || se.Pinned.Size != pinned.Size || se.Served.Size != pinned.Size-1 {
				t.Fatalf("send on the rolled-back log = %v; want a StaleCheckpointError, %d entries served after %d", err, pinned.Size-1, pinned.Size)
			}
			t.Logf("refused: %v", err)
			la.wait(ctx, t, "alice's rollback alarm", func() bool { return len(la.alarms) > 0 })
			la.mu.Lock()
			a := la.alarms[0]
			la.mu.Unlock()
			if a.Kind != client.AlarmRollback || string(a.Evidence[0]) != string(pinned.Signed) || !strings.Contains(string(a.Evidence[1]), "\n2\n") {
				t.Errorf("alarm = %v (evidence %q, %q); want a rollback with both checkpoints", a, a.Evidence[0], a.Evidence[1])
			}
			if cp, err := alice.Directory().PinnedCheckpoint(); err != nil || cp.Size != pinned.Size {
				t.Errorf("pin after the refusal = %+v, %v; want the log of %d kept", cp, err, pinned.Size)
			}
		})
	}
}
