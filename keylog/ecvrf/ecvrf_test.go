package ecvrf_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"

	"filippo.io/edwards25519"

	"github.com/clinkme/clinkd/keylog/ecvrf"
)

// rfc9381 is RFC 9381 Appendix B.3, examples 16 to 18 (the keys and
// messages are RFC 8032's section 7.1 test 1 to 3), as the RFC prints
// them.
var rfc9381 = []struct{ sk, pk, alpha, pi, beta string }{
	{
		"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
		"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
		"",
		"8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab1268a1b0db10836d9826a528ca76567805",
		"90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae",
	},
	{
		"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
		"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
		"72",
		"f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed5933bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926da3ef39226bbc355bdc9850112c8f4b02",
		"eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031",
	},
	{
		"c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
		"fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
		"af82",
		"9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf8096bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a2d41b00b05081ed0f58ee5e31b3a970e",
		"645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c452118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f",
	},
}

func dh(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRFC9381: Prove reproduces pi and beta of every example, Verify
// accepts them, and every single flipped bit of a proof, a changed alpha
// or another example's key makes Verify fail.
func TestRFC9381(t *testing.T) {
	t.Parallel()
	for i, v := range rfc9381 {
		k, err := ecvrf.NewPrivateKey(dh(t, v.sk))
		if err != nil {
			t.Fatal(err)
		}
		if got := k.Public(); !bytes.Equal(got, dh(t, v.pk)) {
			t.Errorf("example %d: Public = %x, want %s", 16+i, got, v.pk)
		}
		beta, pi := k.Prove(dh(t, v.alpha))
		if !bytes.Equal(pi, dh(t, v.pi)) {
			t.Errorf("example %d: Prove pi = %x, want %s", 16+i, pi, v.pi)
		}
		if !bytes.Equal(beta, dh(t, v.beta)) {
			t.Errorf("example %d: Prove beta = %x, want %s", 16+i, beta, v.beta)
		}
		got, err := ecvrf.Verify(dh(t, v.pk), dh(t, v.alpha), dh(t, v.pi))
		if err != nil || !bytes.Equal(got, dh(t, v.beta)) {
			t.Errorf("example %d: Verify = %x, %v; want %s", 16+i, got, err, v.beta)
		}
		for bit := range ecvrf.ProofSize * 8 {
			bad := dh(t, v.pi)
			bad[bit/8] ^= 1 << (bit % 8)
			if _, err := ecvrf.Verify(dh(t, v.pk), dh(t, v.alpha), bad); !errors.Is(err, ecvrf.ErrInvalid) {
				t.Fatalf("example %d: Verify(pi bit %d flipped) = %v, want ErrInvalid", 16+i, bit, err)
			}
		}
		if _, err := ecvrf.Verify(dh(t, v.pk), append(dh(t, v.alpha), 0), dh(t, v.pi)); err == nil {
			t.Errorf("example %d: Verify(alpha with a trailing byte) = nil, want ErrInvalid", 16+i)
		}
		other := rfc9381[(i+1)%len(rfc9381)]
		if _, err := ecvrf.Verify(dh(t, other.pk), dh(t, v.alpha), dh(t, v.pi)); err == nil {
			t.Errorf("example %d: Verify(another key) = nil, want ErrInvalid", 16+i)
		}
	}
}

// TestVerifyStrict: the choices RFC 9381 leaves open are made strictly.
func TestVerifyStrict(t *testing.T) {
	t.Parallel()
	v := rfc9381[0]
	pk, pi := dh(t, v.pk), dh(t, v.pi)
	// s + q is the same scalar, but not canonical.
	s, _ := edwards25519.NewScalar().SetCanonicalBytes(pi[48:])
	q := dh(t, "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
	sq := addLE(s.Bytes(), q)
	highS := append(append([]byte(nil), pi[:48]...), sq...)
	// A Gamma that edwards25519 decodes but RFC 8032 does not.
	nonCanonGamma := append(nonCanonicalIdentity(t), pi[32:]...)
	// A small-order public key: the identity point.
	identity := edwards25519.NewIdentityPoint().Bytes()
	for _, tt := range []struct {
		name      string
		pk, proof []byte
	}{
		{"s ≥ q", pk, highS},
		{"non-canonical Gamma", pk, nonCanonGamma},
		{"small-order key", identity, pi},
		{"non-canonical key", nonCanonicalIdentity(t), pi},
		{"79-byte proof", pk, pi[:79]},
		{"81-byte proof", pk, append(append([]byte(nil), pi...), 0)},
		{"31-byte key", pk[:31], pi},
	} {
		if _, err := ecvrf.Verify(tt.pk, dh(t, v.alpha), tt.proof); !errors.Is(err, ecvrf.ErrInvalid) {
			t.Errorf("Verify(%s) = %v, want ErrInvalid", tt.name, err)
		}
	}
	if ecvrf.ValidPublicKey(identity) || !ecvrf.ValidPublicKey(pk) {
		t.Errorf("ValidPublicKey(identity, example key) = %v, %v; want false, true", ecvrf.ValidPublicKey(identity), ecvrf.ValidPublicKey(pk))
	}
	if _, err := ecvrf.NewPrivateKey(make([]byte, 31)); err == nil {
		t.Errorf("NewPrivateKey(31 bytes) = nil error")
	}
}

// addLE adds two 32-byte little-endian numbers (no overflow here).
func addLE(a, b []byte) []byte {
	out := make([]byte, 32)
	carry := 0
	for i := range 32 {
		s := int(a[i]) + int(b[i]) + carry
		out[i], carry = byte(s), s>>8
	}
	return out
}

// nonCanonicalIdentity is the identity point written with y = p + 1
// instead of 1: edwards25519.Point.SetBytes accepts it, RFC 8032's
// decoding does not. (Only y < 19 has a second encoding below 2^255.)
func nonCanonicalIdentity(t *testing.T) []byte {
	t.Helper()
	b := dh(t, "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
	if _, err := new(edwards25519.Point).SetBytes(b); err != nil {
		t.Fatalf("SetBytes(y = p + 1) = %v, want it accepted", err)
	}
	return b
}
