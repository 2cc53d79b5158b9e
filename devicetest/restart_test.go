package devicetest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestDeviceAcrossClinkdRestart: a device that stays connected to its
// XMPP server while clinkd stops and a new clinkd starts without a
// handoff (what a crash or a plain restart leaves: the new clinkd knows
// no device) receives the timed messages sent to it afterwards, once
// each, because the device announces itself again every AnnounceEvery
// (docs/expiry.md, step 1), and nothing held before the restart comes
// back. Without the periodic announcement the message waited at clinkd
// until the device reconnected, which a device on a good link may not do
// for days.
func TestDeviceAcrossClinkdRestart(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			keys := clinkdtest.NewKeyDirKeys(t)
			cfg := clinkdtest.Config(t, srv)
			cfg.Database = daemon.DatabaseConfig{URL: labtest.NewDatabase(t), Migrate: true}
			keys.Configure(&cfg)
			cfg.Expiry.MinPeriod = time.Second
			d1, stop := clinkdtest.Run(t, cfg, clinkdtest.Logger(t))
			comp := d1.Component().Domain()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()

			const announceEvery = 3 * time.Second
			aliceAcct, bobAcct := newAccount(t, srv), newAccount(t, srv)
			alice := announcingDevice(t, ctx, srv, comp, keys, aliceAcct, "alice", announceEvery)
			bob := announcingDevice(t, ctx, srv, comp, keys, bobAcct, "bob", announceEvery)
			lb := listen(ctx, bob, true)

			before, err := alice.Send(ctx, bobAcct.bare(), "before the restart", client.SendOptions{TTL: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			lb.wait(ctx, t, "the message sent before the restart", func() bool { return lb.hasShown(before) })

			stop()
			d2 := clinkdtest.StartConfig(t, cfg, clinkdtest.Logger(t))
			if n, _ := d2.Relay().Held(); n != 0 {
				t.Fatalf("the new clinkd holds %d messages", n)
			}
			sent := time.Now()
			after, err := alice.Send(ctx, bobAcct.bare(), "after the restart", client.SendOptions{TTL: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			// Within about one announcement period (twice it, for a
			// loaded machine).
			wctx, wcancel := context.WithTimeout(ctx, 2*announceEvery)
			defer wcancel()
			lb.wait(wctx, t, "the message sent after the restart, within two announcement periods", func() bool { return lb.hasShown(after) })
			t.Logf("%s: bob, connected throughout, got the message %v after it was sent (announcing every %v)", srv.Kind, time.Since(sent).Round(10*time.Millisecond), announceEvery)
			// A few more announcements: nothing arrives twice.
			time.Sleep(2 * announceEvery)
			checkOnce(t, "bob", lb, []string{before, after})
		})
	}
}

// announcingDevice starts a device of acct on its own key store that
// announces itself to comp every announceEvery.
func announcingDevice(t *testing.T, ctx context.Context, srv *lab.XMPPServer, comp jid.JID, keys clinkdtest.KeyDirKeys, acct account, key string, announceEvery time.Duration) *client.Device {
	t.Helper()
	store, err := keystore.Create(filepath.Join(t.TempDir(), "keys"), []byte("device passphrase"), clinkdtest.Identity(t, key, acct.jid))
	if err != nil {
		t.Fatal(err)
	}
	c := clinkdtest.Login(t, srv, acct.jid, acct.pass)
	dev, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: comp,
		VerifierKey: keys.Verifier, VRFKey: keys.VRFKey, AnnounceEvery: announceEvery})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", acct.jid, err)
	}
	return dev
}
