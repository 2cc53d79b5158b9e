package clinkid

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"
)

// An app token is TokenPrefix followed by 32 random bytes in unpadded
// base64url (43 characters). The prefix tells the auth bridges a token from
// a password without a database lookup, and lets secret scanners find
// leaked tokens; registration refuses passwords that look like tokens.
// Only the SHA-256 of a token is stored: a copy of the database lets
// nobody log in. A new token format gets a new prefix (ck2_).
const TokenPrefix = "ck1_"

const tokenLen = len(TokenPrefix) + 43

// newToken returns a fresh token and the hash to store.
func newToken() (string, [32]byte) {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	tok := TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return tok, sha256.Sum256([]byte(tok))
}

// IsToken reports whether s has the shape of an app token. It does not
// say whether the token is valid.
func IsToken(s string) bool {
	if len(s) != tokenLen || !strings.HasPrefix(s, TokenPrefix) {
		return false
	}
	_, err := base64.RawURLEncoding.Strict().DecodeString(s[len(TokenPrefix):])
	return err == nil
}

// tokenHash is what the database keeps of a token. Tokens are looked up by
// this hash, so comparing one never compares secret bytes one by one.
func tokenHash(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}
