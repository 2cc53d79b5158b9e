package keylog_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
)

type vectors struct {
	JIDs []struct {
		JID, Canonical, Label, Expect string
	} `json:"jids"`
	Records []struct {
		Record, Label, Kind, Fingerprint string
		Time                             int64
		LeafHash                         string `json:"leaf_hash"`
		Expect                           string
	} `json:"records"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	// The vectors sit beside the server package, where docs/protocol.md
	// and the device's tests (client/keys_test.go) find them too.
	b, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLabelVectors: labels match the ones computed with coreutils, and
// every spelling of one address gives one label.
func TestLabelVectors(t *testing.T) {
	t.Parallel()
	for _, v := range loadVectors(t).JIDs {
		j, err := keylog.ParseBareJID(v.JID)
		if v.Expect != "" {
			if err == nil {
				t.Errorf("ParseBareJID(%q) = %q, want error (%s)", v.JID, j, v.Expect)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseBareJID(%q) = %v", v.JID, err)
			continue
		}
		if j.String() != v.Canonical {
			t.Errorf("ParseBareJID(%q) = %q, want %q", v.JID, j, v.Canonical)
		}
		if l := keylog.Label(j); hex.EncodeToString(l[:]) != v.Label {
			t.Errorf("Label(%q) = %x, want %s", v.JID, l, v.Label)
		}
	}
}

// TestRecordVectors: records parse and marshal byte for byte as the spec
// says, hash to the coreutils leaf hash, and malformed ones are refused.
func TestRecordVectors(t *testing.T) {
	t.Parallel()
	for _, v := range loadVectors(t).Records {
		r, err := keylog.ParseRecord([]byte(v.Record))
		if v.Expect != "ok" {
			if !errors.Is(err, keylog.ErrBadRecord) {
				t.Errorf("ParseRecord(%q) = %+v, %v; want ErrBadRecord (%s)", v.Record, r, err, v.Expect)
			}
			continue
		}
		if err != nil {
			t.Fatalf("ParseRecord(%q) = %v", v.Record, err)
		}
		if hex.EncodeToString(r.Label[:]) != v.Label || string(r.Kind) != v.Kind || hex.EncodeToString(r.Fingerprint[:]) != v.Fingerprint || r.Time != v.Time {
			t.Errorf("ParseRecord(%q) = %+v, want the vector's fields", v.Record, r)
		}
		if got := string(r.Marshal()); got != v.Record {
			t.Errorf("Marshal = %q, want %q", got, v.Record)
		}
		if h := tlog.RecordHash([]byte(v.Record)); hex.EncodeToString(h[:]) != v.LeafHash {
			t.Errorf("RecordHash = %x, want %s", h, v.LeafHash)
		}
	}
}

// TestTlogIsRFC6962 proves that what the server builds with x/mod's tlog
// is what devices check with transparency-dev/merkle's RFC 6962 code:
// leaf and node hashes, every inclusion proof of every leaf and every
// consistency proof between every pair of sizes up to 70, and that a
// flipped bit in any proof hash fails.
func TestTlogIsRFC6962(t *testing.T) {
	t.Parallel()
	h := rfc6962.DefaultHasher
	r := new(keylog.Hashes)
	if empty, _ := tlog.TreeHash(0, r); !bytes.Equal(empty[:], h.EmptyRoot()) {
		t.Errorf("tlog.TreeHash(0) = %x, want RFC 6962 empty root %x", empty, h.EmptyRoot())
	}
	if empty, _ := keylog.TreeHash(0, r); !bytes.Equal(empty[:], h.EmptyRoot()) {
		t.Errorf("keylog.TreeHash(0) = %x, want RFC 6962 empty root %x", empty, h.EmptyRoot())
	}
	a, b := tlog.RecordHash([]byte("a")), tlog.RecordHash([]byte("b"))
	if !bytes.Equal(a[:], h.HashLeaf([]byte("a"))) {
		t.Errorf("RecordHash(a) = %x, want %x", a, h.HashLeaf([]byte("a")))
	}
	if n := tlog.NodeHash(a, b); !bytes.Equal(n[:], h.HashChildren(a[:], b[:])) {
		t.Errorf("NodeHash = %x, want %x", n, h.HashChildren(a[:], b[:]))
	}
	const max = 70
	roots := make([]tlog.Hash, max+1)
	for n := int64(0); n < max; n++ {
		r.Append([]byte{byte(n)})
		roots[n+1], _ = tlog.TreeHash(n+1, r)
	}
	sl := func(p []tlog.Hash) [][]byte {
		out := make([][]byte, len(p))
		for i := range p {
			c := p[i]
			out[i] = c[:]
		}
		return out
	}
	for size := int64(1); size <= max; size++ {
		for i := int64(0); i < size; i++ {
			p, err := tlog.ProveRecord(size, i, r)
			if err != nil {
				t.Fatal(err)
			}
			leaf := h.HashLeaf([]byte{byte(i)})
			if err := proof.VerifyInclusion(h, uint64(i), uint64(size), leaf, sl(p), roots[size][:]); err != nil {
				t.Fatalf("VerifyInclusion(leaf %d, size %d) = %v", i, size, err)
			}
			for k := range p {
				bad := append([]tlog.Hash(nil), p...)
				bad[k][k%32] ^= 1
				if proof.VerifyInclusion(h, uint64(i), uint64(size), leaf, sl(bad), roots[size][:]) == nil {
					t.Fatalf("VerifyInclusion(leaf %d, size %d) with hash %d flipped = nil, want error", i, size, k)
				}
			}
		}
		for old := int64(1); old <= size; old++ {
			p, err := tlog.ProveTree(size, old, r)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyConsistency(h, uint64(old), uint64(size), sl(p), roots[old][:], roots[size][:]); err != nil {
				t.Fatalf("VerifyConsistency(%d, %d) = %v", old, size, err)
			}
			for k := range p {
				bad := append([]tlog.Hash(nil), p...)
				bad[k][0] ^= 0x80
				if proof.VerifyConsistency(h, uint64(old), uint64(size), sl(bad), roots[old][:], roots[size][:]) == nil {
					t.Fatalf("VerifyConsistency(%d, %d) with hash %d flipped = nil, want error", old, size, k)
				}
			}
		}
	}
}

// fakeRSAKey returns the SubjectPublicKeyInfo DER of an RSA public key
// with a random odd modulus of exactly bits bits. It is no usable key (no
// one knows its factors), but the directory never computes with keys: it
// checks their form and size. Generating real 3072-bit keys takes seconds
// each; these take microseconds.
func fakeRSAKey(t testing.TB, bits int) []byte {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits-1)))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, bits-1, 1)
	n.SetBit(n, 0, 1)
	der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParsePublicKey(t *testing.T) {
	t.Parallel()
	b64 := base64.StdEncoding.EncodeToString
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	good := fakeRSAKey(t, 3072)
	pkcs1 := x509.MarshalPKCS1PublicKey(&rsa.PublicKey{N: new(big.Int).SetBytes(good[len(good)-389 : len(good)-5]), E: 65537})
	evenE, _ := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 3071), E: 65536})
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"rsa-3072", b64(good), nil},
		{"rsa-4096", b64(fakeRSAKey(t, 4096)), nil},
		{"surrounding whitespace", "\n  " + b64(good) + "\n", nil},
		{"rsa-2048 weak", b64(fakeRSAKey(t, 2048)), keylog.ErrWeakKey},
		{"rsa-3071 weak", b64(fakeRSAKey(t, 3071)), keylog.ErrWeakKey},
		{"ecdsa not rsa", b64(ecDER), keylog.ErrWeakKey},
		{"even exponent", b64(evenE), keylog.ErrWeakKey},
		{"rsa-4097 oversized", b64(fakeRSAKey(t, 4097)), keylog.ErrMalformedKey},
		{"rsa-8192 oversized", b64(fakeRSAKey(t, 8192)), keylog.ErrMalformedKey},
		{"rsa-8200 oversized", b64(fakeRSAKey(t, 8200)), keylog.ErrMalformedKey},
		{"empty", "", keylog.ErrMalformedKey},
		{"not base64", "MIIB!!", keylog.ErrMalformedKey},
		{"url base64", strings.NewReplacer("+", "-", "/", "_").Replace(b64(good)) + "-", keylog.ErrMalformedKey},
		{"inner whitespace", b64(good)[:40] + " " + b64(good)[40:], keylog.ErrMalformedKey},
		{"pkcs1 not spki", b64(pkcs1), keylog.ErrMalformedKey},
		{"trailing garbage", b64(append(append([]byte(nil), good...), 0)), keylog.ErrMalformedKey},
		{"too long", strings.Repeat("A", 5000), keylog.ErrMalformedKey},
	}
	for _, tt := range tests {
		der, _, err := keylog.ParsePublicKey(tt.in)
		if tt.want == nil {
			if err != nil {
				t.Errorf("ParsePublicKey(%s) = %v, want nil", tt.name, err)
			} else if dec, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(tt.in)); !bytes.Equal(der, dec) {
				t.Errorf("ParsePublicKey(%s) DER differs from input", tt.name)
			}
			continue
		}
		if !errors.Is(err, tt.want) {
			t.Errorf("ParsePublicKey(%s) = %v, want %v", tt.name, err, tt.want)
		}
	}
	// A real key, once.
	k, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if _, _, err := keylog.ParsePublicKey(b64(der)); err != nil {
		t.Errorf("ParsePublicKey(real 3072-bit key) = %v", err)
	}
	if fp := keylog.Fingerprint(der); fp != sha256.Sum256(der) {
		t.Errorf("Fingerprint = %x, want SHA-256 of the DER", fp)
	}
}

func TestCheckpoint(t *testing.T) {
	t.Parallel()
	skey, vkey, err := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	verifier, _ := note.NewVerifier(vkey)
	_, otherV, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	other, _ := note.NewVerifier(otherV)
	_, renamedV, _ := note.GenerateKey(rand.Reader, "other.example/keydir")
	renamed, _ := note.NewVerifier(renamedV)

	cp := keylog.Checkpoint{Origin: "clink.example.org/keydir", Size: 12345, Hash: tlog.RecordHash([]byte("x"))}
	msg, err := keylog.SignCheckpoint(cp, signer)
	if err != nil {
		t.Fatal(err)
	}
	got, err := keylog.OpenCheckpoint(msg, verifier)
	if err != nil || got != cp {
		t.Fatalf("OpenCheckpoint(signed) = %+v, %v; want %+v", got, err, cp)
	}
	if _, err := keylog.OpenCheckpoint(msg, other); !errors.Is(err, keylog.ErrCheckpointSignature) {
		t.Errorf("OpenCheckpoint(other key) = %v, want ErrCheckpointSignature", err)
	}
	if _, err := keylog.OpenCheckpoint(msg, renamed); err == nil {
		t.Errorf("OpenCheckpoint(key of another origin) = nil, want error")
	}
	// Every flipped bit of the body, and of the signature bytes, fails.
	// (Not of the signature's base64 text: note decodes it leniently, so
	// the unused low bits of its last character can change without
	// changing the signature.)
	body := cp.Marshal()
	for i := range body {
		bad := bytes.Clone(msg)
		bad[i] ^= 0x01
		if c, err := keylog.OpenCheckpoint(bad, verifier); err == nil {
			t.Fatalf("OpenCheckpoint(body bit flipped at %d) = %+v, nil; want error", i, c)
		}
	}
	sigLine := bytes.TrimSuffix(msg[len(body)+1:], []byte("\n"))
	prefix := []byte("— clink.example.org/keydir ")
	sig, err := base64.StdEncoding.DecodeString(string(bytes.TrimPrefix(sigLine, prefix)))
	if err != nil || !bytes.HasPrefix(sigLine, prefix) || len(sig) != 68 {
		t.Fatalf("signature line %q: %v", sigLine, err)
	}
	for i := range sig {
		bad := bytes.Clone(sig)
		bad[i] ^= 0x01
		forged := append(append(append(bytes.Clone(body), '\n'), prefix...), base64.StdEncoding.EncodeToString(bad)+"\n"...)
		if c, err := keylog.OpenCheckpoint(forged, verifier); err == nil {
			t.Fatalf("OpenCheckpoint(signature bit flipped at %d) = %+v, nil; want error", i, c)
		}
	}
	h := base64.StdEncoding.EncodeToString(cp.Hash[:])
	parse := []struct {
		body string
		ok   bool
	}{
		{"o\n1\n" + h + "\n", true},
		{"o\n1\n" + h + "\next line\n", true},
		{"o\n0\n" + h + "\n", true},
		{"o\n01\n" + h + "\n", false},
		{"o\n-1\n" + h + "\n", false},
		{"o\n1\n" + h, false},
		{"\n1\n" + h + "\n", false},
		{"o\n1\n" + h[:40] + "\n", false},
		{"o\n1\n" + h + "\n\n", false},
		{"o\n99999999999999999999\n" + h + "\n", false},
	}
	for _, p := range parse {
		_, err := keylog.ParseCheckpoint([]byte(p.body))
		if (err == nil) != p.ok {
			t.Errorf("ParseCheckpoint(%q) = %v, want ok=%v", p.body, err, p.ok)
		}
	}
}

func TestTilePath(t *testing.T) {
	t.Parallel()
	tile := func(l int, n int64, w int) tlog.Tile { return tlog.Tile{H: 8, L: l, N: n, W: w} }
	good := []struct {
		path string
		t    tlog.Tile
	}{
		{"tile/0/000", tile(0, 0, 256)},
		{"tile/0/001.p/5", tile(0, 1, 5)},
		{"tile/1/x001/x234/067", tile(1, 1234067, 256)},
		{"tile/entries/x001/234.p/255", tile(-1, 1234, 255)},
		{"tile/entries/999", tile(-1, 999, 256)},
		{"tile/7/x999/x999/x999/x999/x999/999", tile(7, 999999999999999999, 256)},
	}
	for _, g := range good {
		got, err := keylog.ParseTilePath(g.path)
		if err != nil || got != g.t {
			t.Errorf("ParseTilePath(%q) = %+v, %v; want %+v", g.path, got, err, g.t)
		}
		if p := keylog.TilePath(g.t); p != g.path {
			t.Errorf("TilePath(%+v) = %q, want %q", g.t, p, g.path)
		}
	}
	for _, bad := range []string{
		"", "tile/", "tile/0", "tile/0/", "tile/0/1", "tile/0/0001", "tile/0/x000/001", "tile/0/001.p/0",
		"tile/0/001.p/256", "tile/0/001.p/05", "tile/8/000", "tile/-1/000", "tile/00/000", "tile/0/+01",
		"tile/0/x001", "tile/0/001/", "tile/entry/000", "tile/0/001.p/", "tile/0/x1000/000", "/tile/0/000",
		"tile/0/x001/x002/x003/x004/x005/x006/x007/008",
	} {
		if got, err := keylog.ParseTilePath(bad); err == nil {
			t.Errorf("ParseTilePath(%q) = %+v, want error", bad, got)
		}
	}
}

func TestEntryBundle(t *testing.T) {
	t.Parallel()
	entries := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte("z"), keylog.MaxEntrySize)}
	b := keylog.AppendEntryBundle(nil, entries...)
	got, err := keylog.ParseEntryBundle(b, 3)
	if err != nil || len(got) != 3 || !bytes.Equal(got[0], entries[0]) || len(got[1]) != 0 || !bytes.Equal(got[2], entries[2]) {
		t.Fatalf("ParseEntryBundle(round trip) = %q, %v", got, err)
	}
	for _, bad := range []struct {
		name string
		data []byte
		want int
	}{
		{"fewer entries", b, 4},
		{"more entries", b, 2},
		{"truncated length", append(bytes.Clone(b), 0), 3},
		{"truncated entry", b[:len(b)-1], 3},
		{"entry too long", keylog.AppendEntryBundle(nil, make([]byte, keylog.MaxEntrySize+1)), 1},
		{"zero wanted", nil, 0},
	} {
		if _, err := keylog.ParseEntryBundle(bad.data, bad.want); !errors.Is(err, keylog.ErrBadBundle) {
			t.Errorf("ParseEntryBundle(%s) = %v, want ErrBadBundle", bad.name, err)
		}
	}
}
