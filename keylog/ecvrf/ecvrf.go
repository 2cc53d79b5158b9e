// Package ecvrf implements RFC 9381's ECVRF-EDWARDS25519-SHA512-TAI, the
// verifiable random function that turns a JID into its private index in
// the key directory's map (docs/protocol.md, "Key directory v1").
//
// A VRF is a keyed hash whose output anyone holding the public key can
// check against a proof, but only the holder of the private key can
// compute. TestRFC9381 reproduces the proofs and outputs of RFC 9381
// Appendix B.3 (examples 16 to 18) byte for byte; keylog's vectors,
// computed by an independent Python implementation written from the RFC
// (keylog/testdata/keydir_v1.py), check it again.
//
// It is written on filippo.io/edwards25519 rather than taken from
// github.com/ProtonMail/go-ecvrf, whose only release (v0.0.1) implements
// draft-irtf-cfrg-vrf-10: its challenge leaves out the public key, so its
// proofs are not RFC 9381 proofs and its Verify rejects the RFC's.
//
// Verify is strict where RFC 9381 lets implementations choose: the public
// key and Gamma must be canonical point encodings (re-encoding gives the
// same bytes), s must be below the group order, and a public key of small
// order is refused (ECVRF_validate_key).
package ecvrf

import (
	"crypto/sha512"
	"crypto/subtle"
	"errors"

	"filippo.io/edwards25519"
)

// Sizes of RFC 9381's strings for this suite.
const (
	SeedSize      = 32 // the private key: an RFC 8032 seed
	PublicKeySize = 32 // an encoded edwards25519 point
	ProofSize     = 80 // Gamma (32) || c (16) || s (32)
	OutputSize    = 64 // beta, a SHA-512 output
)

// suite is suite_string for ECVRF-EDWARDS25519-SHA512-TAI.
const suite = 0x03

// ErrInvalid is returned by Verify for every proof that does not verify,
// and for a malformed public key or proof.
var ErrInvalid = errors.New("ecvrf: invalid proof")

// A PrivateKey holds the seed and what RFC 8032 derives from it.
type PrivateKey struct {
	x      *edwards25519.Scalar // the secret scalar
	prefix [32]byte             // the second half of SHA-512(seed), for nonces
	pub    [32]byte
}

// NewPrivateKey derives a key from a 32-byte seed as RFC 8032 section
// 5.1.5 does (SHA-512, first half clamped as the scalar), which RFC 9381
// section 5.5 uses for this suite.
func NewPrivateKey(seed []byte) (*PrivateKey, error) {
	if len(seed) != SeedSize {
		return nil, errors.New("ecvrf: a seed is 32 bytes")
	}
	h := sha512.Sum512(seed)
	x, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		panic("ecvrf: " + err.Error()) // 32 bytes by construction
	}
	k := &PrivateKey{x: x}
	copy(k.prefix[:], h[32:])
	copy(k.pub[:], new(edwards25519.Point).ScalarBaseMult(x).Bytes())
	return k, nil
}

// Public returns the encoded public key Y = x·B.
func (k *PrivateKey) Public() []byte { return append([]byte(nil), k.pub[:]...) }

// Prove returns the proof pi for alpha and the VRF output beta
// (RFC 9381 sections 5.1 and 5.2).
func (k *PrivateKey) Prove(alpha []byte) (beta, pi []byte) {
	H := encodeToCurve(k.pub[:], alpha)
	if H == nil {
		// The loop only ends on a valid point; 2^256 tries cannot fail.
		panic("ecvrf: try-and-increment found no point")
	}
	hString := H.Bytes()
	gamma := new(edwards25519.Point).ScalarMult(k.x, H)
	// Nonce, RFC 9381 section 5.4.2.2 (the RFC 8032 way).
	nh := sha512.New()
	nh.Write(k.prefix[:])
	nh.Write(hString)
	kScalar, err := edwards25519.NewScalar().SetUniformBytes(nh.Sum(nil))
	if err != nil {
		panic("ecvrf: " + err.Error())
	}
	kB := new(edwards25519.Point).ScalarBaseMult(kScalar)
	kH := new(edwards25519.Point).ScalarMult(kScalar, H)
	c := challenge(k.pub[:], hString, gamma.Bytes(), kB.Bytes(), kH.Bytes())
	cScalar := scalarFrom16(c)
	s := edwards25519.NewScalar().MultiplyAdd(cScalar, k.x, kScalar)
	pi = make([]byte, 0, ProofSize)
	pi = append(pi, gamma.Bytes()...)
	pi = append(pi, c[:]...)
	pi = append(pi, s.Bytes()...)
	return proofToHash(gamma), pi
}

