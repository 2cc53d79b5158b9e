package envelope_test

// Benchmarks of sealing and opening, with the primitives they are made of as
// baselines measured in the same run (docs/DEVELOPING.md): a standard seal
// should cost about two RSA-OAEP encryptions (recipient and sender) plus one
// RSA-PSS signature, a standard open one PSS verification plus one OAEP
// decryption, and the enhanced ones one PSS operation each; AES-GCM on a
// message of benchText bytes is noise next to RSA. BenchmarkRatio measures
// exactly those ratios, interleaved. Run
//
//	go test ./client/envelope -run '^$' -bench . -benchtime 2s -count 3

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
)

// benchText is a 1 KiB message; its content encoding pads to 1280 bytes.
var benchText = strings.Repeat("0123456789abcdef", 64)

const benchSealed = 1280 // the padded content size of benchText

func BenchmarkSealStandard(b *testing.B) {
	id := ids(b)
	alice, bob := id["alice"], id["bob"]
	to := []envelope.Recipient{recipient(bob)}
	c := text(benchText)
	b.SetBytes(int64(len(benchText)))
	for b.Loop() {
		if _, err := envelope.SealStandard(alice, to, header("bench"), c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpenStandard(b *testing.B) {
	id := ids(b)
	alice, bob := id["alice"], id["bob"]
	e, err := envelope.SealStandard(alice, []envelope.Recipient{recipient(bob)}, header("bench"), text(benchText))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchText)))
	for b.Loop() {
		if _, err := envelope.Open(e, bob, alice.PublicKey(), nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSealEnhanced(b *testing.B) {
	id := ids(b)
	alice, bob := id["alice"], id["bob"]
	k := envelope.NewContactKey()
	c := text(benchText)
	b.SetBytes(int64(len(benchText)))
	for b.Loop() {
		if _, err := envelope.SealEnhanced(alice, bob.JID(), k, header("bench"), c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpenEnhanced(b *testing.B) {
	id := ids(b)
	alice, bob := id["alice"], id["bob"]
	k := envelope.NewContactKey()
	keys := keyMap{alice.JID(): {k}}
	e, err := envelope.SealEnhanced(alice, bob.JID(), k, header("bench"), text(benchText))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchText)))
	for b.Loop() {
		if _, err := envelope.Open(e, bob, alice.PublicKey(), keys); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawAESGCM seals the padded content of benchText with AES-256-GCM
// under a fresh nonce, as both kinds of envelope do.
func BenchmarkRawAESGCM(b *testing.B) {
	key := make([]byte, 32)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	g, err := cipher.NewGCM(block)
	if err != nil {
		b.Fatal(err)
	}
	plain := make([]byte, benchSealed)
	nonce := make([]byte, g.NonceSize())
	dst := make([]byte, 0, benchSealed+g.Overhead())
	b.SetBytes(int64(len(benchText)))
	for b.Loop() {
		rand.Read(nonce)
		g.Seal(dst, nonce, plain, nil)
	}
}

func BenchmarkRawRSAOAEPEncrypt(b *testing.B) {
	bob := ids(b)["bob"]
	msg := make([]byte, 32)
	for b.Loop() {
		if _, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, bob.PublicKey(), msg, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawRSAOAEPDecrypt(b *testing.B) {
	bob := ids(b)["bob"]
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, bob.PublicKey(), make([]byte, 32), nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := rsa.DecryptOAEP(sha256.New(), nil, bob.PrivateKey(), ct, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawRSAPSSSign(b *testing.B) {
	alice := ids(b)["alice"]
	d := sha256.Sum256([]byte("bench"))
	opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}
	for b.Loop() {
		if _, err := rsa.SignPSS(rand.Reader, alice.PrivateKey(), crypto.SHA256, d[:], opts); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawRSAPSSVerify(b *testing.B) {
	alice := ids(b)["alice"]
	d := sha256.Sum256([]byte("bench"))
	opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}
	sig, err := rsa.SignPSS(rand.Reader, alice.PrivateKey(), crypto.SHA256, d[:], opts)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := rsa.VerifyPSS(alice.PublicKey(), crypto.SHA256, d[:], sig, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRatio measures each Seal and Open against its primitives in
// alternation, iteration by iteration, and reports the ratio of their times
// (x-baseline): on a shared machine, load that comes and goes then weighs on
// both sides alike, which separate benchmarks cannot promise.
func BenchmarkRatio(b *testing.B) {
	id := ids(b)
	alice, bob := id["alice"], id["bob"]
	k := envelope.NewContactKey()
	keys := keyMap{alice.JID(): {k}}
	c := text(benchText)
	to := []envelope.Recipient{recipient(bob)}
	std, err := envelope.SealStandard(alice, to, header("bench"), c)
	if err != nil {
		b.Fatal(err)
	}
	enh, err := envelope.SealEnhanced(alice, bob.JID(), k, header("bench"), c)
	if err != nil {
		b.Fatal(err)
	}

	key := make([]byte, 32)
	block, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(block)
	plain := make([]byte, benchSealed)
	nonce := make([]byte, g.NonceSize())
	sealed := g.Seal(nil, nonce, plain, nil)
	d := sha256.Sum256([]byte("bench"))
	opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}
	sig, _ := rsa.SignPSS(rand.Reader, alice.PrivateKey(), crypto.SHA256, d[:], opts)
	wrapped, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, bob.PublicKey(), key, nil)
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	gcmSeal := func() { rand.Read(nonce); g.Seal(plain[:0:0], nonce, plain, nil) }
	gcmOpen := func() { _, err := g.Open(nil, make([]byte, 12), sealed, nil); must(err) }
	oaepEnc := func(pub *rsa.PublicKey) {
		_, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, key, nil)
		must(err)
	}
	pssSign := func() { _, err := rsa.SignPSS(rand.Reader, alice.PrivateKey(), crypto.SHA256, d[:], opts); must(err) }
	pssVerify := func() { must(rsa.VerifyPSS(alice.PublicKey(), crypto.SHA256, d[:], sig, opts)) }

	for _, bb := range []struct {
		name     string
		op       func()
		baseline func() // what op is made of
	}{
		{"SealStandard", func() { _, err := envelope.SealStandard(alice, to, header("bench"), c); must(err) },
			func() { oaepEnc(bob.PublicKey()); oaepEnc(alice.PublicKey()); pssSign(); gcmSeal() }},
		{"OpenStandard", func() { _, err := envelope.Open(std, bob, alice.PublicKey(), nil); must(err) },
			func() {
				pssVerify()
				_, err := rsa.DecryptOAEP(sha256.New(), nil, bob.PrivateKey(), wrapped, nil)
				must(err)
				gcmOpen()
			}},
		{"SealEnhanced", func() { _, err := envelope.SealEnhanced(alice, bob.JID(), k, header("bench"), c); must(err) },
			func() { pssSign(); gcmSeal() }},
		{"OpenEnhanced", func() { _, err := envelope.Open(enh, bob, alice.PublicKey(), keys); must(err) },
			func() { pssVerify(); gcmOpen() }},
	} {
		b.Run(bb.name, func(b *testing.B) {
			var opTime, baseTime time.Duration
			for b.Loop() {
				t0 := time.Now()
				bb.op()
				t1 := time.Now()
				bb.baseline()
				t2 := time.Now()
				opTime += t1.Sub(t0)
				baseTime += t2.Sub(t1)
			}
			b.ReportMetric(float64(opTime)/float64(baseTime), "x-baseline")
			b.ReportMetric(float64(opTime.Microseconds())/float64(b.N), "op-µs")
			b.ReportMetric(float64(baseTime.Microseconds())/float64(b.N), "baseline-µs")
		})
	}
}
