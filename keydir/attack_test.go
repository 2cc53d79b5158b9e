package keydir_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// The operator of the directory holds its database and its signing key.
// These tests play that operator: they take the server's real answers
// (through Prosody or ejabberd, from clinkd on PostgreSQL), change them as
// the operator could, and hand them to the device's verifier
// (client.KeyDirectory.VerifyLookup and VerifyHistory), or they roll the
// database back under clinkd. Every attack here is accepted by the v0
// device and server (client.TestV0AcceptsWhatV1Refuses shows the v0
// device accepting the first three; on v0, clinkd signed a rolled-back
// log after a restart).

// lookupRaw asks the directory for jids without verifying the answer.
func lookupRaw(ctx context.Context, t *testing.T, c *client.Client, dep *deployment, jids ...string) *keydirxml.Lookup1 {
	t.Helper()
	var res keydirxml.Lookup1
	if err := c.IQ(ctx, stanza.GetIQ, dep.d.Component().Domain(), keydirxml.Lookup1{JIDs: jids}, &res); err != nil {
		t.Fatalf("lookup %v: %v", jids, err)
	}
	return &res
}

func historyRaw(ctx context.Context, t *testing.T, c *client.Client, dep *deployment) *keydirxml.History1 {
	t.Helper()
	var res keydirxml.History1
	if err := c.IQ(ctx, stanza.GetIQ, dep.d.Component().Domain(), keydirxml.History1{From: 1}, &res); err != nil {
		t.Fatalf("history: %v", err)
	}
	return &res
}

func cloneLookup(l *keydirxml.Lookup1) *keydirxml.Lookup1 {
	c := *l
	c.Entries = append([]keydirxml.Entry1(nil), l.Entries...)
	return &c
}

func mustIndex(t *testing.T, dep *deployment, who string) [32]byte {
	t.Helper()
	x, _ := dep.d.KeyDir().Store().Index(jid.MustParse(who))
	return x
}

