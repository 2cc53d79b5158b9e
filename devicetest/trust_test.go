package devicetest

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// The end-to-end tests of issue 12, items 3 and 4: "the server cannot
// swap a user's key unseen", played by a malicious operator on both
// servers with real PostgreSQL.

// trustDevice logs acct in with a key store of its own (made from the
// test key named key on first use) and starts it, with the
// self-monitoring period given.
func trustDevice(t *testing.T, srv *lab.XMPPServer, d *daemon.Daemon, keys clinkdtest.KeyDirKeys, acct account, key string, monitor time.Duration) *client.Device {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys")
	store, err := keystore.Create(path, []byte("device passphrase"), clinkdtest.Identity(t, key, acct.jid))
	if err != nil {
		t.Fatal(err)
	}
	c := clinkdtest.Login(t, srv, acct.jid, acct.pass)
	dev, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: d.Component().Domain(),
		VerifierKey: keys.Verifier, VRFKey: keys.VRFKey, MonitorEvery: monitor})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Start(t.Context()); err != nil {
		t.Fatalf("start %s: %v", acct.jid, err)
	}
	return dev
}

// TestKeySwapByReset plays the operator: bob publishes his key,
// alice sends "hello 1" (a first contact: shown with the fingerprint
// and log index, unverified); the operator resets bob's binding and logs
// in as bob from a fresh device, which publishes the operator's key.
// alice's sends are refused, every time, with both fingerprints and the
// log entries that explain the change, until she accepts the new key;
// bob's real device, still running, raises an own-key alarm naming the
// reset and the operator's key within one monitoring period (2 s here).
// On the code before this, alice's second send went through, sealed to
// the operator's key, and bob's device said nothing.
func TestKeySwapByReset(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			aliceAcct, bobAcct := newAccount(t, srv), newAccount(t, srv)
			const period = 2 * time.Second
			alice := trustDevice(t, srv, d, keys, aliceAcct, "alice", 0)
			bob := trustDevice(t, srv, d, keys, bobAcct, "bob", period)
			la, lb := listen(ctx, alice, true), listen(ctx, bob, true)

			sendAndShow(ctx, t, alice, bobAcct.bare(), lb, "hello 1")
			bobKey := alice.Directory()
			res, err := bobKey.LookupKeys(ctx, bobAcct.jid)
			if err != nil {
				t.Fatal(err)
			}
			la.wait(ctx, t, "alice's first contact with bob", func() bool { return len(la.contacts) == 1 })
			la.mu.Lock()
			if c := la.contacts[0]; c.JID != bobAcct.jid || c.Fingerprint != res[0].Key.Fingerprint || c.Index != res[0].Key.Index {
				t.Errorf("first contact = %+v; want bob's key %x at log index %d", c, res[0].Key.Fingerprint, res[0].Key.Index)
			}
			la.mu.Unlock()
			if c, ok := alice.Contact(bobAcct.jid); !ok || c.State != client.Unverified {
				t.Errorf("alice's contact bob = %+v, %v; want unverified", c, ok)
			}

			// The operator: reset, and a fresh device publishing its key.
			endIdx, err := d.KeyDir().Store().End(ctx, bobAcct.jid, keylog.KindReset, "operator swap", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			trustDevice(t, srv, d, keys, bobAcct, "dave", 0)

			for try := range 3 {
				_, err := alice.Send(ctx, bobAcct.bare(), "hello 2", client.SendOptions{})
				var kc *client.KeyChangeError
				if !errors.As(err, &kc) || !kc.Unaccepted || len(kc.Changes) != 1 || kc.Changes[0].New == nil ||
					kc.Changes[0].Old != res[0].Key.Fingerprint || kc.Changes[0].NewVersion != 3 || kc.Changes[0].OldVersion != 1 {
					t.Fatalf("alice's send %d after the swap = %v; want it refused with the change of bob's key from version 1 to 3", try+1, err)
				}
				t.Logf("send %d refused: %v", try+1, err)
			}
			_ = endIdx

			// bob's real device: own-key alarms, from its periodic
			// monitoring, that name the reset and the operator's publish,
			// each once and in order: one alarm when a monitoring round
			// saw both, two when one came between them (on a loaded
			// machine the fresh device takes seconds to publish).
			start := time.Now()
			entries := func() (kinds []string) {
				for _, a := range lb.alarms {
					for _, e := range a.Entries {
						kinds = append(kinds, e.Kind)
					}
				}
				return kinds
			}
			lb.wait(ctx, t, "bob's own-key alarms", func() bool { return slices.Contains(entries(), "publish") })
			lb.mu.Lock()
			alarms, kinds := slices.Clone(lb.alarms), entries()
			lb.mu.Unlock()
			for _, a := range alarms {
				if a.Kind != client.AlarmOwnKey {
					t.Errorf("bob's alarm = %+v; want own-key alarms only", a)
				}
				t.Logf("bob's alarm %v after the swap (monitoring every %v): %s", time.Since(start).Round(100*time.Millisecond), period, a.Text)
			}
			if !slices.Equal(kinds, []string{"reset", "publish"}) {
				t.Errorf("bob's alarms name the entries %q; want the reset and the operator's publish, once each", kinds)
			}
			if st := bob.Alarms(); len(st) != len(alarms) || slices.ContainsFunc(st, func(a keystore.Alarm) bool { return a.Kind != keystore.AlarmOwnKey }) {
				t.Errorf("bob's key store keeps alarms %+v; want the %d own-key alarms raised", st, len(alarms))
			}

			// alice accepts the change: sending works again.
			if c, err := alice.AcceptKey(bobAcct.jid, ""); err != nil || c.State != client.Unverified {
				t.Fatalf("AcceptKey(bob) = %+v, %v", c, err)
			}
			if _, err := alice.Send(ctx, bobAcct.bare(), "hello 3", client.SendOptions{}); err != nil {
				t.Fatalf("send after accepting = %v", err)
			}
		})
	}
}

