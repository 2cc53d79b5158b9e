package ecvrf_test

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/clinkme/clinkd/keylog/ecvrf"
)

// FuzzVerify: whatever key, message and proof it is given, Verify never
// panics, and it accepts only the one proof Prove makes for the key and
// message (proofs are unique: RFC 9381's full uniqueness holds for
// validated keys), with Prove's output.
func FuzzVerify(f *testing.F) {
	for _, v := range rfc9381 {
		pk, _ := hex.DecodeString(v.pk)
		alpha, _ := hex.DecodeString(v.alpha)
		pi, _ := hex.DecodeString(v.pi)
		f.Add(pk, alpha, pi)
	}
	f.Add(make([]byte, 32), []byte("x"), make([]byte, 80))
	seed, _ := hex.DecodeString(rfc9381[0].sk)
	k, _ := ecvrf.NewPrivateKey(seed)
	f.Fuzz(func(t *testing.T, pk, alpha, pi []byte) {
		beta, err := ecvrf.Verify(pk, alpha, pi)
		if err != nil {
			return
		}
		if len(beta) != ecvrf.OutputSize {
			t.Fatalf("Verify returned %d bytes", len(beta))
		}
		if bytes.Equal(pk, k.Public()) {
			want, wantPi := k.Prove(alpha)
			if !bytes.Equal(pi, wantPi) || !bytes.Equal(beta, want) {
				t.Fatalf("Verify accepted a proof Prove does not make: %x", pi)
			}
		}
	})
}
