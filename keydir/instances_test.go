package keydir_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestInstancesShareTheLog: two clinkds over one database, keys and
// state file (a handoff's moment, docs/keydir.md), each on a link of its
// own. B answers lookups from what it keeps in memory (the map, records,
// keys, hashes, the checkpoint it signed) under its size lease, without a
// statement to PostgreSQL, yet what A publishes or ends
// shows in B's very next answer, verified on the device (VRF, map proof
// against the head, inclusion in the checkpoint the answer carries) and
// by checkRawLookup independently of the SDK.
func TestInstancesShareTheLog(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			tune := func(cfg *daemon.Config) { cfg.KeyDir.PublishBurst = 10 }
			a := startDeployment(t, srv, tune)
			b := &deployment{srv: srv, vkey: a.vkey, vrfKey: a.vrfKey, keyFile: a.keyFile, vrfFile: a.vrfFile, dbURL: a.dbURL, tune: tune}
			b.start(t)
			if a.d.Component().Domain().Equal(b.d.Component().Domain()) {
				t.Fatal("A and B share a component domain; want a link each")
			}
			alice, aliceAtA := a.device(t)
			bob := clinkdtest.NewDevice(t, srv)
			bobAtB := b.directory(t, bob, &client.MemoryPins{}, nil)
			carol, carolAtB := b.device(t)
			aliceJID, carolJID := alice.JID().Bare().String(), carol.JID().Bare().String()
			kA, kA2, kC := rsaKey(t, 3072), rsaKey(t, 3072), rsaKey(t, 3072)

			// B's memory warmed: carol's binding, its proofs, the
			// checkpoint, and alice proven absent.
			if _, err := carolAtB.PublishKey(ctx, kC); err != nil {
				t.Fatalf("carol PublishKey at B = %v", err)
			}
			for range 3 {
				res, err := bobAtB.LookupKeys(ctx, carolJID, aliceJID)
				if err != nil || res[0].Key == nil || res[0].Key.Fingerprint != fingerprint(kC) || res[1].Key != nil || res[1].Version != 0 {
					t.Fatalf("bob LookupKeys(carol, alice) at B = %+v, %v; want carol's key and alice proven absent", res, err)
				}
			}
			// The second and third were conditional lookups that B
			// answered "unchanged" (docs/protocol.md, "Conditional
			// lookups"); after each change below, B must answer in full.
			if n := bobAtB.UnchangedLookups(); n != 2 {
				t.Fatalf("B answered %d of bob's repeated lookups \"unchanged\", want 2", n)
			}

			steps := []struct {
				name    string
				change  func() error
				version int64
				key     *[32]byte // nil: ended
			}{
				{"alice publishes at A", func() error { _, err := aliceAtA.PublishKey(ctx, kA); return err }, 1, ptr(fingerprint(kA))},
				{"the operator resets alice through A", func() error {
					_, err := a.d.KeyDir().Store().End(ctx, aliceJID, keylog.KindReset, "test", time.Now())
					return err
				}, 2, nil},
				{"alice publishes again at A", func() error { _, err := aliceAtA.PublishKey(ctx, kA2); return err }, 3, ptr(fingerprint(kA2))},
			}
			for _, s := range steps {
				// B holds its size lease: it answers from memory without
				// reading the size row (docs/keydir.md, "Size leases"),
				// so only the lease gate makes A's change show.
				for !b.d.KeyDir().Store().Leased() {
					select {
					case <-ctx.Done():
						t.Fatalf("%s: B never held its size lease", s.name)
					case <-time.After(20 * time.Millisecond):
					}
				}
				// bob holds both JIDs at the size B last answered: his
				// lookup is conditional, and B, under its lease, must
				// not answer it "unchanged" after A's change.
				before := bobAtB.UnchangedLookups()
				if _, err := bobAtB.LookupKeys(ctx, aliceJID, carolJID); err != nil {
					t.Fatalf("%s: bob LookupKeys(alice, carol) at B before the change = %v", s.name, err)
				}
				unchanged := bobAtB.UnchangedLookups()
				if unchanged != before+1 {
					t.Fatalf("%s: bob's lookup before the change was not answered \"unchanged\"", s.name)
				}
				if err := s.change(); err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				res, err := bobAtB.LookupKeys(ctx, aliceJID, carolJID)
				if bobAtB.UnchangedLookups() != unchanged {
					t.Fatalf("%s: B answered bob's conditional lookup \"unchanged\" after A's change", s.name)
				}
				var kc *client.KeyChangeError
				if err != nil && (s.version == 1 || !errors.As(err, &kc)) {
					t.Fatalf("%s: bob LookupKeys(alice, carol) at B = %v", s.name, err)
				}
				got := res[0]
				switch {
				case got.Version != s.version:
					t.Fatalf("%s: bob LookupKeys(alice) at B = version %d, want %d (B served what it kept)", s.name, got.Version, s.version)
				case s.key == nil && (got.Key != nil || !got.Ended):
					t.Fatalf("%s: bob LookupKeys(alice) at B = %+v, want ended", s.name, got)
				case s.key != nil && (got.Key == nil || got.Key.Fingerprint != *s.key):
					t.Fatalf("%s: bob LookupKeys(alice) at B = %+v, want key %x", s.name, got, *s.key)
				case res[1].Key == nil || res[1].Key.Fingerprint != fingerprint(kC):
					t.Fatalf("%s: bob LookupKeys(carol) at B = %+v, want carol's key", s.name, res[1])
				}
				checkRawLookup(ctx, t, bob, b, carolJID)
			}
			checkRawLookup(ctx, t, bob, b, aliceJID)
			// And back: what B published, A serves.
			if res, err := aliceAtA.LookupKeys(ctx, carolJID); err != nil || res[0].Key == nil || res[0].Key.Fingerprint != fingerprint(kC) {
				t.Fatalf("alice LookupKeys(carol) at A = %+v, %v; want carol's key", res, err)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
