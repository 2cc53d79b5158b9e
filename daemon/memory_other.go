//go:build !linux

package daemon

import "errors"

// protectMemory: core dump and swap protection is implemented for Linux
// only, where clinkd is supported.
func protectMemory(lock bool) error {
	if lock {
		return errors.New("expiry: expiry.lock_memory is supported on Linux only")
	}
	return nil
}
