//go:build !unix

package keydir

// lockFile does nothing where flock is not available: one clinkd per
// state file is then the operator's to ensure (no handoff there).
func lockFile(path string) (unlock func(), err error) { return func() {}, nil }
