package keylog_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
)

// FuzzParseRecord: a record that parses marshals back to the same bytes
// (one encoding per record, so one preimage per leaf hash).
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(keylog.Record{Kind: keylog.KindPublish, Time: 1795636800}.Marshal()))
	f.Add([]byte(keylog.Record{Kind: keylog.KindReset, Time: 0}.Marshal()))
	f.Add([]byte("clinkme-keydir v0\nlabel 00\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := keylog.ParseRecord(in)
		if err != nil {
			if !errors.Is(err, keylog.ErrBadRecord) {
				t.Fatalf("ParseRecord error %v does not wrap ErrBadRecord", err)
			}
			return
		}
		if out := r.Marshal(); !bytes.Equal(out, in) {
			t.Fatalf("ParseRecord(%q).Marshal() = %q", in, out)
		}
	})
}

// FuzzParseCheckpoint: the auditor's checkpoint parsing, body and signed
// note. A body without extension lines marshals back to itself; a note
// opens only with the one key that signed it.
func FuzzParseCheckpoint(f *testing.F) {
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	cp := keylog.Checkpoint{Origin: "clink.example.org/keydir", Size: 7, Hash: tlog.RecordHash(nil)}
	signed, _ := keylog.SignCheckpoint(cp, s)
	f.Add(cp.Marshal())
	f.Add(signed)
	f.Add([]byte("o\n1\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\next\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if c, err := keylog.ParseCheckpoint(in); err == nil {
			if c.Size < 0 || c.Origin == "" {
				t.Fatalf("ParseCheckpoint(%q) = %+v", in, c)
			}
			if out := c.Marshal(); bytes.Count(in, []byte("\n")) == 3 && !bytes.Equal(out, in) {
				t.Fatalf("ParseCheckpoint(%q).Marshal() = %q", in, out)
			}
		}
		if c, err := keylog.OpenCheckpoint(in, v); err == nil && !bytes.Equal(in, signed) {
			// Another valid signature would be a forgery; any other
			// accepted message must at least carry the same body.
			if !bytes.HasPrefix(in, cp.Marshal()) || c != cp {
				t.Fatalf("OpenCheckpoint accepted %q as %+v", in, c)
			}
		}
	})
}

// FuzzParseEntryBundle: what parses re-encodes to the same bytes.
func FuzzParseEntryBundle(f *testing.F) {
	f.Add(keylog.AppendEntryBundle(nil, []byte("a"), []byte("bc")), 2)
	f.Add(keylog.AppendEntryBundle(nil, keylog.Record{Kind: keylog.KindPublish}.Marshal()), 1)
	f.Add([]byte{0, 5, 'a'}, 1)
	f.Fuzz(func(t *testing.T, in []byte, want int) {
		entries, err := keylog.ParseEntryBundle(in, want)
		if err != nil {
			return
		}
		if len(entries) != want {
			t.Fatalf("ParseEntryBundle = %d entries, want %d", len(entries), want)
		}
		if out := keylog.AppendEntryBundle(nil, entries...); !bytes.Equal(out, in) {
			t.Fatalf("bundle %x re-encodes as %x", in, out)
		}
	})
}

// FuzzParseTilePath: what parses formats back to the same path, and is a
// tile of height 8 with a sane level and width.
func FuzzParseTilePath(f *testing.F) {
	for _, s := range []string{"tile/0/000", "tile/1/x001/x234/067.p/5", "tile/entries/x001/234.p/255", "tile/0/x000/001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tile, err := keylog.ParseTilePath(in)
		if err != nil {
			return
		}
		if tile.H != keylog.TileHeight || tile.L < -1 || tile.L > 7 || tile.W < 1 || tile.W > keylog.TileWidth || tile.N < 0 {
			t.Fatalf("ParseTilePath(%q) = %+v", in, tile)
		}
		if out := keylog.TilePath(tile); out != in {
			t.Fatalf("ParseTilePath(%q) formats as %q", in, out)
		}
	})
}

// FuzzParsePublicKey: an accepted key is canonical DER of an RSA key in
// the size bounds; refusals are one of the two sentinel errors.
func FuzzParsePublicKey(f *testing.F) {
	f.Add(base64.StdEncoding.EncodeToString(fakeRSAKey(f, 3072)))
	f.Add(base64.StdEncoding.EncodeToString(fakeRSAKey(f, 2048)))
	f.Add(base64.StdEncoding.EncodeToString(fakeRSAKey(f, 4096)))
	f.Add(base64.StdEncoding.EncodeToString(fakeRSAKey(f, 4097)))
	f.Add("MIIB")
	f.Fuzz(func(t *testing.T, in string) {
		der, k, err := keylog.ParsePublicKey(in)
		if err != nil {
			if !errors.Is(err, keylog.ErrMalformedKey) && !errors.Is(err, keylog.ErrWeakKey) {
				t.Fatalf("ParsePublicKey error %v wraps neither sentinel", err)
			}
			return
		}
		if b := k.N.BitLen(); b < keylog.MinRSABits || b > keylog.MaxRSABits || len(der) == 0 {
			t.Fatalf("ParsePublicKey accepted a %d-bit key", b)
		}
	})
}

