package keydir_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestConditionalLookups (docs/protocol.md, "Conditional lookups"), on
// each real server: a device that holds every JID it asks for at the
// log's size gets "unchanged" and nothing else, and uses what it
// verified; once the log grows it gets a full answer showing the change.
// Then the operator plays a dishonest server with the server's real
// answers: "unchanged" cannot take a device back to a tree it has moved
// past, cannot answer for a JID the device never verified or at a size it
// does not hold, and is refused past the device's maximum age, like a
// replayed full answer (the freeze window). TestDirectoryErrors checks
// that conditional lookups cost the same tokens as full ones, and
// TestInstancesShareTheLog that a second clinkd under its size lease
// never answers "unchanged" after another's append.
func TestConditionalLookups(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) { cfg.KeyDir.PublishBurst = 10 })
			var ahead atomic.Int64 // how far the devices' clock is ahead of time.Now
			now := func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
			alice, _ := dep.device(t)
			aliceKD := dep.directory(t, alice, &client.MemoryPins{}, now)
			bob, bobKD := dep.device(t)
			carol, carolKD := dep.device(t)
			bobJID, carolJID := bob.JID().Bare().String(), carol.JID().Bare().String()
			k1, k2 := rsaKey(t, 3072), rsaKey(t, 3072)
			if _, err := bobKD.PublishKey(ctx, k1); err != nil {
				t.Fatal(err)
			}
			if _, err := carolKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			size := func() int64 {
				n, err := dep.d.KeyDir().Store().Size(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			lookup := func(what string, wantKey [32]byte, wantUnchanged uint64) {
				t.Helper()
				res, err := aliceKD.LookupKeys(ctx, bobJID)
				var kc *client.KeyChangeError
				if err != nil && !errors.As(err, &kc) {
					t.Fatalf("%s: LookupKeys(bob) = %v", what, err)
				}
				if res[0].Key == nil || res[0].Key.Fingerprint != wantKey {
					t.Fatalf("%s: LookupKeys(bob) = %+v, want key %x", what, res[0], wantKey)
				}
				if n := aliceKD.UnchangedLookups(); n != wantUnchanged {
					t.Fatalf("%s: %d lookups answered \"unchanged\", want %d", what, n, wantUnchanged)
				}
			}
			raw := func(known int64, jids ...string) *keydirxml.Lookup1 {
				t.Helper()
				var res keydirxml.Lookup1
				if err := alice.IQ(ctx, stanza.GetIQ, dep.d.Component().Domain(), keydirxml.Lookup1{Known: known, JIDs: jids}, &res); err != nil {
					t.Fatalf("lookup %v known %d: %v", jids, known, err)
				}
				return &res
			}

			// Honest: a full answer, then "unchanged" while the log stays.
			lookup("first lookup", fingerprint(k1), 0)
			lookup("again, at the same size", fingerprint(k1), 1)
			size1 := size()
			before := raw(0, bobJID) // a full answer at size1
			unchanged := raw(size1, bobJID)
			if unchanged.Unchanged != size1 || unchanged.Checkpoint != "" || unchanged.Head != nil || len(unchanged.Entries) != 0 {
				t.Fatalf("lookup known %d = %+v; want only unchanged=%d", size1, unchanged, size1)
			}
			for _, known := range []int64{size1 - 1, size1 + 1, 1 << 62} {
				if res := raw(known, bobJID); res.Unchanged != 0 || res.Checkpoint == "" || len(res.Entries) != 1 {
					t.Errorf("lookup known %d at size %d = %+v; want a full answer", known, size1, res)
				}
			}

			// The log grows: bob's key reset, then a new one.
			if _, err := dep.d.KeyDir().Store().End(ctx, bobJID, keylog.KindReset, "lost phone", time.Now()); err != nil {
				t.Fatal(err)
			}
			if _, err := bobKD.PublishKey(ctx, k2); err != nil {
				t.Fatal(err)
			}
			lookup("after the change", fingerprint(k2), 1)
			lookup("again, at the new size", fingerprint(k2), 2)
			size2 := size()

			// The operator's "unchanged".
			attacks := []struct {
				name string
				kd   *client.KeyDirectory
				res  *keydirxml.Lookup1
				jid  string
				want error
			}{
				{"unchanged at the old size, to a device pinned past it", aliceKD, unchanged, bobJID, client.ErrBadAnswer},
				{"unchanged at the current size, for a JID the device never verified", aliceKD, &keydirxml.Lookup1{Unchanged: size2}, carolJID, client.ErrBadAnswer},
				{"unchanged at a size the device does not hold", aliceKD, &keydirxml.Lookup1{Unchanged: size2 + 1}, bobJID, client.ErrBadAnswer},
				{"unchanged to a device that holds nothing", fresh(t, dep, alice, now), &keydirxml.Lookup1{Unchanged: size2}, bobJID, client.ErrBadAnswer},
				{"unchanged with a checkpoint", aliceKD, &keydirxml.Lookup1{Unchanged: size2, Checkpoint: before.Checkpoint}, bobJID, client.ErrBadAnswer},
			}
			for _, a := range attacks {
				res := *a.res
				refuse(t, a.name, a.want, func() error { _, err := a.kd.VerifyLookup(ctx, &res, a.jid); return err })
			}
			// alice's pin moves past size2 without a lookup (her own
			// publish); the server's real "unchanged" of size2 must not
			// take her back.
			atSize2 := raw(size2, bobJID)
			if atSize2.Unchanged != size2 {
				t.Fatalf("lookup known %d = %+v; want unchanged", size2, atSize2)
			}
			if _, err := aliceKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			refuse(t, "unchanged at the size held, to a device whose pin moved past it", client.ErrBadAnswer, func() error {
				_, err := aliceKD.VerifyLookup(ctx, atSize2, bobJID)
				return err
			})
			lookup("after alice's publish", fingerprint(k2), 2)
			lookup("again, at that size", fingerprint(k2), 3)

			// A device that verified bob at size1 and is told "unchanged"
			// ever after: it keeps k1 while the head of size1 is within
			// its maximum age (the freeze window, as for the full answer
			// replayed), and refuses it after.
			frozen := fresh(t, dep, alice, now)
			if res, err := frozen.VerifyLookup(ctx, cloneLookup(before), bobJID); err != nil || res[0].Key.Fingerprint != fingerprint(k1) {
				t.Fatalf("VerifyLookup(full answer at size %d) = %+v, %v", size1, res, err)
			}
			replay := *unchanged
			if res, err := frozen.VerifyLookup(ctx, &replay, bobJID); err != nil || res[0].Key.Fingerprint != fingerprint(k1) {
				t.Fatalf("VerifyLookup(unchanged at %d) within the maximum age = %+v, %v; want k1 (the freeze window)", size1, res, err)
			}
			ahead.Store(int64(25 * time.Hour))
			refuse(t, "unchanged past the maximum age", client.ErrStaleCheckpoint, func() error { _, err := frozen.VerifyLookup(ctx, &replay, bobJID); return err })
			refuse(t, "the full answer past the maximum age", client.ErrStaleCheckpoint, func() error {
				_, err := fresh(t, dep, alice, now).VerifyLookup(ctx, cloneLookup(before), bobJID)
				return err
			})
		})
	}
}
