package devicetest

import (
	"context"
	"errors"
	"fmt"
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

// The end-to-end tests of issue 16, "A device SDK an app team can ship":
// a chat between SDK devices, on both servers with real PostgreSQL,
// survives what an app meets in the field.

// account is a user of the lab.
type account struct {
	jid, pass string
}

func newAccount(t *testing.T, srv *lab.XMPPServer) account {
	t.Helper()
	j, p := labtest.NewUser(t, srv)
	return account{j, p}
}

func (a account) bare() jid.JID { return jid.MustParse(a.jid) }

// phone is one device of an account: a key store file of its own, made
// on first use from the test key named key.
type phone struct {
	acct  account
	store string // key store path
	key   string
}

func newPhone(t *testing.T, acct account, key string) phone {
	return phone{acct: acct, store: filepath.Join(t.TempDir(), "keys"), key: key}
}

// open logs the phone in (through addr when set, else the server's c2s
// port, with tune applied to its session's config) and builds its
// device, not started. It ends with the test.
func (p phone) open(t *testing.T, srv *lab.XMPPServer, d *daemon.Daemon, keys clinkdtest.KeyDirKeys, addr string, tune func(*client.Config)) *client.Device {
	t.Helper()
	store, err := keystore.Open(p.store, []byte("device passphrase"))
	if err != nil {
		store, err = keystore.Create(p.store, []byte("device passphrase"), clinkdtest.Identity(t, p.key, p.acct.jid))
	}
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = srv.C2SAddr
	}
	cfg := client.Config{Addr: addr, JID: p.acct.bare(), Password: p.acct.pass, TLS: clinkdtest.TLSConfig(srv)}
	if tune != nil {
		tune(&cfg)
	}
	c, err := client.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatalf("login %s: %v", p.acct.jid, err)
	}
	t.Cleanup(func() { c.Close() })
	dev, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: d.Component().Domain(), VerifierKey: keys.Verifier, VRFKey: keys.VRFKey})
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

// start is open, then Start, which must succeed.
func (p phone) start(t *testing.T, srv *lab.XMPPServer, d *daemon.Daemon, keys clinkdtest.KeyDirKeys) *client.Device {
	t.Helper()
	dev := p.open(t, srv, d, keys, "", nil)
	if err := dev.Start(t.Context()); err != nil {
		t.Fatalf("start %s: %v", p.acct.jid, err)
	}
	return dev
}

// sendAndShow sends an enhanced message from one device to another's
// user and waits until the recipient's app has it, shown or carried by
// a key change.
func sendAndShow(ctx context.Context, t *testing.T, from *client.Device, to jid.JID, l *listener, text string) string {
	t.Helper()
	id, err := from.Send(ctx, to, text, client.SendOptions{Enhanced: true})
	if err != nil {
		t.Fatalf("send %q to %s: %v", text, to, err)
	}
	l.wait(ctx, t, fmt.Sprintf("%q (%s)", text, id), func() bool { return l.hasShown(id) || l.changedWith(id) })
	return id
}

// changedWith reports whether a key change carried message id; l.mu is
// held.
func (l *listener) changedWith(id string) bool {
	for _, c := range l.changes {
		if c.Message != nil && c.Message.ID == id {
			return true
		}
	}
	return false
}

// checkOnce fails the test unless every message of ids reached l exactly
// once, and l had nothing dropped.
func checkOnce(t *testing.T, who string, l *listener, ids []string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	count := map[string]int{}
	for _, m := range l.shown {
		count[m.ID]++
	}
	for _, c := range l.changes {
		if c.Message != nil {
			count[c.Message.ID]++
		}
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Errorf("%s got message %s %d times, want once", who, id, count[id])
		}
	}
	if len(l.errs) != 0 {
		t.Errorf("%s dropped %v; want nothing dropped", who, l.errs)
	}
}

