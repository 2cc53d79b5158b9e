package keylog_test

import (
	"crypto/sha256"
	"fmt"
	"testing"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
)

// mth is RFC 6962's Merkle Tree Hash of leaves, written from section 2.1
// and nothing else: the reference Hashes is checked against.
func mth(leaves [][]byte) [32]byte {
	switch len(leaves) {
	case 0:
		return sha256.Sum256(nil)
	case 1:
		return sha256.Sum256(append([]byte{0}, leaves[0]...))
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	l, r := mth(leaves[:k]), mth(leaves[k:])
	return sha256.Sum256(append(append([]byte{1}, l[:]...), r[:]...))
}

// TestHashes: for every size up to 40, the hashes kept give RFC 6962's
// root and as many stored hashes as tlog says; ReadHashes keeps tlog's
// contract (one hash per index, or an error, never a zero hash), and
// Stored hands out a copy.
func TestHashes(t *testing.T) {
	t.Parallel()
	var (
		h      keylog.Hashes
		leaves [][]byte
	)
	for n := int64(0); n <= 40; n++ {
		if n > 0 {
			rec := fmt.Appendf(nil, "record %d\n", n-1)
			h.Append(rec)
			leaves = append(leaves, rec)
		}
		if h.Size() != n {
			t.Fatalf("Size() = %d, want %d", h.Size(), n)
		}
		if got, want := int64(len(h.Stored())), tlog.StoredHashCount(n); got != want {
			t.Fatalf("len(Stored()) at %d = %d, want %d", n, got, want)
		}
		root, err := keylog.TreeHash(n, &h)
		if want := mth(leaves); err != nil || root != want {
			t.Fatalf("TreeHash(%d) = %x, %v; want %x", n, root, err, want)
		}
	}
	last := tlog.StoredHashCount(h.Size()) - 1
	for _, tt := range []struct {
		indexes []int64
		ok      bool
	}{
		{nil, true},
		{[]int64{0}, true},
		{[]int64{last, 0, last}, true},
		{[]int64{last + 1}, false},
		{[]int64{0, last + 1}, false},
		{[]int64{-1}, false},
	} {
		got, err := h.ReadHashes(tt.indexes)
		if tt.ok && (err != nil || len(got) != len(tt.indexes)) {
			t.Errorf("ReadHashes(%v) = %d hashes, %v; want %d", tt.indexes, len(got), err, len(tt.indexes))
		}
		if !tt.ok && (err == nil || got != nil) {
			t.Errorf("ReadHashes(%v) = %d hashes, %v; want an error", tt.indexes, len(got), err)
		}
	}
	s := h.Stored()
	s[0][0] ^= 1
	if again, _ := h.ReadHashes([]int64{0}); again[0] == s[0] {
		t.Errorf("Stored() shares its array with the Hashes")
	}
}
