package clinkid

import "context"

// Internals exported to the external test package.
var (
	DecodePHC        = decodePHC
	EncodePHC        = encodePHC
	CheckNewPassword = checkNewPassword
	LockDuration     = lockDuration
	ErrFrameTooLarge = errFrameTooLarge
)

// HoldHashSlot takes a hashing slot as a password check from a stranger
// would, so a test can fill the slots deterministically.
func (s *Service) HoldHashSlot(ctx context.Context) (release func(), err error) {
	if err := s.hash.acquire(ctx, false); err != nil {
		return nil, err
	}
	return s.hash.release, nil
}

// HashWaiting is how many checks wait for a slot.
func (s *Service) HashWaiting() int64 { return s.hash.waiting.Load() }

// Sweep runs the cleanup of expired rows now.
func (s *Service) Sweep(ctx context.Context) error { return s.sweep(ctx) }

// AcquireSlot takes a hashing slot in the trusted or the other queue, as
// a password check would.
func (s *Service) AcquireSlot(ctx context.Context, trusted bool) (release func(), err error) {
	if err := s.hash.acquire(ctx, trusted); err != nil {
		return nil, err
	}
	return s.hash.release, nil
}

// SourceOf exposes how a client address is read: the address and network
// limits count against, "" for none.
func SourceOf(addr string) (address, network string) {
	s := sourceOf(addr)
	return s.addr, s.net
}
