package keylog

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// Key size bounds. Below MinRSABits a key is weak (not-acceptable); above
// MaxRSABits it is refused as oversized (bad-request). Both are the
// envelopes' bounds (client/envelope's MinKeyBits and MaxKeyBits; a test
// keeps them equal): a key that no device can seal to or verify with must
// not be publishable, or a contact would find it bound and unusable.
const (
	MinRSABits = 3072
	MaxRSABits = 4096
)

// Errors of ParsePublicKey. ErrMalformedKey is answered with bad-request,
// ErrWeakKey with not-acceptable; both wrap a text that says why.
var (
	ErrMalformedKey = errors.New("keylog: malformed public key")
	ErrWeakKey      = errors.New("keylog: unacceptable public key")
)

// ParsePublicKey decodes and checks a published key: standard base64
// (surrounding whitespace ignored) of a DER SubjectPublicKeyInfo holding
// an RSA key of MinRSABits to MaxRSABits bits with an odd exponent ≥ 3. The
// DER must be canonical (what x509.MarshalPKIXPublicKey makes of the key),
// so that one key has one fingerprint. It returns the DER.
func ParsePublicKey(b64 string) ([]byte, *rsa.PublicKey, error) {
	b64 = strings.TrimSpace(b64)
	if b64 == "" {
		return nil, nil, fmt.Errorf("%w: empty", ErrMalformedKey)
	}
	if len(b64) > keydirxml.MaxKeyBase64 {
		return nil, nil, fmt.Errorf("%w: %d characters of base64, more than %d (oversized)", ErrMalformedKey, len(b64), keydirxml.MaxKeyBase64)
	}
	der, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: not standard base64", ErrMalformedKey)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: not a DER SubjectPublicKeyInfo", ErrMalformedKey)
	}
	rk, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("%w: %T is not an RSA key", ErrWeakKey, pub)
	}
	bits := rk.N.BitLen()
	switch {
	case bits > MaxRSABits:
		return nil, nil, fmt.Errorf("%w: RSA key of %d bits, more than %d (oversized)", ErrMalformedKey, bits, MaxRSABits)
	case bits < MinRSABits:
		return nil, nil, fmt.Errorf("%w: RSA key of %d bits, fewer than %d", ErrWeakKey, bits, MinRSABits)
	case rk.E < 3 || rk.E%2 == 0:
		return nil, nil, fmt.Errorf("%w: RSA public exponent %d is not odd and at least 3", ErrWeakKey, rk.E)
	}
	canon, err := x509.MarshalPKIXPublicKey(rk)
	if err != nil || !bytes.Equal(canon, der) {
		return nil, nil, fmt.Errorf("%w: DER is not in canonical form", ErrMalformedKey)
	}
	return der, rk, nil
}

// Fingerprint is SHA-256 of a key's SubjectPublicKeyInfo DER.
func Fingerprint(der []byte) [32]byte { return sha256.Sum256(der) }
