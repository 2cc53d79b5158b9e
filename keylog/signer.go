package keylog

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// GenerateKey makes a checkpoint signing key named origin (the log's
// origin line, e.g. "clink.example.org/keydir") and writes the signer key
// to path, mode 0600, refusing to overwrite an existing file. It returns
// the verifier key, which devices and auditors are given.
func GenerateKey(origin, path string) (vkey string, err error) {
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return "", fmt.Errorf("keylog: generate key %q: %w", origin, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("keylog: %w", err)
	}
	_, err = f.WriteString(skey + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("keylog: write %s: %w", path, err)
	}
	return vkey, nil
}

// LoadSigner reads a signer key written by GenerateKey. The error never
// quotes the file's content.
func LoadSigner(path string) (note.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keylog: %w", err)
	}
	s, err := note.NewSigner(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, errBadSignerFile
	}
	return s, nil
}

// ParseVerifier parses a verifier key as GenerateKey returns it.
func ParseVerifier(vkey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(vkey))
	if err != nil {
		return nil, fmt.Errorf("keylog: verifier key: %w", err)
	}
	return v, nil
}

// LoadSignerKey reads a signer key written by GenerateKey and returns it
// with its verifier, derived from the private key: what the server needs
// to check its own signed checkpoints (the signer state file). The error
// never quotes the file's content.
func LoadSignerKey(path string) (note.Signer, note.Verifier, error) {
	s, vkey, err := loadSignerKey(path)
	if err != nil {
		return nil, nil, err
	}
	v, err := note.NewVerifier(vkey)
	if err != nil || v.KeyHash() != s.KeyHash() {
		return nil, nil, errBadSignerFile
	}
	return s, v, nil
}

// VerifierKey derives from a signer key file, again, the verifier key
// GenerateKey printed when it made the file: the text devices, auditors
// and witnesses are configured with. The error never quotes the file's
// content.
func VerifierKey(path string) (string, error) {
	s, vkey, err := loadSignerKey(path)
	if err != nil {
		return "", err
	}
	if v, err := note.NewVerifier(vkey); err != nil || v.KeyHash() != s.KeyHash() {
		return "", errBadSignerFile
	}
	return vkey, nil
}

var errBadSignerFile = errors.New("keylog: signer key file does not hold a note signer key (clinkd keys genkey makes one)")

// loadSignerKey parses a signer key file and derives its verifier key
// text from the private key's seed.
func loadSignerKey(path string) (note.Signer, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("keylog: %w", err)
	}
	text := strings.TrimSpace(string(b))
	s, err := note.NewSigner(text)
	if err != nil {
		return nil, "", errBadSignerFile
	}
	// PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>; names have no
	// plus sign, base64 may.
	parts := strings.SplitN(text, "+", 5)
	if len(parts) != 5 {
		return nil, "", errBadSignerFile
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return nil, "", errBadSignerFile
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(s.Name(), pub)
	if err != nil {
		return nil, "", errBadSignerFile
	}
	return s, vkey, nil
}
