package keylog_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/keylog"
)

func idx(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// TestRecordV1RoundTrip: every kind marshals and parses back to itself;
// other versions are refused as unsupported, not as corrupt.
func TestRecordV1RoundTrip(t *testing.T) {
	t.Parallel()
	vrf, _ := keylog.NewVRFSigner("clink.example.org/keydir", make([]byte, 32))
	for _, r := range []keylog.RecordV1{
		{Kind: keylog.KindPublish, Index: idx("a"), Fingerprint: idx("k"), Version: 1, Time: 1795636800, Map: idx("m")},
		{Kind: keylog.KindReset, Index: idx("a"), Fingerprint: idx("k"), Version: 2, Time: 1795636801, Map: idx("m")},
		{Kind: keylog.KindDelete, Index: idx("a"), Fingerprint: idx("k"), Version: 4, Time: 0, Map: idx("m")},
		{Kind: keylog.KindMigrate, Index: idx("a"), Label: idx("l"), Version: 3, Time: 7, Map: idx("m")},
		{Kind: keylog.KindGenesis, VRFKey: vrf.Public().String(), Migrate: 12, Time: 7},
		{Kind: keylog.KindTick, Time: 9, Map: idx("m")},
	} {
		text := r.Marshal()
		got, err := keylog.ParseRecordV1(text)
		if err != nil || got != r {
			t.Errorf("ParseRecordV1(%q) = %+v, %v; want %+v", text, got, err, r)
		}
		if v, err := keylog.RecordVersion(text); v != 1 || err != nil {
			t.Errorf("RecordVersion(%s) = %d, %v", r.Kind, v, err)
		}
		if _, err := keylog.ParseRecord(text); !errors.Is(err, keylog.ErrUnsupportedVersion) || !errors.Is(err, keylog.ErrBadRecord) {
			t.Errorf("ParseRecord(v1 %s) = %v, want ErrUnsupportedVersion", r.Kind, err)
		}
	}
	v0 := keylog.Record{Kind: keylog.KindPublish, Time: 5}.Marshal()
	if _, err := keylog.ParseRecordV1(v0); !errors.Is(err, keylog.ErrUnsupportedVersion) {
		t.Errorf("ParseRecordV1(v0) = %v, want ErrUnsupportedVersion", err)
	}
	if _, err := keylog.RecordVersion([]byte("clinkme-keydir v2\nkind tick\n")); !errors.Is(err, keylog.ErrUnsupportedVersion) {
		t.Errorf("RecordVersion(v2) = %v, want ErrUnsupportedVersion", err)
	}
	pub := keylog.RecordV1{Kind: keylog.KindPublish, Index: idx("a"), Fingerprint: idx("k"), Version: 1, Time: 10, Map: idx("m")}.Marshal()
	for _, bad := range []string{
		strings.Replace(string(pub), "version 1", "version 0", 1),
		strings.Replace(string(pub), "version 1", "version 01", 1),
		strings.Replace(string(pub), "kind publish", "kind rotate", 1),
		strings.Replace(string(pub), "kind publish", "kind reset", 1), // version 1 for a reset
		strings.Replace(string(pub), "time 10", "time -1", 1),
		strings.ToUpper(string(pub[:20])) + string(pub[20:]),
		string(pub) + "extra 1\n",
		string(pub[:len(pub)-1]),
		strings.Replace(string(pub), "\n", "\r\n", 1),
		strings.Replace(string(pub), "index", "label", 1),
		"clinkme-keydir v1\nkind genesis\nvrf nope\nmigrate 0\ntime 1\nmap " + strings.Repeat("0", 64) + "\n",
	} {
		if r, err := keylog.ParseRecordV1([]byte(bad)); !errors.Is(err, keylog.ErrBadRecord) || errors.Is(err, keylog.ErrUnsupportedVersion) {
			t.Errorf("ParseRecordV1(%q) = %+v, %v; want malformed", bad, r, err)
		}
	}
}

// TestVRFKeys: a key written and loaded proves indices its public key
// verifies; key strings parse only in their canonical form.
func TestVRFKeys(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "keydir.vrf")
	pub, err := keylog.GenerateVRFKey("clink.example.org/keydir", path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("VRF key file: %v, %v", err, fi)
	}
	if _, err := keylog.GenerateVRFKey("x", path); err == nil {
		t.Errorf("GenerateVRFKey over an existing file = nil error")
	}
	s, err := keylog.LoadVRFSigner(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := keylog.ParseVRFKey(pub)
	if err != nil || k != s.Public() || k.Name != "clink.example.org/keydir" {
		t.Fatalf("ParseVRFKey(%q) = %+v, %v", pub, k, err)
	}
	alice, _ := keylog.ParseBareJID("Alice@Example.ORG")
	x, proof := s.Index(alice)
	if got, err := k.Index("alice@example.org", proof); err != nil || got != x {
		t.Errorf("VRFKey.Index(alice) = %x, %v; want %x", got, err, x)
	}
	if _, err := k.Index("bob@example.org", proof); err == nil {
		t.Errorf("VRFKey.Index(bob, alice's proof) = nil error")
	}
	for _, bad := range []string{
		"", pub + " ", strings.Replace(pub, "clink", "clonk", 1), pub[:len(pub)-4] + "AAA=",
		strings.Replace(pub, "+", "+0", 1),
	} {
		if _, err := keylog.ParseVRFKey(bad); !errors.Is(err, keylog.ErrBadVRFKey) {
			t.Errorf("ParseVRFKey(%q) = %v, want ErrBadVRFKey", bad, err)
		}
	}
	if err := os.WriteFile(path+"2", []byte("PRIVATE+KEY+x+00000000+AAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keylog.LoadVRFSigner(path + "2"); err == nil || strings.Contains(err.Error(), "AAAA") {
		t.Errorf("LoadVRFSigner(note key) = %v, want an error that quotes nothing", err)
	}
}

// model is the map as a plain Go map, and V(p) computed from the
// definition (docs/protocol.md, "The map"), written without the tree.
type model map[[32]byte]keylog.MapValue

func (m model) root() [32]byte {
	var keys [][32]byte
	for k := range m {
		keys = append(keys, k)
	}
	return m.v(keys, 0)
}

func (m model) v(keys [][32]byte, d int) [32]byte {
	switch len(keys) {
	case 0:
		return keylog.MapEmpty
	case 1:
		return keylog.MapLeaf(keys[0], m[keys[0]])
	}
	var l, r [][32]byte
	for _, k := range keys {
		if k[d/8]>>(7-d%8)&1 == 0 {
			l = append(l, k)
		} else {
			r = append(r, k)
		}
	}
	return keylog.MapNode(m.v(l, d+1), m.v(r, d+1))
}

// randomIndex returns an index sharing its first shared bits with base.
func randomIndex(rng *mrand.Rand, base [32]byte, shared int) [32]byte {
	var x [32]byte
	for i := range x {
		x[i] = byte(rng.Uint32())
	}
	for d := range shared {
		mask := byte(0x80 >> (d % 8))
		x[d/8] = x[d/8]&^mask | base[d/8]&mask
	}
	return x
}

// TestMapAgainstModel: inserts and updates in random order, with indices
// chosen to share long prefixes (down to the last bit), give the root of
// the definition after every step; bulk building gives the same root;
// every index proves its value and every absent one its absence, and
// every flipped bit of a proof fails.
func TestMapAgainstModel(t *testing.T) {
	t.Parallel()
	rng := mrand.New(mrand.NewPCG(1, 2))
	m, mod := new(keylog.Map), model{}
	base := idx("base")
	var keys [][32]byte
	if m.Root() != keylog.MapEmpty {
		t.Fatalf("empty map root = %x", m.Root())
	}
	for step := range 300 {
		var x [32]byte
		if len(keys) > 0 && rng.IntN(4) == 0 {
			x = keys[rng.IntN(len(keys))] // an update
		} else {
			x = randomIndex(rng, base, []int{0, 3, 8, 20, 255, 256}[rng.IntN(6)])
			keys = append(keys, x)
		}
		v := keylog.MapValue{Ended: rng.IntN(2) == 0, Fingerprint: idx(fmt.Sprint(step)), Entry: int64(step), Version: int64(step + 1)}
		if _, ok := mod[x]; !ok && m.Len() != len(mod) {
			t.Fatalf("Len = %d, want %d", m.Len(), len(mod))
		}
		want := m.RootWith(x, v)
		m.Set(x, v)
		mod[x] = v
		if m.Root() != mod.root() || want != m.Root() {
			t.Fatalf("step %d: root = %x (RootWith said %x), want %x", step, m.Root(), want, mod.root())
		}
	}
	var entries []keylog.MapEntry
	for k, v := range mod {
		entries = append(entries, keylog.MapEntry{Index: k, Value: v})
	}
	bulk, err := keylog.BuildMap(entries)
	if err != nil || bulk.Root() != m.Root() || bulk.Len() != len(mod) {
		t.Fatalf("BuildMap root = %x, %v; want %x", bulk.Root(), err, m.Root())
	}
	root := m.Root()
	for k, v := range mod {
		p := bulk.Prove(k)
		if got, ok := m.Get(k); !ok || got != v {
			t.Fatalf("Get(%x) = %+v, %v", k, got, ok)
		}
		if err := keylog.VerifyMap(root, k, &v, p); err != nil {
			t.Fatalf("VerifyMap(%x) = %v", k, err)
		}
		q, err := keylog.ParseMapProof(p.Marshal())
		if err != nil || keylog.VerifyMap(root, k, &v, q) != nil {
			t.Fatalf("ParseMapProof(Marshal) = %v", err)
		}
		other := v
		other.Version++
		if err := keylog.VerifyMap(root, k, &other, p); !errors.Is(err, keylog.ErrMapRoot) {
			t.Fatalf("VerifyMap(another value) = %v, want ErrMapRoot", err)
		}
		if err := keylog.VerifyMap(root, k, nil, p); err == nil {
			t.Fatalf("VerifyMap(absent, with a presence proof) = nil")
		}
		enc := p.Marshal()
		for i := range len(enc) * 8 {
			bad := bytes.Clone(enc)
			bad[i/8] ^= 0x80 >> (i % 8)
			if q, err := keylog.ParseMapProof(bad); err == nil && keylog.VerifyMap(root, k, &v, q) == nil {
				t.Fatalf("VerifyMap accepts proof of %x with bit %d flipped", k, i)
			}
		}
	}
	for range 200 {
		x := randomIndex(rng, keys[rng.IntN(len(keys))], rng.IntN(257))
		if _, ok := mod[x]; ok {
			continue
		}
		p := m.Prove(x)
		if p.Type == keylog.MapProofFound {
			t.Fatalf("Prove(absent) = found")
		}
		if err := keylog.VerifyMap(root, x, nil, p); err != nil {
			t.Fatalf("VerifyMap(absent %x, type %d) = %v", x, p.Type, err)
		}
		// Absence cannot be claimed for a present index with its proof.
		present := keys[rng.IntN(len(keys))]
		if err := keylog.VerifyMap(root, present, nil, m.Prove(x)); err == nil {
			t.Fatalf("VerifyMap(present %x, absence proof of another) = nil", present)
		}
	}
}

// TestMapSmall: the empty map and the one-leaf map prove at depth 0.
func TestMapSmall(t *testing.T) {
	t.Parallel()
	m := new(keylog.Map)
	a, b := idx("a"), idx("b")
	if p := m.Prove(a); p.Type != keylog.MapProofEmpty || len(p.Siblings) != 0 || keylog.VerifyMap(keylog.MapEmpty, a, nil, p) != nil {
		t.Fatalf("empty map: Prove = %+v", p)
	}
	v := keylog.MapValue{Version: 1}
	m.Set(a, v)
	if m.Root() != keylog.MapLeaf(a, v) {
		t.Fatalf("one-leaf root = %x, want the leaf", m.Root())
	}
	if p := m.Prove(b); p.Type != keylog.MapProofOther || len(p.Siblings) != 0 || keylog.VerifyMap(m.Root(), b, nil, p) != nil {
		t.Fatalf("one-leaf map: Prove(other) = %+v", p)
	}
	if _, err := keylog.BuildMap([]keylog.MapEntry{{Index: a}, {Index: a}}); err == nil {
		t.Errorf("BuildMap(duplicate) = nil error")
	}
	// Non-canonical shapes are refused before any hashing.
	for _, p := range []keylog.MapProof{
		{Type: keylog.MapProofEmpty, Siblings: [][32]byte{keylog.MapEmpty}},
		{Type: keylog.MapProofOther, Other: b},                                  // depth 0 is fine...
		{Type: keylog.MapProofOther, Other: a},                                  // ...but not the index itself
		{Type: keylog.MapProofOther, Other: b, Siblings: make([][32]byte, 200)}, // b does not share 200 bits with a
	} {
		if _, err := p.Root(a, nil); (err == nil) != (p.Type == keylog.MapProofOther && p.Other == b && len(p.Siblings) == 0) {
			t.Errorf("Root(%+v) = %v", p, err)
		}
	}
}

// BenchmarkMap1M: building a map of 1,000,000 indices in bulk and one
// Set at a time (with its root), proving and verifying, against, in the
// same run, building the log's tree of 1,000,000 records (keylog.Hashes,
// what an auditor does besides) and SHA-256 of one leaf as the unit of
// work.
//
//	go test -run '^$' -bench Map1M -benchtime 1x ./keylog/
func BenchmarkMap1M(b *testing.B) {
	const n = 1_000_000
	entries := make([]keylog.MapEntry, n)
	for i := range entries {
		rand.Read(entries[i].Index[:])
		entries[i].Value = keylog.MapValue{Entry: int64(i), Version: 1}
	}
	for b.Loop() {
		t0 := nowNanos()
		m, err := keylog.BuildMap(entries)
		if err != nil {
			b.Fatal(err)
		}
		bulk := nowNanos() - t0
		t0 = nowNanos()
		inc := new(keylog.Map)
		for _, e := range entries {
			inc.Set(e.Index, e.Value)
			_ = inc.Root()
		}
		incr := nowNanos() - t0
		if inc.Root() != m.Root() {
			b.Fatal("incremental and bulk roots differ")
		}
		t0 = nowNanos()
		var log keylog.Hashes
		for i := range entries {
			log.Append(keylog.RecordV1{Kind: keylog.KindPublish, Index: entries[i].Index, Version: 1}.Marshal())
		}
		logBuild := nowNanos() - t0
		root := m.Root()
		var depth, size, maxSize int
		const probes = 10000
		t0 = nowNanos()
		for i := range probes {
			p := m.Prove(entries[i*97%n].Index)
			enc := len(p.Marshal())
			size += enc
			maxSize = max(maxSize, enc)
			depth += len(p.Siblings)
		}
		prove := (nowNanos() - t0) / probes
		p := m.Prove(entries[5].Index)
		t0 = nowNanos()
		for range probes {
			if keylog.VerifyMap(root, entries[5].Index, &entries[5].Value, p) != nil {
				b.Fatal("verify")
			}
		}
		verify := (nowNanos() - t0) / probes
		t0 = nowNanos()
		for range probes {
			keylog.MapLeaf(entries[5].Index, entries[5].Value)
		}
		leaf := (nowNanos() - t0) / probes
		b.ReportMetric(float64(bulk)/1e9, "bulk-build-s")
		b.ReportMetric(float64(logBuild)/1e9, "log-tree-build-s")
		b.ReportMetric(float64(bulk)/float64(logBuild), "map/log-build")
		b.ReportMetric(float64(incr)/1e9, "set+root-each-s")
		b.ReportMetric(float64(prove)/1e3, "prove-µs")
		b.ReportMetric(float64(verify)/1e3, "verify-µs")
		b.ReportMetric(float64(verify)/float64(leaf), "verify/leaf-hash")
		b.ReportMetric(float64(depth)/probes, "mean-depth")
		b.ReportMetric(float64(size)/probes, "mean-proof-bytes")
		b.ReportMetric(float64(maxSize), "max-proof-bytes")
	}
}

func nowNanos() int64 { return time.Now().UnixNano() }