// TestMoveToNewDevice: bob moves to a new device (an operator resets his
// key binding and the new device publishes a new key) in the middle of
// enhanced conversations with alice and carol. No message is lost in
// either direction:
//
//   - alice writes first: her sends are refused with the change
//     (nothing sent) until she accepts bob's new key, and the next one
//     shares a new per-contact key with bob's new key before sealing. On the code before this, the second
//     send sealed with the key shared with bob's old device, and the new
//     device dropped it (no contact key), with no word to alice.
//   - bob writes to carol first: carol's device verifies his key share
//     and message with his new key and reports the change (KeyChanged)
//     before the message. On the code before this, both were dropped
//     ("key changed", then no contact key). TestKeyChangeNoticed covers a
//     standard message revealing the change, carried by the KeyChanged.
//
// Then messages flow both ways, each shown exactly once, and nothing is
// dropped anywhere.
func TestMoveToNewDevice(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			aliceAcct, bobAcct, carolAcct := newAccount(t, srv), newAccount(t, srv), newAccount(t, srv)
			alice := newPhone(t, aliceAcct, "alice").start(t, srv, d, keys)
			carol := newPhone(t, carolAcct, "carol").start(t, srv, d, keys)
			bobOld := newPhone(t, bobAcct, "bob").start(t, srv, d, keys)
			la, lc, lbOld := listen(ctx, alice, true), listen(ctx, carol, true), listen(ctx, bobOld, true)
			var toAlice, toBob, toCarol []string

			// Enhanced conversations with bob's first device: contact keys
			// shared both ways.
			toBob = append(toBob, sendAndShow(ctx, t, alice, bobAcct.bare(), lbOld, "alice to bob's old device"))
			toAlice = append(toAlice, sendAndShow(ctx, t, bobOld, aliceAcct.bare(), la, "bob's old device to alice"))
			toBob = append(toBob, sendAndShow(ctx, t, carol, bobAcct.bare(), lbOld, "carol to bob's old device"))
			toCarol = append(toCarol, sendAndShow(ctx, t, bobOld, carolAcct.bare(), lc, "bob's old device to carol"))
			checkOnce(t, "bob's old device", lbOld, toBob)
			lastLookup := time.Now() // carol's device verified bob's old key before now

			// The move: bob's old device is gone, an operator resets his
			// binding, the new device publishes its key.
			bobOld.Close()
			if _, err := d.KeyDir().Store().End(ctx, bobAcct.jid, keylog.KindReset, "test: bob's new phone", time.Now()); err != nil {
				t.Fatal(err)
			}
			bob := newPhone(t, bobAcct, "dave").start(t, srv, d, keys)
			lb := listen(ctx, bob, true)
			toBob = nil

			// alice writes first: told of the change, nothing sent; then
			// a new contact key goes to bob's new key with the message.
			_, err := alice.Send(ctx, bobAcct.bare(), "must wait for the change to be shown", client.SendOptions{Enhanced: true})
			var kc *client.KeyChangeError
			if !errors.As(err, &kc) || len(kc.Changes) != 1 || kc.Changes[0].JID != bobAcct.jid || kc.Changes[0].New == nil {
				t.Fatalf("alice's send after bob's move = %v; want a KeyChangeError naming bob's new key", err)
			}
			// Sending again is refused too, until alice accepts the new
			// key (docs/trust.md).
			if _, err := alice.Send(ctx, bobAcct.bare(), "still waiting for the change to be accepted", client.SendOptions{Enhanced: true}); !errors.As(err, &kc) || !kc.Unaccepted {
				t.Fatalf("alice's second send before accepting = %v; want refused", err)
			}
			if _, err := alice.AcceptKey(bobAcct.jid, ""); err != nil {
				t.Fatalf("alice accepts bob's new key: %v", err)
			}
			toBob = append(toBob, sendAndShow(ctx, t, alice, bobAcct.bare(), lb, "alice to bob's new device, after the change"))

			// bob writes to carol first. The new device signs after carol
			// last verified bob's old key (a move takes longer than a
			// second; the wait makes it so on any machine).
			time.Sleep(time.Until(lastLookup.Truncate(time.Second).Add(time.Second)))
			first := sendAndShow(ctx, t, bob, carolAcct.bare(), lc, "bob's new device to carol, first")
			toCarol = append(toCarol, first)
			// The key share before the message revealed the change: one
			// KeyChanged, about bob's new key, before his message.
			lc.mu.Lock()
			if len(lc.changes) != 1 || lc.changes[0].Change.JID != bobAcct.jid || lc.changes[0].Change.New == nil {
				t.Errorf("carol's key changes = %v; want one, of bob's new key", lc.changes)
			} else if m := lc.changes[0].Message; m != nil && m.ID != first {
				t.Errorf("carol's key change carries message %s; want none (the key share) or bob's %s", m.ID, first)
			}
			lc.mu.Unlock()
			// carol accepts bob's new key before she writes to him
			// (docs/trust.md).
			if _, err := carol.AcceptKey(bobAcct.jid, ""); err != nil {
				t.Fatalf("carol accepts bob's new key: %v", err)
			}

			// Then both ways, with both.
			for i := range 3 {
				toBob = append(toBob, sendAndShow(ctx, t, alice, bobAcct.bare(), lb, fmt.Sprintf("alice to bob %d", i)))
				toAlice = append(toAlice, sendAndShow(ctx, t, bob, aliceAcct.bare(), la, fmt.Sprintf("bob to alice %d", i)))
				toBob = append(toBob, sendAndShow(ctx, t, carol, bobAcct.bare(), lb, fmt.Sprintf("carol to bob %d", i)))
				toCarol = append(toCarol, sendAndShow(ctx, t, bob, carolAcct.bare(), lc, fmt.Sprintf("bob to carol %d", i)))
			}
			checkOnce(t, "alice", la, toAlice)
			checkOnce(t, "bob's new device", lb, toBob)
			checkOnce(t, "carol", lc, toCarol)
			t.Logf("%s: alice %s; bob %s; carol %s", srv.Kind, receiveStats(alice), receiveStats(bob), receiveStats(carol))
		})
	}
}