// TestSafetyCodes: a first contact's key is used and the contact is
// unverified; the two users' safety codes are equal on both devices, and
// comparing them marks the contact verified (a wrong code does not);
// when the verified contact's key changes (a reset and a new device),
// sending is refused until the change is accepted, and accepting needs
// the new safety code. On the code before this there were no safety
// codes and the second send after the change went through.
func TestSafetyCodes(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			aliceAcct, bobAcct := newAccount(t, srv), newAccount(t, srv)
			alice := trustDevice(t, srv, d, keys, aliceAcct, "alice", 0)
			bob := trustDevice(t, srv, d, keys, bobAcct, "bob", 0)
			lb := listen(ctx, bob, true)
			sendAndShow(ctx, t, alice, bobAcct.bare(), lb, "first contact")
			if c, ok := alice.Contact(bobAcct.jid); !ok || c.State != client.Unverified {
				t.Fatalf("alice's contact bob = %+v, %v; want unverified", c, ok)
			}
			codeA, err := alice.SafetyCode(bobAcct.jid)
			if err != nil {
				t.Fatal(err)
			}
			codeB, err := bob.SafetyCode(aliceAcct.jid)
			if err != nil {
				t.Fatal(err)
			}
			if codeA != codeB || len(codeA) != 35 {
				t.Fatalf("safety codes %q (alice's) and %q (bob's); want one code of six groups of five digits", codeA, codeB)
			}
			if _, err := alice.VerifyContact(bobAcct.jid, "00000 00000 00000 00000 00000 00000"); !errors.Is(err, client.ErrSafetyCode) {
				t.Fatalf("VerifyContact(wrong code) = %v, want ErrSafetyCode", err)
			}
			if c, err := alice.VerifyContact(bobAcct.jid, codeB); err != nil || c.State != client.Verified {
				t.Fatalf("VerifyContact(bob's code) = %+v, %v; want verified", c, err)
			}

			// bob's key changes.
			if _, err := d.KeyDir().Store().End(ctx, bobAcct.jid, keylog.KindReset, "new phone", time.Now()); err != nil {
				t.Fatal(err)
			}
			bob2 := trustDevice(t, srv, d, keys, bobAcct, "dave", 0)
			_, err = alice.Send(ctx, bobAcct.bare(), "after the change", client.SendOptions{})
			var kc *client.KeyChangeError
			if !errors.As(err, &kc) || !kc.Unaccepted || !kc.Changes[0].Verified {
				t.Fatalf("send to bob's new key = %v; want refused, the change of a verified key", err)
			}
			if _, err := alice.AcceptKey(bobAcct.jid, ""); !errors.Is(err, client.ErrSafetyCodeRequired) {
				t.Fatalf("AcceptKey(bob, no code) = %v, want ErrSafetyCodeRequired", err)
			}
			if _, err := alice.AcceptKey(bobAcct.jid, codeB); !errors.Is(err, client.ErrSafetyCode) {
				t.Fatalf("AcceptKey(bob, the old code) = %v, want ErrSafetyCode", err)
			}
			if _, err := alice.Send(ctx, bobAcct.bare(), "still refused", client.SendOptions{}); !errors.As(err, &kc) {
				t.Fatalf("send after a refused accept = %v; want still refused", err)
			}
			// bob's new device learns alice's key by a message from her? It
			// needs her as a contact: it looks her up.
			if _, err := bob2.Directory().LookupKeys(ctx, aliceAcct.jid); err != nil {
				t.Fatal(err)
			}
			lb2 := listen(ctx, bob2, true)
			if _, err := bob2.Send(ctx, aliceAcct.bare(), "from bob's new phone", client.SendOptions{}); err != nil {
				t.Fatal(err)
			}
			_ = lb2
			newCode, err := bob2.SafetyCode(aliceAcct.jid)
			if err != nil {
				t.Fatal(err)
			}
			if c, err := alice.AcceptKey(bobAcct.jid, newCode); err != nil || c.State != client.Verified {
				t.Fatalf("AcceptKey(bob, the new code) = %+v, %v; want verified", c, err)
			}
			sendAndShow(ctx, t, alice, bobAcct.bare(), lb2, "to bob's new key, verified")
		})
	}
}