// TestOperatorAttacks: serving a reset key with a valid inclusion proof,
// claiming "no key" for a JID that has one, and omitting or reordering
// the owner's history are refused by the device, on each real server.
func TestOperatorAttacks(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) { cfg.KeyDir.PublishBurst = 10 })
			alice, aliceKD := dep.device(t)
			bob, bobKD := dep.device(t)
			bobJID, aliceJID := bob.JID().Bare().String(), alice.JID().Bare().String()
			k1, k2 := rsaKey(t, 3072), rsaKey(t, 3072)
			if _, err := aliceKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			if _, err := bobKD.PublishKey(ctx, k1); err != nil {
				t.Fatal(err)
			}
			// Before the reset: an honest answer binding k1.
			before := lookupRaw(ctx, t, alice, dep, bobJID)
			if _, err := dep.d.KeyDir().Store().End(ctx, bobJID, keylog.KindReset, "stolen phone", time.Now()); err != nil {
				t.Fatal(err)
			}
			if _, err := bobKD.PublishKey(ctx, k2); err != nil {
				t.Fatal(err)
			}
			honest := lookupRaw(ctx, t, alice, dep, bobJID)
			hist := historyRaw(ctx, t, bob, dep)
			if honest.Checkpoint != hist.Checkpoint || len(hist.Records) != 3 {
				t.Fatalf("the lookup and the history were answered at different checkpoints, or history has %d records", len(hist.Records))
			}
			if res, err := aliceKD.VerifyLookup(ctx, cloneLookup(honest), bobJID); err != nil || res[0].Key.Fingerprint != fingerprint(k2) || res[0].Version != 3 {
				t.Fatalf("VerifyLookup(honest) = %+v, %v; want k2 at version 3", res, err)
			}
			bobIndex := mustIndex(t, dep, bobJID)
			k1der := base64.StdEncoding.EncodeToString(must(x509.MarshalPKIXPublicKey(k1)))

			// 1a. The reset key k1, with its publish entry's valid
			// inclusion proof (from the same checkpoint) and the true
			// map proof.
			stale := cloneLookup(honest)
			r1 := hist.Records[0]
			e := &stale.Entries[0]
			e.Fingerprint, e.Index, e.Time, e.Version, e.Root, e.Proof, e.Key = r1.Fingerprint, r1.Index, r1.Time, r1.Version, r1.Root, r1.Proof, k1der
			refuse(t, "1a reset key with a valid inclusion proof", client.ErrNotCurrent, func() error { _, err := fresh(t, dep, alice, nil).VerifyLookup(ctx, stale, bobJID); return err })

			// 1b. The same, with a map proof made for k1's value in a map
			// of the operator's own.
			forged := cloneLookup(stale)
			var fake keylog.Map
			fp1 := fingerprint(k1)
			fake.Set(bobIndex, keylog.MapValue{Fingerprint: fp1, Entry: r1.Index, Version: 1})
			fake.Set(mustIndex(t, dep, aliceJID), keylog.MapValue{Fingerprint: fp1, Entry: 1, Version: 1})
			forged.Entries[0].Map = base64.StdEncoding.EncodeToString(fake.Prove(bobIndex).Marshal())
			refuse(t, "1b reset key with a forged map proof", client.ErrNotCurrent, func() error { _, err := fresh(t, dep, alice, nil).VerifyLookup(ctx, forged, bobJID); return err })

			// 1c. The whole answer from before the reset: refused by a
			// device pinned after it, and by a new device whose clock is
			// 25 h past that answer's head; a new device within max age
			// accepts it (the freeze window docs/keydir.md states).
			pinned := fresh(t, dep, alice, nil)
			if _, err := pinned.VerifyLookup(ctx, cloneLookup(honest), bobJID); err != nil {
				t.Fatal(err)
			}
			refuse(t, "1c old checkpoint to a pinned device", client.ErrStaleCheckpoint, func() error { _, err := pinned.VerifyLookup(ctx, cloneLookup(before), bobJID); return err })
			late := func() time.Time { return time.Now().Add(25 * time.Hour) }
			refuse(t, "1c old head to a device 25 h later", client.ErrStaleCheckpoint, func() error {
				_, err := fresh(t, dep, alice, late).VerifyLookup(ctx, cloneLookup(before), bobJID)
				return err
			})
			if res, err := fresh(t, dep, alice, nil).VerifyLookup(ctx, cloneLookup(before), bobJID); err != nil || res[0].Key.Fingerprint != fp1 {
				t.Errorf("1c old answer to a new device within max age = %+v, %v; want it accepted (the freeze window)", res, err)
			}

			// 2. "No key" for bob, who has one.
			none := func(mp keylog.MapProof) *keydirxml.Lookup1 {
				l := cloneLookup(honest)
				e := keydirxml.Entry1{JID: bobJID, Status: keydirxml.StatusNone, VRF: l.Entries[0].VRF, Map: base64.StdEncoding.EncodeToString(mp.Marshal())}
				l.Entries[0] = e
				return l
			}
			mp, err := keylog.ParseMapProof(must(base64.StdEncoding.DecodeString(honest.Entries[0].Map)))
			if err != nil {
				t.Fatal(err)
			}
			cut := mp
			cut.Type = keylog.MapProofEmpty
			refuse(t, "2a absence: the true path cut to an empty subtree", client.ErrBadAbsence, func() error { _, err := fresh(t, dep, alice, nil).VerifyLookup(ctx, none(cut), bobJID); return err })
			aliceRes := lookupRaw(ctx, t, alice, dep, aliceJID)
			amp, _ := keylog.ParseMapProof(must(base64.StdEncoding.DecodeString(aliceRes.Entries[0].Map)))
			aliceIdx := mustIndex(t, dep, aliceJID)
			aliceFP := must(keydirxml.DecodeFingerprint(aliceRes.Entries[0].Fingerprint))
			neighbour := keylog.MapProof{Type: keylog.MapProofOther, Siblings: amp.Siblings, Other: aliceIdx,
				OtherValue: keylog.MapValue{Fingerprint: aliceFP, Entry: aliceRes.Entries[0].Index, Version: 1}}
			refuse(t, "2b absence: another JID's leaf as terminal", client.ErrBadAbsence, func() error {
				_, err := fresh(t, dep, alice, nil).VerifyLookup(ctx, none(neighbour), bobJID)
				return err
			})
			var without keylog.Map
			without.Set(aliceIdx, neighbour.OtherValue)
			refuse(t, "2c absence proof from another map", client.ErrBadAbsence, func() error {
				_, err := fresh(t, dep, alice, nil).VerifyLookup(ctx, none(without.Prove(bobIndex)), bobJID)
				return err
			})
			// 2d. A device that saw bob at version 3, given "none" with
			// a valid absence proof of a forked log of the same size (the
			// operator signs it with the log's key): a fork.
			forkAnswer := forkedAbsence(t, dep, honest, bobIndex, aliceIdx, neighbour.OtherValue)
			forkAnswer.Entries[0].VRF = honest.Entries[0].VRF
			refuse(t, "2d absence from a forked log", client.ErrLogInconsistent, func() error { _, err := pinned.VerifyLookup(ctx, forkAnswer, bobJID); return err })

			// 3. Bob's history, changed. The honest one verifies.
			if h, err := bobKD.VerifyHistory(ctx, pages(hist)); err != nil || len(h) != 3 {
				t.Fatalf("VerifyHistory(honest) = %+v, %v", h, err)
			}
			edits := []struct {
				name string
				edit func(*keydirxml.History1)
				want error
			}{
				{"3 version 2 dropped", func(h *keydirxml.History1) { h.Records = append(h.Records[:1], h.Records[2:]...) }, client.ErrHistoryIncomplete},
				{"3 versions 2 and 3 swapped", func(h *keydirxml.History1) { h.Records[1], h.Records[2] = h.Records[2], h.Records[1] }, client.ErrHistoryIncomplete},
				{"3 version 3 twice", func(h *keydirxml.History1) { h.Records = append(h.Records, h.Records[2]) }, client.ErrHistoryIncomplete},
				{"3 the last version left out", func(h *keydirxml.History1) { h.Records = h.Records[:2] }, client.ErrHistoryIncomplete},
				{"3 every version left out", func(h *keydirxml.History1) { h.Records = nil }, client.ErrHistoryIncomplete},
				{"3 another JID's record as version 1", func(h *keydirxml.History1) {
					ah := historyRaw(ctx, t, alice, dep)
					h.Records[0] = ah.Records[0]
				}, client.ErrBadProof},
			}
			for _, ed := range edits {
				h := *hist
				h.Records = append([]keydirxml.Record1(nil), hist.Records...)
				ed.edit(&h)
				refuse(t, ed.name, ed.want, func() error { _, err := bobKD.VerifyHistory(ctx, pages(&h)); return err })
			}
			// Paging that stops early: a first page of one record,
			// claiming to be the last.
			short := *hist
			short.Records = hist.Records[:1]
			if _, err := bobKD.VerifyHistory(ctx, pages(&short)); !errors.Is(err, client.ErrHistoryIncomplete) {
				t.Errorf("3 paging stopped early = %v, want ErrHistoryIncomplete", err)
			}
		})
	}
}