// TestOldDeviceAfterReset: bob's old device comes back after an operator
// reset his key binding. Start says why it stops (ErrOwnKeyReset, with
// the log entry that ended the binding) and publishes nothing, however
// often it is started; only PublishKeyAgain binds the key again. After
// another device bound a new key, Start says so (ErrOwnKeyReplaced) and
// publishes nothing either. On the code before this, the first Start
// after the reset published the reset key again (or, with the pins kept,
// returned a wrapped KeyChangeError, and the second Start published it).
func TestOldDeviceAfterReset(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			aliceAcct, bobAcct := newAccount(t, srv), newAccount(t, srv)
			alice := newPhone(t, aliceAcct, "alice").start(t, srv, d, keys)
			old := newPhone(t, bobAcct, "bob")
			first := old.start(t, srv, d, keys)
			own, err := first.CheckKey(ctx)
			if err != nil || own.Status != client.KeyBound {
				t.Fatalf("CheckKey after Start = %+v, %v; want bound", own, err)
			}
			first.Close()
			if _, err := d.KeyDir().Store().End(ctx, bobAcct.jid, keylog.KindReset, "test: lost phone", time.Now()); err != nil {
				t.Fatal(err)
			}
			bobKey := func() *client.VerifiedKey {
				t.Helper()
				res, err := alice.Directory().LookupKeys(ctx, bobAcct.jid)
				var kc *client.KeyChangeError
				if err != nil && !errors.As(err, &kc) || len(res) != 1 {
					t.Fatalf("look bob up: %v %v", res, err)
				}
				return res[0].Key
			}

			for i := range 2 {
				dev := old.open(t, srv, d, keys, "", nil)
				err := dev.Start(ctx)
				var oe *client.OwnKeyError
				if !errors.Is(err, client.ErrOwnKeyReset) || !errors.As(err, &oe) || oe.Own.Ended == nil || oe.Own.Ended.Kind != string(keylog.KindReset) {
					t.Fatalf("Start %d of the old device after the reset = %v; want ErrOwnKeyReset naming the reset", i+1, err)
				}
				if !strings.Contains(err.Error(), "not published again") {
					t.Errorf("Start's error %q does not say the key is not published again", err)
				}
				if _, err := dev.PublishKey(ctx); !errors.Is(err, client.ErrOwnKeyReset) {
					t.Errorf("PublishKey of the reset key = %v; want ErrOwnKeyReset", err)
				}
				if k := bobKey(); k != nil {
					t.Fatalf("after Start %d of the old device the directory binds %x to bob; want no key (the reset kept)", i+1, k.Fingerprint)
				}
				dev.Close()
			}

			// The user chooses to trust the old device again.
			dev := old.open(t, srv, d, keys, "", nil)
			k, err := dev.PublishKeyAgain(ctx)
			if err != nil {
				t.Fatalf("PublishKeyAgain = %v", err)
			}
			if err := dev.Start(ctx); err != nil {
				t.Fatalf("Start after PublishKeyAgain = %v", err)
			}
			if got := bobKey(); got == nil || got.Fingerprint != k.Fingerprint {
				t.Fatalf("bob's key after PublishKeyAgain = %v; want %x", got, k.Fingerprint)
			}
			dev.Close()

			// Another reset, and a new device binds its key: the old one
			// says it was replaced.
			if _, err := d.KeyDir().Store().End(ctx, bobAcct.jid, keylog.KindReset, "test: new phone", time.Now()); err != nil {
				t.Fatal(err)
			}
			newKey := newPhone(t, bobAcct, "dave").start(t, srv, d, keys)
			newOwn, err := newKey.CheckKey(ctx)
			if err != nil || newOwn.Status != client.KeyBound {
				t.Fatalf("the new device's key: %+v, %v", newOwn, err)
			}
			dev = old.open(t, srv, d, keys, "", nil)
			err = dev.Start(ctx)
			var oe *client.OwnKeyError
			if !errors.Is(err, client.ErrOwnKeyReplaced) || !errors.As(err, &oe) || oe.Own.Key == nil || oe.Own.Key.Fingerprint != newOwn.Key.Fingerprint {
				t.Fatalf("Start of the old device after a new key = %v; want ErrOwnKeyReplaced naming the new key", err)
			}
			if _, err := dev.PublishKeyAgain(ctx); !errors.Is(err, client.ErrOwnKeyReplaced) {
				t.Errorf("PublishKeyAgain over another device's key = %v; want ErrOwnKeyReplaced", err)
			}
			if got := bobKey(); got == nil || got.Fingerprint != newOwn.Key.Fingerprint {
				t.Errorf("bob's key = %v; want the new device's", got)
			}
		})
	}
}