// FuzzParseBareJID: the canonical form is a fixed point, so an address
// has one label however it is spelled.
func FuzzParseBareJID(f *testing.F) {
	for _, s := range []string{"alice@example.org", "Alice@Example.ORG.", "\uff21lice@example.org", "a@b/c", "@x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		j, err := keylog.ParseBareJID(in)
		if err != nil {
			return
		}
		again, err := keylog.ParseBareJID(j.String())
		if err != nil || keylog.Label(again) != keylog.Label(j) {
			t.Fatalf("ParseBareJID(%q) = %q, which re-parses as %q, %v", in, j, again, err)
		}
	})
}

// FuzzParseRecordV1: a v1 record that parses marshals back to the same
// bytes; refusals wrap ErrBadRecord.
func FuzzParseRecordV1(f *testing.F) {
	vrf, _ := keylog.NewVRFSigner("clink.example.org/keydir", make([]byte, 32))
	for _, r := range []keylog.RecordV1{
		{Kind: keylog.KindPublish, Version: 1, Time: 1795636800},
		{Kind: keylog.KindReset, Version: 2},
		{Kind: keylog.KindMigrate, Version: 3},
		{Kind: keylog.KindGenesis, VRFKey: vrf.Public().String()},
		{Kind: keylog.KindTick, Time: 4},
	} {
		f.Add(r.Marshal())
	}
	f.Add([]byte("clinkme-keydir v2\nkind tick\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := keylog.ParseRecordV1(in)
		if err != nil {
			if !errors.Is(err, keylog.ErrBadRecord) {
				t.Fatalf("ParseRecordV1 error %v does not wrap ErrBadRecord", err)
			}
			return
		}
		if out := r.Marshal(); !bytes.Equal(out, in) {
			t.Fatalf("ParseRecordV1(%q).Marshal() = %q", in, out)
		}
	})
}

// FuzzMapProof: any bytes as a proof against a fixed map: parsing never
// panics, what parses re-encodes to the same bytes, and VerifyMap accepts
// only the true answer for the index (its value, or absence).
func FuzzMapProof(f *testing.F) {
	m := new(keylog.Map)
	var keys [][32]byte
	for i := range 40 {
		k := sha256.Sum256([]byte{byte(i)})
		keys = append(keys, k)
		m.Set(k, keylog.MapValue{Entry: int64(i), Version: int64(i + 1), Ended: i%3 == 0})
	}
	root := m.Root()
	for i := range 4 {
		f.Add(m.Prove(keys[i]).Marshal(), byte(i), true)
		f.Add(m.Prove(sha256.Sum256([]byte{byte(100 + i)})).Marshal(), byte(100+i), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, which byte, present bool) {
		p, err := keylog.ParseMapProof(in)
		if err != nil {
			if !errors.Is(err, keylog.ErrBadMapProof) {
				t.Fatalf("ParseMapProof error %v does not wrap ErrBadMapProof", err)
			}
			return
		}
		if out := p.Marshal(); !bytes.Equal(out, in) {
			t.Fatalf("ParseMapProof(%x).Marshal() = %x", in, out)
		}
		x := sha256.Sum256([]byte{which})
		truth, ok := m.Get(x)
		var claim *keylog.MapValue
		if present {
			v := keylog.MapValue{Entry: int64(which), Version: int64(which) + 1, Ended: which%3 == 0}
			claim = &v
		}
		if keylog.VerifyMap(root, x, claim, p) == nil && (ok != present || (ok && truth != *claim)) {
			t.Fatalf("VerifyMap accepted a false answer for index %d (present=%v): %x", which, present, in)
		}
	})
}

// FuzzMapOps: random sets applied one at a time and in bulk give the same
// root, and every index proves its value.
func FuzzMapOps(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 1, 9})
	f.Add([]byte{0, 0, 0, 255, 128, 128, 7})
	f.Fuzz(func(t *testing.T, ops []byte) {
		m := new(keylog.Map)
		vals := map[[32]byte]keylog.MapValue{}
		for i, op := range ops {
			var x [32]byte
			x[0], x[31] = op&0xf0, op&0x0f // long shared prefixes
			v := keylog.MapValue{Entry: int64(i), Version: int64(i + 1), Ended: op&1 == 1}
			m.Set(x, v)
			vals[x] = v
		}
		var entries []keylog.MapEntry
		for k, v := range vals {
			entries = append(entries, keylog.MapEntry{Index: k, Value: v})
		}
		bulk, err := keylog.BuildMap(entries)
		if err != nil || bulk.Root() != m.Root() {
			t.Fatalf("bulk root %x, %v; incremental %x", bulk.Root(), err, m.Root())
		}
		for k, v := range vals {
			if err := keylog.VerifyMap(m.Root(), k, &v, m.Prove(k)); err != nil {
				t.Fatalf("VerifyMap(%x) = %v", k, err)
			}
		}
	})
}