// pages serves h as the only page of a history, whatever version is
// asked.
func pages(h *keydirxml.History1) func(context.Context, int64) (*keydirxml.History1, error) {
	return func(_ context.Context, from int64) (*keydirxml.History1, error) {
		c := *h
		if from > 1 {
			c.Records = nil
		}
		return &c, nil
	}
}

// fresh is a new v1 directory client for c with pins of its own.
func fresh(t *testing.T, dep *deployment, c *client.Client, now func() time.Time) *client.KeyDirectory {
	return dep.directory(t, c, &client.MemoryPins{}, now)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// refuse fails t unless f's error is want.
func refuse(t *testing.T, what string, want error, f func() error) {
	t.Helper()
	if err := f(); !errors.Is(err, want) {
		t.Errorf("%s: %v; want %v", what, err, want)
	}
}

// TestRollback: the database is rolled back (a backup of an earlier
// state restored) under a running clinkd, then across a restart, on each
// real server. clinkd refuses lookups and publishes, /readyz says why,
// the log's HTTP endpoints answer 503; once the newer rows are back it
// serves again. A stored hash changed below the signed size is reported
// as a divergence.
func TestRollback(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dep := startDeployment(t, srv, func(cfg *daemon.Config) { cfg.KeyDir.PublishBurst = 10 })
			alice, aliceKD := dep.device(t)
			bob, bobKD := dep.device(t)
			if _, err := aliceKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			snapshotTables(ctx, t, dep, "old") // 2 entries: genesis, alice
			if _, err := bobKD.PublishKey(ctx, rsaKey(t, 3072)); err != nil {
				t.Fatal(err)
			}
			c := clinkdtest.NewDevice(t, srv)
			ckd := dep.directory(t, c, &client.MemoryPins{}, nil)
			if _, err := ckd.PublishKey(ctx, rsaKey(t, 3072)); err != nil { // signs 4 entries
				t.Fatal(err)
			}
			snapshotTables(ctx, t, dep, "new")
			if code, checks := dep.readyz(t); code != 200 || checks["keydir"] != "ok" {
				t.Fatalf("readyz before = %d %v", code, checks)
			}

			// (a) Rolled back under the running clinkd.
			restoreTables(ctx, t, dep, "old")
			wantReason := "rolled back: the database log has 2 entries, the last signed checkpoint 4"
			refused := func(when string) {
				t.Helper()
				if _, err := aliceKD.LookupKeys(ctx, alice.JID().Bare().String()); condition(err) != stanza.InternalServerError {
					t.Errorf("%s: lookup = %v, want internal-server-error", when, err)
				}
				if _, err := bobKD.PublishKey(ctx, rsaKey(t, 3072)); condition(err) != stanza.InternalServerError {
					t.Errorf("%s: publish = %v, want internal-server-error", when, err)
				}
				if code, checks := dep.readyz(t); code != http.StatusServiceUnavailable || !strings.HasPrefix(checks["keydir"], wantReason) {
					t.Errorf("%s: readyz = %d %v, want 503 with %q", when, code, checks, wantReason)
				}
				for _, p := range []string{"/checkpoint", "/tile/entries/000.p/2"} {
					if code, body := getURL(t, dep.logURL+p); code != http.StatusServiceUnavailable || !strings.Contains(body, "not_ready") {
						t.Errorf("%s: GET %s = %d %s, want 503 not_ready", when, p, code, body)
					}
				}
				if n := countRows(ctx, t, dep); n != 2 {
					t.Errorf("%s: the rolled-back log has %d entries after the refusals, want 2 (nothing appended)", when, n)
				}
			}
			refused("running")

			// (b) Across a restart: refused before any request.
			dep.stop()
			dep.start(t)
			if code, checks := dep.readyz(t); code != http.StatusServiceUnavailable || !strings.HasPrefix(checks["keydir"], wantReason) {
				t.Errorf("restarted: readyz = %d %v, want 503 with %q", code, checks, wantReason)
			}
			aliceKD = dep.directory(t, alice, &client.MemoryPins{}, nil)
			bobKD = dep.directory(t, bob, &client.MemoryPins{}, nil)
			refused("restarted")

			// (c) The newer rows restored: ready, answers as before.
			restoreTables(ctx, t, dep, "new")
			if code, checks := dep.readyz(t); code != 200 || checks["keydir"] != "ok" {
				t.Errorf("restored: readyz = %d %v, want 200", code, checks)
			}
			if res, err := aliceKD.LookupKeys(ctx, c.JID().Bare().String()); err != nil || res[0].Key == nil {
				t.Errorf("restored: lookup = %+v, %v", res, err)
			}

			// (d) A stored hash changed below the signed size: the root
			// of the 4 signed entries (level 2), which the database then
			// gives another value.
			dep.exec(ctx, t, `UPDATE keydir_hashes SET hash = sha256(hash) WHERE idx = $1`, tlog.StoredHashIndex(2, 0))
			if code, checks := dep.readyz(t); code != http.StatusServiceUnavailable || !strings.HasPrefix(checks["keydir"], "diverged: the database log differs from the last signed checkpoint at size 4") {
				t.Errorf("diverged: readyz = %d %v", code, checks)
			}
		})
	}
}

