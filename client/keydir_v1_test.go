package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keylog"
)

// TestKeydirV1Vectors: the device's own map and record code (not
// keylog's) against the vectors computed in Python
// (keylog/testdata/keydir_v1.py).
func TestKeydirV1Vectors(t *testing.T) {
	t.Parallel()
	b := repoFile(t, "keylog/testdata/v1_vectors.json")
	var v struct {
		MapRoot   string `json:"map_root"`
		MapProofs []struct {
			Name, Index, Value, Proof, Expect string
		} `json:"map_proofs"`
		Records []struct {
			Record, Expect string
		} `json:"records"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	h := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	root := [32]byte(h(v.MapRoot))
	for _, c := range v.MapProofs {
		var val *mapValue
		if c.Value != "" {
			raw := h(c.Value)
			mv := mapValue{ended: raw[0] == 2, fp: [32]byte(raw[1:33])}
			mv.entry = int64(beUint(raw[33:41]))
			mv.version = int64(beUint(raw[41:49]))
			val = &mv
		}
		p, err := parseMapProof(h(c.Proof))
		ok := err == nil && p.verify(root, [32]byte(h(c.Index)), val)
		switch c.Expect {
		case "valid":
			if !ok {
				t.Errorf("map proof %s: refused (%v), want valid", c.Name, err)
			}
		case "not current", "bad absence", "malformed":
			if ok {
				t.Errorf("map proof %s: accepted, want %s", c.Name, c.Expect)
			}
		default:
			t.Fatalf("unknown expect %q", c.Expect)
		}
	}
	for _, c := range v.Records {
		r, err := parseV1Record([]byte(c.Record))
		if (err == nil) != (c.Expect == "ok") {
			t.Errorf("parseV1Record(%q) = %+v, %v; want %s", c.Record, r, err, c.Expect)
		}
		if c.Expect != "ok" {
			continue
		}
		// Entry records are rebuilt from an answer's fields.
		kr, err := keylog.ParseRecordV1([]byte(c.Record))
		if err != nil {
			t.Fatal(err)
		}
		switch kr.Kind {
		case keylog.KindPublish, keylog.KindReset, keylog.KindDelete:
			if got := v1Record(string(kr.Kind), kr.Index, kr.Fingerprint, kr.Version, kr.Time, kr.Map); string(got) != c.Record {
				t.Errorf("v1Record = %q, want %q", got, c.Record)
			}
		}
	}
}

func beUint(b []byte) uint64 {
	var n uint64
	for _, c := range b {
		n = n<<8 | uint64(c)
	}
	return n
}

// v0Log is a v0 log in memory: bob publishes k1, an operator resets it,
// bob publishes k2 (stolen-key scenario's recovery), alice publishes.
func v0Log(t testing.TB) (*keylog.Hashes, *VerifiedCheckpoint, [][]byte, []keylog.Record) {
	der1, der2 := fuzzKeyDER(), append([]byte(nil), fuzzKeyDER()...)
	der2[300] ^= 1
	recs := []keylog.Record{
		{Label: jidLabel("bob@example.org"), Kind: keylog.KindPublish, Fingerprint: sha256.Sum256(der1), Time: 1795636700},
		{Label: jidLabel("bob@example.org"), Kind: keylog.KindReset, Fingerprint: sha256.Sum256(der1), Time: 1795636800},
		{Label: jidLabel("bob@example.org"), Kind: keylog.KindPublish, Fingerprint: sha256.Sum256(der2), Time: 1795636900},
		{Label: jidLabel("alice@example.org"), Kind: keylog.KindPublish, Fingerprint: sha256.Sum256(der2), Time: 1795637000},
	}
	mem := new(keylog.Hashes)
	for _, r := range recs {
		mem.Append(r.Marshal())
	}
	root, _ := tlog.TreeHash(4, mem)
	return mem, &VerifiedCheckpoint{Size: 4, Hash: root}, [][]byte{der1, der2}, recs
}

// TestV0AcceptsWhatV1Refuses is the baseline of the operator's attacks
// that keydir's TestOperatorAttacks shows v1 refusing: the v0 device's
// checks (unchanged here, as on main before v1) accept a reset key
// served with its valid inclusion proof, accept "no key" without any
// proof, and accept a history with the reset left out.
func TestV0AcceptsWhatV1Refuses(t *testing.T) {
	t.Parallel()
	mem, cp, ders, recs := v0Log(t)
	proveV0 := func(i int64) *keydirxml.Proof {
		p, err := tlog.ProveRecord(cp.Size, i, mem)
		if err != nil {
			t.Fatal(err)
		}
		return keydirxml.NewProof(p)
	}
	// The reset key k1, as if current: its publish entry is in the log.
	stale := keydirxml.Entry{JID: "bob@example.org", Status: keydirxml.StatusFound, Index: 0, Time: recs[0].Time,
		Fingerprint: hex.EncodeToString(recs[0].Fingerprint[:]), Key: base64.StdEncoding.EncodeToString(ders[0]), Proof: proveV0(0)}
	if _, err := verifyEntry(stale, "bob@example.org", cp); err != nil {
		t.Errorf("v0: the reset key with its inclusion proof = %v; the v0 device accepted it on main", err)
	}
	// "No key" for bob: v0 has nothing to check.
	none := keydirxml.Entry{JID: "bob@example.org", Status: keydirxml.StatusNone}
	if err := none.Validate(); err != nil {
		t.Errorf("v0: a none entry = %v; the v0 device accepted it on main", err)
	}
	// Bob's history with the reset (entry 1) left out: each record left
	// still verifies, and nothing says one is missing.
	for _, i := range []int64{0, 2} {
		r := recs[i]
		if err := verifyInclusion(leafRecord(r.Label, string(r.Kind), r.Fingerprint, r.Time), i, proveV0(i), cp); err != nil {
			t.Errorf("v0: history record %d = %v", i, err)
		}
	}
}

// TestCheckpointSignatures: C2SP signed-note wants at least 16
// signatures accepted; the device accepts the log's checkpoint with 16
// Ed25519 cosignatures and 16 unknown post-quantum-sized ones beside it
// (about 70 kB), and refuses a note over its bound.
func TestCheckpointSignatures(t *testing.T) {
	t.Parallel()
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	body := "clink.example.org/keydir\n5\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n"
	signers := []note.Signer{s}
	for i := range 16 {
		k, _, _ := note.GenerateKey(rand.Reader, fmt.Sprintf("witness%d.example", i))
		ws, _ := note.NewSigner(k)
		signers = append(signers, ws)
	}
	msg, err := note.Sign(&note.Note{Text: body}, signers...)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4+3300)
	for i := range 16 {
		rand.Read(big)
		msg = fmt.Appendf(msg, "— pq%d.example %s\n", i, base64.StdEncoding.EncodeToString(big))
	}
	if cp, err := openCheckpoint(msg, v); err != nil || cp.Size != 5 {
		t.Fatalf("openCheckpoint(33 signatures, %d bytes) = %+v, %v", len(msg), cp, err)
	}
	huge := append(bytes.Clone(msg), strings.Repeat("— x "+base64.StdEncoding.EncodeToString(big)+"\n", 20)...)
	if _, err := openCheckpoint(huge, v); !errors.Is(err, ErrBadCheckpoint) {
		t.Errorf("openCheckpoint(%d bytes) = %v, want ErrBadCheckpoint", len(huge), err)
	}
}

// v1Answer is a valid v1 lookup answer for alice in a small log, with
// the directory client that accepts it (pinned at its checkpoint).
func v1Answer(t testing.TB) (*KeyDirectory, *keydirxml.Lookup1) {
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	vrf, _ := keylog.NewVRFSigner("clink.example.org/keydir", bytes.Repeat([]byte{1}, 32))
	alice, _ := keylog.ParseBareJID("alice@example.org")
	x, proof := vrf.Index(alice)
	der := fuzzKeyDER()
	fp := sha256.Sum256(der)
	var m keylog.Map
	mem := new(keylog.Hashes)
	mem.Append(keylog.RecordV1{Kind: keylog.KindGenesis, VRFKey: vrf.Public().String(), Time: 1, Map: keylog.MapEmpty}.Marshal())
	val := keylog.MapValue{Fingerprint: fp, Entry: 1, Version: 1}
	m.Set(x, val)
	pub := keylog.RecordV1{Kind: keylog.KindPublish, Index: x, Fingerprint: fp, Version: 1, Time: time.Now().Unix(), Map: m.Root()}
	mem.Append(pub.Marshal())
	head := keylog.RecordV1{Kind: keylog.KindTick, Time: time.Now().Unix(), Map: m.Root()}
	mem.Append(head.Marshal())
	root, _ := tlog.TreeHash(3, mem)
	msg, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: "clink.example.org/keydir", Size: 3, Hash: root}, s)
	hp, _ := tlog.ProveRecord(3, 2, mem)
	ep, _ := tlog.ProveRecord(3, 1, mem)
	ans := &keydirxml.Lookup1{
		Checkpoint: string(msg),
		Head:       &keydirxml.Head{Index: 2, Record: keydirxml.EncodeBlob(head.Marshal()), Proof: keydirxml.EncodeHashBlob(hp)},
		Entries: []keydirxml.Entry1{{JID: "alice@example.org", Status: keydirxml.StatusFound, VRF: keydirxml.EncodeBlob(proof),
			Version: 1, Index: 1, Time: pub.Time, Fingerprint: hex.EncodeToString(fp[:]), Record: keydirxml.RecordV1,
			Root: base64.StdEncoding.EncodeToString(pub.Map[:]), Key: base64.StdEncoding.EncodeToString(der),
			Map: keydirxml.EncodeBlob(m.Prove(x).Marshal()), Proof: keydirxml.EncodeHashBlob(ep)}},
	}
	pins := &MemoryPins{}
	pins.SetCheckpoint("clink.example.org/keydir", msg)
	d := &KeyDirectory{verifier: v, pins: pins, v1: &v1Config{vrf: vrf.Public(), maxAge: DefaultMaxAge, now: time.Now}}
	return d, ans
}

// FuzzVerifyLookup: whatever a server changes in a valid v1 answer, the
// device never panics and accepts only the answer as it was.
func FuzzVerifyLookup(f *testing.F) {
	d, ans := v1Answer(f)
	e := ans.Entries[0]
	f.Add(e.Status, e.VRF, e.Version, e.Index, e.Time, e.Fingerprint, e.Root, e.Key, e.Map, e.Proof, ans.Head.Record, ans.Head.Proof)
	f.Add("none", e.VRF, int64(0), int64(0), int64(0), "", "", "", "AgAA", "", ans.Head.Record, ans.Head.Proof)
	f.Fuzz(func(t *testing.T, status, vrf string, version, index, tm int64, fp, root, key, mp, proof, headRec, headProof string) {
		a := *ans
		h := *ans.Head
		h.Record, h.Proof = headRec, headProof
		a.Head = &h
		a.Entries = []keydirxml.Entry1{{JID: e.JID, Status: status, VRF: vrf, Version: version, Index: index, Time: tm,
			Fingerprint: fp, Record: e.Record, Root: root, Key: key, Map: mp, Proof: proof}}
		_, err := d.verifyAnswer(context.Background(), a.Checkpoint, a.Head, a.Entries, []string{e.JID})
		if err == nil && (a.Entries[0] != e || h != *ans.Head) {
			t.Fatalf("verifyAnswer accepted a changed answer: %+v", a.Entries[0])
		}
	})
}

// TestVerifyLookupSeed: the fuzz seed is accepted, so the fuzzer starts
// from a passing answer; an old head is refused.
func TestVerifyLookupSeed(t *testing.T) {
	t.Parallel()
	d, ans := v1Answer(t)
	if _, err := d.verifyAnswer(context.Background(), ans.Checkpoint, ans.Head, ans.Entries, []string{"alice@example.org"}); err != nil {
		t.Fatalf("verifyAnswer(valid) = %v", err)
	}
	d.v1.now = func() time.Time { return time.Now().Add(25 * time.Hour) }
	if _, err := d.verifyAnswer(context.Background(), ans.Checkpoint, ans.Head, ans.Entries, []string{"alice@example.org"}); !errors.Is(err, ErrStaleCheckpoint) {
		t.Fatalf("verifyAnswer(head 25 h old) = %v, want ErrStaleCheckpoint", err)
	}
}

// TestProtocolV1Examples: docs/protocol.md's v1 examples are what the
// vectors and this package compute: the publish record example and its
// leaf hash, and alice's VRF index under RFC 9381's example key.
func TestProtocolV1Examples(t *testing.T) {
	t.Parallel()
	doc := repoFile(t, "docs/protocol.md")
	b := repoFile(t, "keylog/testdata/v1_vectors.json")
	var v struct {
		VRF []struct{ JID, Index string } `json:"vrf"`
	}
	json.Unmarshal(b, &v)
	var alice string
	for _, x := range v.VRF {
		if x.JID == "alice@example.org" {
			alice = x.Index
		}
	}
	if alice == "" || !strings.Contains(string(doc), "`alice@example.org` has the index\n`"+alice+"`") {
		t.Errorf("docs/protocol.md does not give alice@example.org the index %s", alice)
	}
	i := strings.Index(string(doc), "Example (leaf hash\n`")
	if i < 0 {
		t.Fatal("no v1 record example")
	}
	rest := string(doc[i+len("Example (leaf hash\n`"):])
	hash, rest, _ := strings.Cut(rest, "`")
	_, rest, _ = strings.Cut(rest, "```\n")
	rec, _, _ := strings.Cut(rest, "```")
	r, err := parseV1Record([]byte(rec))
	if err != nil || r.kind != "publish" {
		t.Fatalf("the v1 record example does not parse: %v", err)
	}
	if h := sha256.Sum256(append([]byte{0}, rec...)); hex.EncodeToString(h[:]) != hash {
		t.Errorf("the v1 record example's leaf hash is %x, the document says %s", h, hash)
	}
	if !strings.Contains(rec, "index "+alice+"\n") {
		t.Errorf("the v1 record example is not alice's")
	}
}