// Verify checks pi against the public key pk and alpha and returns beta
// (RFC 9381 section 5.3, with ECVRF_validate_key of section 5.4.5). Any
// failure is ErrInvalid.
func Verify(pk, alpha, pi []byte) ([]byte, error) {
	if len(pk) != PublicKeySize || len(pi) != ProofSize {
		return nil, ErrInvalid
	}
	Y, ok := decodePoint(pk)
	if !ok || isSmallOrder(Y) {
		return nil, ErrInvalid
	}
	gamma, ok := decodePoint(pi[:32])
	if !ok {
		return nil, ErrInvalid
	}
	var c [16]byte
	copy(c[:], pi[32:48])
	s, err := edwards25519.NewScalar().SetCanonicalBytes(pi[48:80])
	if err != nil { // s ≥ q
		return nil, ErrInvalid
	}
	H := encodeToCurve(pk, alpha)
	if H == nil {
		return nil, ErrInvalid
	}
	cScalar := scalarFrom16(c)
	negC := edwards25519.NewScalar().Negate(cScalar)
	// U = s·B − c·Y, V = s·H − c·Gamma.
	U := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(negC, Y, s)
	V := new(edwards25519.Point).VarTimeMultiScalarMult([]*edwards25519.Scalar{s, negC}, []*edwards25519.Point{H, gamma})
	c2 := challenge(pk, H.Bytes(), pi[:32], U.Bytes(), V.Bytes())
	if subtle.ConstantTimeCompare(c[:], c2[:]) != 1 {
		return nil, ErrInvalid
	}
	return proofToHash(gamma), nil
}

// ValidPublicKey reports whether pk is a canonical encoding of a point
// that is not of small order, as Verify requires of it.
func ValidPublicKey(pk []byte) bool {
	if len(pk) != PublicKeySize {
		return false
	}
	Y, ok := decodePoint(pk)
	return ok && !isSmallOrder(Y)
}

// decodePoint is RFC 8032's decoding, refusing non-canonical encodings
// (a y ≥ p, or x = 0 with the sign bit set), which edwards25519's
// SetBytes would accept.
func decodePoint(b []byte) (*edwards25519.Point, bool) {
	p, err := new(edwards25519.Point).SetBytes(b)
	if err != nil {
		return nil, false
	}
	if subtle.ConstantTimeCompare(p.Bytes(), b) != 1 {
		return nil, false
	}
	return p, true
}

func isSmallOrder(p *edwards25519.Point) bool {
	return new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1
}

// encodeToCurve is ECVRF_encode_to_curve_try_and_increment (RFC 9381
// section 5.4.1.1) with the public key as salt. It leaks through timing
// how many tries alpha took; alpha is a JID the requester chose.
func encodeToCurve(salt, alpha []byte) *edwards25519.Point {
	h := sha512.New()
	for ctr := 0; ctr < 256; ctr++ {
		h.Reset()
		h.Write([]byte{suite, 0x01})
		h.Write(salt)
		h.Write(alpha)
		h.Write([]byte{byte(ctr), 0x00})
		sum := h.Sum(nil)
		p, ok := decodePoint(sum[:32])
		if !ok {
			continue
		}
		p.MultByCofactor(p)
		if p.Equal(edwards25519.NewIdentityPoint()) == 1 {
			continue
		}
		return p
	}
	return nil
}

// challenge is ECVRF_challenge_generation (RFC 9381 section 5.4.3) over
// the five points, truncated to cLen = 16 bytes.
func challenge(points ...[]byte) [16]byte {
	h := sha512.New()
	h.Write([]byte{suite, 0x02})
	for _, p := range points {
		h.Write(p)
	}
	h.Write([]byte{0x00})
	var c [16]byte
	copy(c[:], h.Sum(nil))
	return c
}

// scalarFrom16 reads c as a little-endian integer, below 2^128 < q.
func scalarFrom16(c [16]byte) *edwards25519.Scalar {
	var b [32]byte
	copy(b[:], c[:])
	s, err := edwards25519.NewScalar().SetCanonicalBytes(b[:])
	if err != nil {
		panic("ecvrf: " + err.Error())
	}
	return s
}

// proofToHash is ECVRF_proof_to_hash (RFC 9381 section 5.2).
func proofToHash(gamma *edwards25519.Point) []byte {
	h := sha512.New()
	h.Write([]byte{suite, 0x03})
	h.Write(new(edwards25519.Point).MultByCofactor(gamma).Bytes())
	h.Write([]byte{0x00})
	return h.Sum(nil)
}
