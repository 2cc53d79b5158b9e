package devsync

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
)

// Key schedule, version 1 (docs/devsync.md, "Key schedule"). Every label
// starts with labelPrefix, so a future version changes every derived value.
const (
	labelPrefix      = "clinkme devsync v1 "
	labelCommit      = labelPrefix + "commit"
	labelTranscript1 = labelPrefix + "transcript 1"
	labelCode        = labelPrefix + "code"
	labelHsA2B       = labelPrefix + "hs a->b"
	labelHsB2A       = labelPrefix + "hs b->a"
	labelTranscript2 = labelPrefix + "transcript 2"
	labelDataA2B     = labelPrefix + "data a->b"
	labelDataB2A     = labelPrefix + "data b->a"

	// CodeDigits is the number of decimal digits in the code.
	CodeDigits  = 6
	codeModulus = 1_000_000
)

// commitment is what the offerer (A) sends before it reveals its public
// value: SHA-256(labelCommit || len(idA) || idA || pkA).
func commitment(deviceID string, pk []byte) [keyLen]byte {
	h := sha256.New()
	h.Write([]byte(labelCommit))
	h.Write([]byte{byte(len(deviceID))})
	h.Write([]byte(deviceID))
	h.Write(pk)
	var c [keyLen]byte
	h.Sum(c[:0])
	return c
}

// transcript1 hashes the three plaintext frames, exactly as sent.
func transcript1(commitFrame, keyFrame, revealFrame []byte) []byte {
	h := sha256.New()
	h.Write([]byte(labelTranscript1))
	h.Write(commitFrame)
	h.Write(keyFrame)
	h.Write(revealFrame)
	return h.Sum(nil)
}

// transcript2 extends transcript1 with the two ACCOUNT frames, offerer's
// first, exactly as sent (ciphertext).
func transcript2(th1, accountA, accountB []byte) []byte {
	h := sha256.New()
	h.Write([]byte(labelTranscript2))
	h.Write(th1)
	h.Write(accountA)
	h.Write(accountB)
	return h.Sum(nil)
}

// codeFor derives the short code from transcript1: the first 8 bytes of
// SHA-256(labelCode || th1) as a big-endian integer, modulo 10^6, written
// with leading zeros. The modulo bias is below 2^-44.
func codeFor(th1 []byte) string {
	h := sha256.New()
	h.Write([]byte(labelCode))
	h.Write(th1)
	sum := h.Sum(nil)
	n := binary.BigEndian.Uint64(sum[:8]) % codeModulus
	return fmt.Sprintf("%0*d", CodeDigits, n)
}

// normalizeCode drops the spaces and dashes a user may type; ok is false
// unless what remains is exactly CodeDigits ASCII digits.
func normalizeCode(s string) (string, bool) {
	b := make([]byte, 0, CodeDigits)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '-' || c == '\t':
		case c >= '0' && c <= '9':
			if len(b) == CodeDigits {
				return "", false
			}
			b = append(b, c)
		default:
			return "", false
		}
	}
	return string(b), len(b) == CodeDigits
}

// codesEqual compares in constant time. The code is not secret once shown,
// but the comparison should not tell a timing observer how much matched.
func codesEqual(typed, want string) bool {
	norm, ok := normalizeCode(typed)
	if !ok {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(norm), []byte(want)) == 1
}

// directionKeys are the two AEADs of one phase.
type directionKeys struct {
	a2b, b2a cipher.AEAD
}

// handshakeSecret is HKDF-Extract(salt = th1, ikm = X25519 shared secret).
func handshakeSecret(dh, th1 []byte) ([]byte, error) {
	return hkdf.Extract(sha256.New, dh, th1)
}

// dataSecret is HKDF-Extract(salt = th2, ikm = handshake secret).
func dataSecret(hs, th2 []byte) ([]byte, error) {
	return hkdf.Extract(sha256.New, hs, th2)
}

func expandKeys(prk []byte, labelA2B, labelB2A string) (directionKeys, error) {
	a, err := expandAEAD(prk, labelA2B)
	if err != nil {
		return directionKeys{}, err
	}
	b, err := expandAEAD(prk, labelB2A)
	if err != nil {
		return directionKeys{}, err
	}
	return directionKeys{a2b: a, b2a: b}, nil
}

func expandAEAD(prk []byte, label string) (cipher.AEAD, error) {
	k, err := expandKey(prk, label)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k) // 32-byte key: AES-256
	clear(k)
	if err != nil {
		return nil, fmt.Errorf("devsync: derive key: %w", err)
	}
	return cipher.NewGCM(block)
}

// expandKey is HKDF-Expand(prk, label, 32).
func expandKey(prk []byte, label string) ([]byte, error) {
	k, err := hkdf.Expand(sha256.New, prk, label, 32)
	if err != nil {
		return nil, fmt.Errorf("devsync: derive key: %w", err)
	}
	return k, nil
}

// nonce is 4 zero bytes and the 64-bit big-endian frame counter of the
// direction. Each key encrypts at most a handful of frames, and each
// direction has its own key, so a nonce is never reused under one key.
func nonce(seq uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}