var keydirTables = []string{"keydir_tree", "keydir_entries", "keydir_hashes", "keydir_events", "keydir_bindings", "keydir_map"}

// snapshotTables copies the key directory's tables, a backup.
func snapshotTables(ctx context.Context, t *testing.T, dep *deployment, name string) {
	t.Helper()
	conn := dep.db(ctx, t)
	for _, tb := range keydirTables {
		if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s_%s AS SELECT * FROM %s`, name, tb, tb)); err != nil {
			t.Fatal(err)
		}
	}
}

// restoreTables puts a backup back in place, as an operator restoring
// one would.
func restoreTables(ctx context.Context, t *testing.T, dep *deployment, name string) {
	t.Helper()
	conn := dep.db(ctx, t)
	qs := []string{`TRUNCATE keydir_map, keydir_bindings, keydir_events, keydir_entries, keydir_hashes`}
	for _, tb := range []string{"keydir_entries", "keydir_hashes", "keydir_events", "keydir_bindings", "keydir_map"} {
		qs = append(qs, fmt.Sprintf(`INSERT INTO %s SELECT * FROM %s_%s`, tb, name, tb))
	}
	qs = append(qs, fmt.Sprintf(`UPDATE keydir_tree t SET size = b.size, genesis = b.genesis, map_root = b.map_root, v1_time = b.v1_time FROM %s_keydir_tree b`, name))
	for _, q := range qs {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func countRows(ctx context.Context, t *testing.T, dep *deployment) int64 {
	t.Helper()
	var n int64
	if err := dep.db(ctx, t).QueryRow(ctx, `SELECT count(*) FROM keydir_entries`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDictionary: 200 users of a naming scheme publish into a v1 log; a
// dictionary of 1,000 likely JIDs that includes all 200 is tested against
// everything the log serves (checkpoint, every entry bundle and hash
// tile), raw and in hex, under every unkeyed function of a JID one could
// try (the v0 label, SHA-256 of the JID, of the VRF input, an HMAC keyed
// with the public VRF key, a VRF output under a key of the tester's):
// nothing matches. The control: a log migrated from v0 with 20 of the
// JIDs, where the same scan finds exactly those 20 (their v0 labels stay
// public), so a regression to unkeyed labels would be caught.
func TestDictionary(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	first := []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"}
	last := []string{"smith", "jones", "brown", "taylor", "wilson", "davies", "evans", "thomas", "johnson", "roberts",
		"walker", "wright", "robinson", "thompson", "white", "hughes", "edwards", "green", "hall", "wood",
		"harris", "lewis", "martin", "jackson", "clarke", "clark", "turner", "hill", "scott", "cooper",
		"morris", "ward", "moore", "king", "watson", "baker", "harrison", "morgan", "patel", "young",
		"allen", "mitchell", "james", "anderson", "phillips", "lee", "bell", "parker", "davis", "miller"}
	var dict []string
	for _, l := range last {
		for _, f := range first {
			dict = append(dict, f+"."+l+"@lab.localhost", string(f[0])+l+"@lab.localhost")
		}
	}
	if len(dict) != 1000 {
		t.Fatalf("dictionary of %d", len(dict))
	}
	// Every fifth candidate is a real user: 200 of the 1,000.
	var users []string
	for i := 0; i < len(dict); i += 5 {
		users = append(users, dict[i])
	}

	l := keydirtest.New(t, keydir.Config{})
	for _, u := range users {
		if _, _, err := l.Store.Publish(ctx, keydirtest.MustJID(t, u), keydirtest.FakeRSAKey(t, 3072), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if found := scanLog(ctx, t, l, dict); len(found) != 0 {
		t.Errorf("the v1 log reveals %d of the dictionary's JIDs: %v", len(found), found)
	}

	// The control: 20 of the users in a v0 log, migrated.
	v0 := keydirtest.NewUnstarted(t, keydir.Config{})
	var entries []keydirtest.V0Entry
	for _, u := range users[:20] {
		entries = append(entries, keydirtest.V0Entry{JID: u, Kind: keylog.KindPublish, Key: keydirtest.FakeRSAKey(t, 3072), Time: 1795636700})
	}
	keydirtest.WriteV0Log(ctx, t, v0.DB, entries)
	if _, err := v0.Store.Migrate(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := keydir.Adopt(ctx, v0.Store, v0.Signer, v0.Verifier, v0.StateFile, nil); err != nil {
		t.Fatal(err)
	}
	v0.Restart(t)
	found := scanLog(ctx, t, v0, dict)
	if strings.Join(found, " ") != strings.Join(users[:20], " ") {
		t.Errorf("the control found %v, want the 20 v0-era JIDs %v", found, users[:20])
	}
}

// scanLog downloads everything l serves and returns the candidates that
// any unkeyed function of a JID finds in it, in the dictionary's order.
func scanLog(ctx context.Context, t *testing.T, l *keydirtest.Log, dict []string) []string {
	t.Helper()
	var all bytes.Buffer
	cp, err := get(ctx, l.URL+"/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	all.Write(cp)
	c, err := keylog.OpenCheckpoint(cp, l.Verifier)
	if err != nil {
		t.Fatal(err)
	}
	for level := 0; ; level++ {
		avail := c.Size >> (8 * uint(level))
		if avail == 0 {
			break
		}
		for n := int64(0); n*256 < avail; n++ {
			w := min(avail-n*256, 256)
			tile := tlogTile(level, n, int(w))
			b, err := get(ctx, l.URL+"/"+keylog.TilePath(tile))
			if err != nil {
				t.Fatal(err)
			}
			all.Write(b)
			if level == 0 {
				eb, err := get(ctx, l.URL+"/"+keylog.TilePath(tlogTile(keylog.EntriesLevel, n, int(w))))
				if err != nil {
					t.Fatal(err)
				}
				all.Write(eb)
			}
		}
	}
	served := all.Bytes()
	guess, _ := keylog.NewVRFSigner(keydirtest.Origin, bytes.Repeat([]byte{7}, 32))
	pub := l.VRF.Public()
	var found []string
	for _, cand := range dict {
		j := keydirtest.MustJID(t, cand)
		label := keylog.Label(j)
		plain := sha256.Sum256([]byte(cand))
		input := sha256.Sum256(keylog.VRFInput(cand))
		mac := hmac.New(sha256.New, pub.Public[:])
		mac.Write(keylog.VRFInput(cand))
		guessed, _ := guess.Index(j)
		for _, h := range [][]byte{label[:], plain[:], input[:], mac.Sum(nil), guessed[:]} {
			if bytes.Contains(served, h) || bytes.Contains(served, []byte(hex.EncodeToString(h))) {
				found = append(found, cand)
				break
			}
		}
	}
	return found
}

func tlogTile(level int, n int64, w int) tlog.Tile {
	return tlog.Tile{H: keylog.TileHeight, L: level, N: n, W: w}
}

// forkedAbsence builds the answer of an operator who keeps a second log
// for some devices: as many entries as honest's checkpoint, signed with
// the log's key, in which bob never published (only alice did), and an
// absence proof for bob that is valid in it.
func forkedAbsence(t *testing.T, dep *deployment, honest *keydirxml.Lookup1, bob, alice [32]byte, aliceValue keylog.MapValue) *keydirxml.Lookup1 {
	t.Helper()
	signer, verifier, err := keylog.LoadSignerKey(dep.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := keylog.OpenCheckpoint([]byte(honest.Checkpoint), verifier)
	if err != nil {
		t.Fatal(err)
	}
	vrf, _ := keylog.LoadVRFSigner(dep.vrfFile)
	var m keylog.Map
	var mem keylog.Hashes
	recs := []keylog.RecordV1{{Kind: keylog.KindGenesis, VRFKey: vrf.Public().String(), Time: 1, Map: keylog.MapEmpty}}
	aliceValue.Entry = 1
	m.Set(alice, aliceValue)
	recs = append(recs, keylog.RecordV1{Kind: keylog.KindPublish, Index: alice, Fingerprint: aliceValue.Fingerprint, Version: 1, Time: 2, Map: m.Root()})
	for int64(len(recs)) < cp.Size {
		recs = append(recs, keylog.RecordV1{Kind: keylog.KindTick, Time: time.Now().Unix(), Map: m.Root()})
	}
	for _, r := range recs {
		mem.Append(r.Marshal())
	}
	root, _ := keylog.TreeHash(cp.Size, &mem)
	msg, err := keylog.SignCheckpoint(keylog.Checkpoint{Origin: cp.Origin, Size: cp.Size, Hash: root}, signer)
	if err != nil {
		t.Fatal(err)
	}
	hp, err := tlog.ProveRecord(cp.Size, cp.Size-1, &mem)
	if err != nil {
		t.Fatal(err)
	}
	head := recs[len(recs)-1].Marshal()
	return &keydirxml.Lookup1{
		Checkpoint: string(msg),
		Head:       &keydirxml.Head{Index: cp.Size - 1, Record: keydirxml.EncodeBlob(head), Proof: keydirxml.EncodeHashBlob(hp)},
		Entries:    []keydirxml.Entry1{{JID: honest.Entries[0].JID, Status: keydirxml.StatusNone, Map: keydirxml.EncodeBlob(m.Prove(bob).Marshal())}},
	}
}
