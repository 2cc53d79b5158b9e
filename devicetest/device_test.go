package devicetest

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true, Prosody: true, Ejabberd: true}))
}

// deviceFor signs a user up on srv with a key store of its own, logs a
// device in and starts it (key published, announced to clinkd).
func deviceFor(t *testing.T, srv *lab.XMPPServer, d *daemon.Daemon, keys clinkdtest.KeyDirKeys, key string) (*client.Device, *keystore.Store) {
	t.Helper()
	dev, store, _, _ := accountFor(t, srv, d, keys, key)
	return dev, store
}

// accountFor is deviceFor that also returns the account's JID and
// password, for tests that log more sessions in as the same user.
func accountFor(t *testing.T, srv *lab.XMPPServer, d *daemon.Daemon, keys clinkdtest.KeyDirKeys, key string) (*client.Device, *keystore.Store, string, string) {
	t.Helper()
	j, pass := labtest.NewUser(t, srv)
	store, err := keystore.Create(filepath.Join(t.TempDir(), "keys"), []byte("device passphrase"), clinkdtest.Identity(t, key, j))
	if err != nil {
		t.Fatal(err)
	}
	c := clinkdtest.Login(t, srv, j, pass)
	dev, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: d.Component().Domain(), LogKey: keys.Verifier, VRFKey: keys.VRFKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return dev, store, j, pass
}

// TestDevices: alice and bob, as SDK devices with key stores, on each real
// server with real PostgreSQL: they publish keys, look each other up with
// proofs, exchange standard, enhanced (per-contact key, shared on first
// use) and timed messages, each verifying the sender's signature. The
// servers' storage and the database then hold no plaintext and no
// per-contact key. Finally an operator resets bob's binding and a new key
// is bound: alice refuses to send, and says why.
func TestDevices(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			keys := clinkdtest.NewKeyDirKeys(t)
			dbURL := labtest.NewDatabase(t)
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
				keys.Configure(c)
			})
			alice, aliceStore := deviceFor(t, srv, d, keys, "alice")
			bob, bobStore := deviceFor(t, srv, d, keys, "bob")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			bobJID, aliceJID := bob.Client().JID().Bare(), alice.Client().JID().Bare()

			plaintexts := []string{"standard hello " + hex.EncodeToString([]byte(t.Name())), "secure reply, per-contact key", "secure and timed"}
			exchange := []struct {
				from, to *client.Device
				toJID    jid.JID
				text     string
				opts     client.SendOptions
			}{
				{alice, bob, bobJID, plaintexts[0], client.SendOptions{}},
				{bob, alice, aliceJID, plaintexts[1], client.SendOptions{Enhanced: true}},
				{alice, bob, bobJID, plaintexts[2], client.SendOptions{Enhanced: true, TTL: time.Minute}},
			}
			for _, x := range exchange {
				id, err := x.from.Send(ctx, x.toJID, x.text, x.opts)
				if err != nil {
					t.Fatalf("send %q: %v", x.text, err)
				}
				m, err := x.to.Receive(ctx)
				if err != nil {
					t.Fatalf("receive %q: %v", x.text, err)
				}
				if m.ID != id || m.Text != x.text || !m.From.Equal(x.from.Client().JID().Bare()) || m.Enhanced != x.opts.Enhanced || m.Expires.IsZero() == (x.opts.TTL > 0) {
					t.Errorf("received %+v, want %q from %s (enhanced %v, timed %v)", m, x.text, x.from.Client().JID().Bare(), x.opts.Enhanced, x.opts.TTL > 0)
				}
				// The receipt reaches the sender naming the reader's device.
				if err := x.to.Acknowledge(ctx, m, client.Delivered); err != nil {
					t.Fatal(err)
				}
				for {
					ev, err := x.from.NextEvent(ctx)
					if err != nil {
						t.Fatalf("waiting for the receipt of %q: %v", x.text, err)
					}
					if r, ok := ev.(*client.Receipt); ok && r.ID == id {
						if r.Device != x.to.ID() || r.Device == "" {
							t.Errorf("the receipt of %q names device %q, want the reader's %q", x.text, r.Device, x.to.ID())
						}
						break
					}
				}
			}

			// Ciphertext only: no plaintext, no per-contact key, anywhere.
			stored, err := srv.DumpStorage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			db := clinkdtest.DumpDatabase(t, dbURL)
			aliceKey, ok1 := aliceStore.CurrentContactKey(bobJID.String())
			bobKey, ok2 := bobStore.CurrentContactKey(aliceJID.String())
			if !ok1 || !ok2 || !aliceKey.Equal(bobKey) {
				t.Fatal("alice and bob do not share a per-contact key")
			}
			secrets := append([]string{}, plaintexts...)
			secrets = append(secrets, hex.EncodeToString(aliceKey.Bytes()), base64.StdEncoding.EncodeToString(aliceKey.Bytes()))
			for _, s := range secrets {
				if strings.Contains(string(stored), s) {
					t.Errorf("server storage holds %q", s)
				}
				if strings.Contains(db, s) {
					t.Errorf("database holds %q", s)
				}
			}

			// The directory now binds another key to bob's JID (an operator
			// reset, then a publish). alice refuses and names the change.
			if _, err := d.KeyDir().Store().End(ctx, bobJID.String(), keylog.KindReset, "test: key swap", time.Now()); err != nil {
				t.Fatal(err)
			}
			thief, err := bob.Client().OpenKeyDirectory(client.KeyDirConfig{Service: d.Component().Domain(), Verifier: keys.Verifier, VRFKey: keys.VRFKey})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := thief.PublishKey(ctx, clinkdtest.Identity(t, "dave", bobJID.String()).PublicKey()); err != nil {
				t.Fatal(err)
			}
			_, err = alice.Send(ctx, bobJID, "must not be sent", client.SendOptions{})
			var kc *client.KeyChangeError
			if !errors.As(err, &kc) || !strings.Contains(err.Error(), bobJID.String()) {
				t.Errorf("send after a key swap = %v; want a KeyChangeError naming %s", err, bobJID)
			}
		})
	}
}