// FuzzParseVRFKey: what parses formats back to the same string.
func FuzzParseVRFKey(f *testing.F) {
	vrf, _ := keylog.NewVRFSigner("clink.example.org/keydir", make([]byte, 32))
	f.Add(vrf.Public().String())
	f.Add("a+00000000+AAAA")
	f.Fuzz(func(t *testing.T, in string) {
		k, err := keylog.ParseVRFKey(in)
		if err == nil && k.String() != in {
			t.Fatalf("ParseVRFKey(%q) formats as %q", in, k.String())
		}
	})
}

// FuzzParseCosignatures: a witness's add-checkpoint answer. What parses
// is signature lines that AppendCosignatures writes back byte for byte.
func FuzzParseCosignatures(f *testing.F) {
	f.Add([]byte("— w1.witness.example V7XY9gAAAABrFgSSYy7+mcXQL35hfpKMykWwnrsP27e5mKEnoeqBQiQI62Z0osK+xL2k62APSDkhw0cbX34wXA/P3p1sZoNmVHf4Dw==\n"))
	f.Add([]byte("— a AAAAAAAA\n— b AAAAAAAA\n"))
	f.Add([]byte("old 0\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		sigs, err := keylog.ParseCosignatures(in)
		if err != nil {
			if !errors.Is(err, keylog.ErrBadWitnessResponse) {
				t.Fatalf("ParseCosignatures error %v does not wrap ErrBadWitnessResponse", err)
			}
			return
		}
		if out := keylog.AppendCosignatures(nil, sigs); !bytes.Equal(out, in) {
			t.Fatalf("ParseCosignatures(%q) writes back as %q", in, out)
		}
	})
}

// FuzzParseTreeSize: a witness's 409 answer.
func FuzzParseTreeSize(f *testing.F) {
	f.Add([]byte("20852014\n"))
	f.Add([]byte("0\n"))
	f.Add([]byte("007\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		n, err := keylog.ParseTreeSize(in)
		if err != nil {
			if !errors.Is(err, keylog.ErrBadWitnessResponse) {
				t.Fatalf("ParseTreeSize error %v does not wrap ErrBadWitnessResponse", err)
			}
			return
		}
		if n < 0 || string(in) != strconv.FormatInt(n, 10)+"\n" {
			t.Fatalf("ParseTreeSize(%q) = %d", in, n)
		}
	})
}

// FuzzWitnessKey: a witness verifier key, from configuration or
// lab.json. What parses writes back the same.
func FuzzWitnessKey(f *testing.F) {
	f.Add("w1.witness.example+57b5d8f6+BHjfZqfjqYviOImvagsQjPGeg9o4T7yLeVQX2OYOCGBl")
	f.Add("w2.witness.example+101882d4+BKPXcpmYdn2iJgOpEFCIoV3iTA5B+e3N+O8cAbqtKqUs")
	f.Add("clink.example.org/keydir+64f016b5+AW18YgTFSNHPu0dpLLinneuHS3Z5Ty4qy2uy3qcuHUhc")
	f.Fuzz(func(t *testing.T, in string) {
		v, err := keylog.ParseCosignatureVerifier(in)
		if err != nil {
			if !errors.Is(err, keylog.ErrBadWitnessKey) {
				t.Fatalf("ParseCosignatureVerifier error %v does not wrap ErrBadWitnessKey", err)
			}
			return
		}
		if v.String() != strings.TrimSpace(in) {
			t.Fatalf("ParseCosignatureVerifier(%q).String() = %q", in, v.String())
		}
	})
}

// FuzzWitnessCheck: a served checkpoint with cosignature lines, checked
// against the vectors' witnesses: never more valid cosignatures than
// witnesses, and never accepted without the log's signature.
func FuzzWitnessCheck(f *testing.F) {
	vec := readCosignatureVectors(f)
	for _, c := range vec.Cases {
		f.Add([]byte(c.Checkpoint))
	}
	logV, _ := note.NewVerifier(vec.LogVKey)
	pol, _ := keylog.NewWitnessPolicy(vec.Witnesses, 1)
	f.Fuzz(func(t *testing.T, in []byte) {
		cp, n, err := pol.Check(in, logV)
		if n > len(pol.Witnesses) {
			t.Fatalf("Check(%q) counted %d cosignatures of %d witnesses", in, n, len(pol.Witnesses))
		}
		if err == nil && (n < 1 || cp.Origin != logV.Name()) {
			t.Fatalf("Check(%q) = %+v, %d, nil", in, cp, n)
		}
	})
}
