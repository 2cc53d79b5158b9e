package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keylog"
)

// BenchmarkVerifyLookupV1: what a device spends verifying a v1 lookup of
// one JID with 1,000,000 labels in the map and 1,000,002 leaves in the
// log (checkpoint signature, head record and its inclusion, the VRF, the
// map proof, the entry's record and its inclusion, the key), against, in
// the same run, the v0-style verification of one entry in the same log
// (note signature, key, record, inclusion: what devices did before v1),
// the note signature alone and the VRF alone. It also reports the size
// of the proof material of a one-JID answer, found and absent, over 1,000
// JIDs each: the answer's XML without the key, and the binary proofs.
//
//	go test -run '^$' -bench VerifyLookupV1 -benchtime 1x -timeout 20m ./client/
func BenchmarkVerifyLookupV1(b *testing.B) {
	const n = 1_000_000
	const probes = 1000
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	vrf, _ := keylog.NewVRFSigner("clink.example.org/keydir", bytes.Repeat([]byte{9}, 32))
	der := fuzzKeyDER()
	fp := sha256.Sum256(der)

	// probes real JIDs, found; n - probes random indices; probes JIDs absent.
	type user struct {
		jid   string
		x     [32]byte
		proof []byte
	}
	mk := func(prefix string) []user {
		us := make([]user, probes)
		for i := range us {
			j, _ := keylog.ParseBareJID(fmt.Sprintf("%s%d@example.org", prefix, i))
			us[i].jid = j.String()
			us[i].x, us[i].proof = vrf.Index(j)
		}
		return us
	}
	found, absent := mk("user"), mk("nobody")
	entries := make([]keylog.MapEntry, n)
	var lineRoot [32]byte // the map line of every entry record (any value; the head's is the true root)
	rand.Read(lineRoot[:])
	records := make([][]byte, 0, n+2)
	for i := range entries {
		if i < probes {
			entries[i].Index = found[i].x
		} else {
			rand.Read(entries[i].Index[:])
		}
		entries[i].Value = keylog.MapValue{Fingerprint: fp, Entry: int64(i), Version: 1}
		records = append(records, keylog.RecordV1{Kind: keylog.KindPublish, Index: entries[i].Index, Fingerprint: fp, Version: 1, Time: 1795636800, Map: lineRoot}.Marshal())
	}
	t0 := time.Now()
	m, err := keylog.BuildMap(entries)
	if err != nil {
		b.Fatal(err)
	}
	buildMap := time.Since(t0)
	// A v0 record in the same log, for the baseline.
	v0rec := leafRecord(jidLabel("carol@example.org"), "publish", fp, 1795636700)
	records = append(records, v0rec)
	head := keylog.RecordV1{Kind: keylog.KindTick, Time: time.Now().Unix(), Map: m.Root()}.Marshal()
	records = append(records, head)
	mem := new(keylog.Hashes)
	t0 = time.Now()
	for _, r := range records {
		mem.Append(r)
	}
	buildLog := time.Since(t0)
	size := mem.Size()
	root, _ := tlog.TreeHash(size, mem)
	msg, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: "clink.example.org/keydir", Size: size, Hash: root}, s)
	hp, _ := tlog.ProveRecord(size, size-1, mem)
	hd := &keydirxml.Head{Index: size - 1, Record: keydirxml.EncodeBlob(head), Proof: keydirxml.EncodeHashBlob(hp)}
	answer := func(u user, ok bool, i int) (*keydirxml.Lookup1, int) {
		e := keydirxml.Entry1{JID: u.jid, Status: keydirxml.StatusNone, VRF: keydirxml.EncodeBlob(u.proof), Map: keydirxml.EncodeBlob(m.Prove(u.x).Marshal())}
		bin := 80 + len(m.Prove(u.x).Marshal())
		if ok {
			p, _ := tlog.ProveRecord(size, int64(i), mem)
			e.Status, e.Version, e.Index, e.Time, e.Fingerprint = keydirxml.StatusFound, 1, int64(i), 1795636800, hex.EncodeToString(fp[:])
			e.Record, e.Root, e.Proof = keydirxml.RecordV1, base64.StdEncoding.EncodeToString(lineRoot[:]), keydirxml.EncodeHashBlob(p)
			bin += 32 * len(p)
		}
		return &keydirxml.Lookup1{Checkpoint: string(msg), Head: hd, Entries: []keydirxml.Entry1{e}}, bin + len(head) + 32*len(hp) + len(msg)
	}
	sizes := func(ok bool, us []user) (meanXML, maxXML, meanBin, maxBin float64) {
		for i, u := range us {
			a, bin := answer(u, ok, i)
			x, _ := xml.Marshal(a) // without the key: its size is the key's, not the proof's
			meanXML += float64(len(x)) / probes
			maxXML = max(maxXML, float64(len(x)))
			meanBin += float64(bin) / probes
			maxBin = max(maxBin, float64(bin))
		}
		return
	}
	pins := &MemoryPins{}
	pins.SetCheckpoint("clink.example.org/keydir", msg)
	d := &KeyDirectory{verifier: v, pins: pins, v1: &v1Config{vrf: vrf.Public(), maxAge: DefaultMaxAge, now: time.Now}}
	withKey := func(a *keydirxml.Lookup1) *keydirxml.Lookup1 {
		a.Entries[0].Key = base64.StdEncoding.EncodeToString(der)
		return a
	}
	ctx := context.Background()
	measure := func(f func(i int)) time.Duration {
		const rounds = 2000
		t := time.Now()
		for i := range rounds {
			f(i)
		}
		return time.Since(t) / rounds
	}
	v0p, _ := tlog.ProveRecord(size, n, mem)
	v0e := keydirxml.Entry{JID: "carol@example.org", Status: "found", Index: n, Time: 1795636700, Fingerprint: hex.EncodeToString(fp[:]),
		Key: base64.StdEncoding.EncodeToString(der), Proof: keydirxml.NewProof(v0p)}
	ans := make([]*keydirxml.Lookup1, 100)
	for i := range ans {
		ans[i], _ = answer(found[i], true, i)
		withKey(ans[i])
	}
	for b.Loop() {
		full := measure(func(i int) {
			a := ans[i%len(ans)]
			if _, err := d.verifyAnswer(ctx, a.Checkpoint, a.Head, a.Entries, []string{a.Entries[0].JID}); err != nil {
				b.Fatal(err)
			}
		})
		v0 := measure(func(int) {
			cp, err := openCheckpoint(msg, v)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := verifyEntry(v0e, "carol@example.org", cp); err != nil {
				b.Fatal(err)
			}
		})
		noteOnly := measure(func(int) {
			if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
				b.Fatal(err)
			}
		})
		vrfOnly := measure(func(i int) {
			u := found[i%probes]
			if _, err := vrf.Public().Index(u.jid, u.proof); err != nil {
				b.Fatal(err)
			}
		})
		fx, fxMax, fb, fbMax := sizes(true, found)
		ax, axMax, ab, abMax := sizes(false, absent)
		b.ReportMetric(float64(full.Nanoseconds())/1e3, "verify-v1-µs")
		b.ReportMetric(float64(v0.Nanoseconds())/1e3, "verify-v0-µs")
		b.ReportMetric(float64(noteOnly.Nanoseconds())/1e3, "note-µs")
		b.ReportMetric(float64(vrfOnly.Nanoseconds())/1e3, "vrf-µs")
		b.ReportMetric(float64(full)/float64(v0), "v1/v0")
		b.ReportMetric(fx, "found-xml-B")
		b.ReportMetric(fxMax, "found-xml-max-B")
		b.ReportMetric(fb, "found-bin-B")
		b.ReportMetric(fbMax, "found-bin-max-B")
		b.ReportMetric(ax, "absent-xml-B")
		b.ReportMetric(axMax, "absent-xml-max-B")
		b.ReportMetric(ab, "absent-bin-B")
		b.ReportMetric(abMax, "absent-bin-max-B")
		b.ReportMetric(buildMap.Seconds(), "build-map-1M-s")
		b.ReportMetric(buildLog.Seconds(), "build-log-1M-s")
	}
}
