package keylog

import (
	"fmt"
	"slices"

	"golang.org/x/mod/sumdb/tlog"
)

// TreeHash returns the RFC 6962 root hash of the log's first size leaves,
// whose stored hashes r reads. It is tlog.TreeHash, which gives the empty
// tree RFC 6962's root, SHA-256 of nothing (a test checks it): the server
// signs that root and the auditor expects it.
func TreeHash(size int64, r tlog.HashReader) (tlog.Hash, error) {
	return tlog.TreeHash(size, r)
}

// Hashes is a log's tlog stored hashes kept in memory, computed from its
// records: how an auditor rebuilds the tree from the entries it fetched,
// and how tests and benchmarks make trees without a database. *Hashes is
// a tlog.HashReader. The zero Hashes is the empty log.
//
// Append must not run concurrently with another method; ReadHashes may.
type Hashes struct {
	stored []tlog.Hash // stored hash i at index i, tlog's order
	size   int64       // records appended
}

// Append adds record (a leaf's text, as tlog.RecordHash takes it) as
// leaf Size() and stores the hashes it completes.
func (h *Hashes) Append(record []byte) {
	hs, err := tlog.StoredHashes(h.size, record, h)
	if err != nil {
		// StoredHashes reads only hashes of earlier leaves, which are
		// all stored.
		panic("keylog: bad math: " + err.Error())
	}
	h.stored = append(h.stored, hs...)
	h.size++
}

// Size returns the number of records appended.
func (h *Hashes) Size() int64 { return h.size }

// ReadHashes returns the stored hashes at indexes, in order. As tlog's
// HashReader contract requires, it returns exactly one hash per index or
// an error: an index that is not stored (yet) is an error, not a zero
// hash.
func (h *Hashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(h.stored)) {
			return nil, fmt.Errorf("keylog: hash %d is not stored (%d records, %d hashes)", x, h.size, len(h.stored))
		}
		out[i] = h.stored[x]
	}
	return out, nil
}

// Stored returns a copy of every stored hash, hash i at index i: what a
// store of the same log holds (logdb's keydir_hashes rows).
func (h *Hashes) Stored() []tlog.Hash { return slices.Clone(h.stored) }