// TestRefusedTimed: a timed message whose validity period clinkd
// refuses returns a typed refusal with clinkd's bounds, and the
// recipient gets nothing; one within them is accepted. On the code
// before this, Send returned the id and nil, and clinkd's error reply sat
// in the sender's inbox.
func TestRefusedTimed(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv, func(c *daemon.Config) {
				c.Expiry.MinPeriod, c.Expiry.MaxPeriod = 10*time.Second, 2*time.Hour
				c.Expiry.UnseenMaxPeriod = time.Hour
			})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			aliceAcct, bobAcct := newAccount(t, srv), newAccount(t, srv)
			alice := newPhone(t, aliceAcct, "alice").start(t, srv, d, keys)
			bob := newPhone(t, bobAcct, "bob").start(t, srv, d, keys)
			lb := listen(ctx, bob, true)
			la := listen(ctx, alice, false)
			for _, ttl := range []time.Duration{time.Second, 3 * time.Hour} {
				id, err := alice.Send(ctx, bobAcct.bare(), fmt.Sprintf("valid for %v", ttl), client.SendOptions{Enhanced: true, TTL: ttl})
				var re *client.RefusedError
				if !errors.Is(err, client.ErrRefused) || !errors.As(err, &re) {
					t.Fatalf("send with TTL %v = %q, %v; want a RefusedError", ttl, id, err)
				}
				if re.ID != id || id == "" || !re.To.Equal(bobAcct.bare()) || re.Condition != "not-acceptable" || re.Type != "modify" ||
					re.MinValidity != 10*time.Second || re.MaxValidity != 2*time.Hour || !strings.Contains(re.Text, "validity period") {
					t.Errorf("refusal of TTL %v = %+v; want not-acceptable (modify) for %s with bounds 10s and 2h", ttl, re, id)
				}
			}
			ok, err := alice.Send(ctx, bobAcct.bare(), "valid for a minute", client.SendOptions{Enhanced: true, TTL: time.Minute})
			if err != nil {
				t.Fatalf("send with TTL 1m = %v", err)
			}
			lb.wait(ctx, t, "the accepted timed message", func() bool { return lb.hasShown(ok) })
			if ids := lb.shownIDs(); len(ids) != 1 {
				t.Errorf("bob was shown %v; want only the accepted message %s", ids, ok)
			}
			la.mu.Lock()
			if len(la.refused) != 0 {
				t.Errorf("alice got refusals as events too: %v; Send returned them", la.refused)
			}
			la.mu.Unlock()
		})
	}
}

