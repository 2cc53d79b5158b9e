package client

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// FuzzOpenCheckpoint: the device's checkpoint parser never panics and
// accepts only notes signed by the log's key.
func FuzzOpenCheckpoint(f *testing.F) {
	skey, vkey, _ := note.GenerateKey(rand.Reader, "clink.example.org/keydir")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	body := "clink.example.org/keydir\n3\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n"
	signed, _ := note.Sign(&note.Note{Text: body}, s)
	f.Add(signed)
	f.Add([]byte(body))
	f.Fuzz(func(t *testing.T, in []byte) {
		cp, err := openCheckpoint(in, v)
		if err == nil && (!bytes.HasPrefix(in, []byte(body)) || cp.Size != 3) {
			t.Fatalf("openCheckpoint accepted %q as %+v", in, cp)
		}
	})
}

// FuzzVerifyEntry: whatever a server sends as a lookup entry, the device
// never panics, and accepts a key only with a valid inclusion proof in
// the checkpoint (here a one-leaf tree: the leaf hash is the root).
func FuzzVerifyEntry(f *testing.F) {
	der := fuzzKeyDER()
	fp := sha256.Sum256(der)
	const who = "alice@example.org"
	rec := leafRecord(jidLabel(who), "publish", fp, 1795636800)
	root := sha256.Sum256(append([]byte{0}, rec...))
	cp := &VerifiedCheckpoint{Origin: "o", Size: 1, Hash: root}
	f.Add(who, "found", int64(0), int64(1795636800), hex.EncodeToString(fp[:]), base64.StdEncoding.EncodeToString(der), "")
	f.Add(who, "found", int64(0), int64(1795636801), hex.EncodeToString(fp[:]), base64.StdEncoding.EncodeToString(der), "")
	f.Add(who, "none", int64(1), int64(0), "", "", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Fuzz(func(t *testing.T, j, status string, index, tm int64, fps, key, hash string) {
		e := keydirxml.Entry{JID: j, Status: status, Index: index, Time: tm, Fingerprint: fps, Key: key, Proof: &keydirxml.Proof{}}
		if hash != "" {
			e.Proof.Hashes = []string{hash}
		}
		vk, err := verifyEntry(e, who, cp)
		if err == nil && (index != 0 || tm != 1795636800 || vk.Fingerprint != fp) {
			t.Fatalf("verifyEntry accepted %+v", e)
		}
	})
}

// fuzzKeyDER is a fixed 3072-bit RSA SubjectPublicKeyInfo (modulus
// 2^3071+1: not a real key, but of the right form and size).
func fuzzKeyDER() []byte {
	n := make([]byte, 384)
	n[0], n[383] = 0x80, 0x01
	// SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING { SEQUENCE { INTEGER n, INTEGER 65537 } } }
	rsaKey := append(append([]byte{0x30, 0x82, 0x01, 0x8a, 0x02, 0x82, 0x01, 0x81, 0x00}, n...), 0x02, 0x03, 0x01, 0x00, 0x01)
	bits := append([]byte{0x03, 0x82, 0x01, 0x8f, 0x00}, rsaKey...)
	alg := []byte{0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00}
	return append(append([]byte{0x30, 0x82, 0x01, 0xa2}, alg...), bits...)
}

// TestVerifyEntrySeed: the fuzz seed's valid entry is accepted, so the
// fuzzer starts from a passing case; a flipped time is refused.
func TestVerifyEntrySeed(t *testing.T) {
	t.Parallel()
	der := fuzzKeyDER()
	fp := sha256.Sum256(der)
	rec := leafRecord(jidLabel("alice@example.org"), "publish", fp, 1795636800)
	cp := &VerifiedCheckpoint{Size: 1, Hash: sha256.Sum256(append([]byte{0}, rec...))}
	e := keydirxml.Entry{JID: "alice@example.org", Status: "found", Time: 1795636800, Fingerprint: hex.EncodeToString(fp[:]),
		Key: base64.StdEncoding.EncodeToString(der), Proof: &keydirxml.Proof{}}
	if _, err := verifyEntry(e, "alice@example.org", cp); err != nil {
		t.Fatalf("verifyEntry(valid) = %v", err)
	}
	e.Time++
	if _, err := verifyEntry(e, "alice@example.org", cp); err == nil {
		t.Fatal("verifyEntry(time changed) = nil, want error")
	}
}