// TestLinkCut: bob's connection is cut for 30 seconds (a TCP proxy
// between his device and the server resets it and refuses new ones),
// while alice keeps writing to him and he to her. When the link comes
// back, his session resumes its stream (XEP-0198): every message arrives
// exactly once on both sides, bob's sends made during the cut are
// accepted by clinkd, alice gets her receipts, and nothing is dropped.
// On the code before this, the cut ended bob's session for good.
func TestLinkCut(t *testing.T) {
	t.Parallel()
	const cut = 30 * time.Second
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			aliceAcct, bobAcct := newAccount(t, srv), newAccount(t, srv)
			alice := newPhone(t, aliceAcct, "alice").start(t, srv, d, keys)
			proxy := clinkdtest.NewProxy(t, srv.C2SAddr)
			bob := newPhone(t, bobAcct, "bob").open(t, srv, d, keys, proxy.Addr(), func(c *client.Config) {
				c.BackoffMin, c.BackoffMax = 200*time.Millisecond, 2*time.Second
			})
			if err := bob.Start(ctx); err != nil {
				t.Fatal(err)
			}
			la, lb := listen(ctx, alice, true), listen(ctx, bob, true)
			toBob := []string{sendAndShow(ctx, t, alice, bobAcct.bare(), lb, "before the cut")}
			toAlice := []string{sendAndShow(ctx, t, bob, aliceAcct.bare(), la, "before the cut, from bob")}

			proxy.Down()
			lb.wait(ctx, t, "bob's device noticing the cut", func() bool { return len(lb.conns) > 0 })
			type sent struct {
				id  string
				err error
			}
			fromBob := make(chan sent, 4)
			go func() {
				for i := range 4 {
					id, err := bob.Send(ctx, aliceAcct.bare(), fmt.Sprintf("bob during the cut %d", i), client.SendOptions{Enhanced: i%2 == 0})
					fromBob <- sent{id, err}
				}
			}()
			for i := range 4 {
				opts := client.SendOptions{Enhanced: i%2 == 1}
				if i == 3 {
					opts.TTL = 5 * time.Minute // a timed one too: clinkd holds it for bob's device
				}
				id, err := alice.Send(ctx, bobAcct.bare(), fmt.Sprintf("alice during the cut %d", i), opts)
				if err != nil {
					t.Fatalf("alice's send during bob's cut: %v", err)
				}
				toBob = append(toBob, id)
			}
			time.Sleep(cut) // the outage
			proxy.Up()

			for range 4 {
				s := <-fromBob
				if s.err != nil {
					t.Fatalf("bob's send during the cut = %v; want accepted once the link is back", s.err)
				}
				toAlice = append(toAlice, s.id)
			}
			lb.wait(ctx, t, "alice's messages at bob's", func() bool {
				for _, id := range toBob {
					if !lb.hasShown(id) {
						return false
					}
				}
				return true
			})
			la.wait(ctx, t, "bob's messages at alice's, and her receipts", func() bool {
				for _, id := range toAlice {
					if !la.hasShown(id) {
						return false
					}
				}
				for _, id := range toBob[:3] { // the ordinary ones
					if la.receiptsFor(id) == 0 {
						return false
					}
				}
				return true
			})
			// Both sides answered a ping after everything: anything
			// repeated would have arrived by now.
			for _, dev := range []*client.Device{alice, bob} {
				if err := dev.Client().Ping(ctx, d.Component().Domain()); err != nil {
					t.Fatal(err)
				}
			}
			checkOnce(t, "alice", la, toAlice)
			checkOnce(t, "bob", lb, toBob)
			lb.mu.Lock()
			var resumed bool
			for _, c := range lb.conns {
				if c.Up && !c.Resumed {
					t.Errorf("bob's device reconnected without resuming: %+v", lb.conns)
				}
				resumed = resumed || c.Up && c.Resumed
			}
			lb.mu.Unlock()
			if st := bob.Client().Stats(); !resumed || st.Resumed != 1 || st.Reconnects != 0 {
				t.Errorf("bob's session: resumed event %v, stats %+v; want one resumption, no new session", resumed, st)
			}
			t.Logf("%s: bob %s; session %+v", srv.Kind, receiveStats(bob), bob.Client().Stats())
		})
	}
}
