package devsync

import "errors"

// Sentinel errors. Every error returned by Offer and Accept wraps exactly one
// of these (plus, where it applies, the context's error or a network error),
// so callers pick the message to show with errors.Is. No error carries the
// payload, a key, the code or the peer's account name.
var (
	// ErrWrongCode: the code typed on the accepting device did not match the
	// one shown on the offering device. Returned on both devices. Either the
	// user mistyped it, or someone on the network is in the middle; start a
	// new session with a new code either way.
	ErrWrongCode = errors.New("devsync: wrong code")

	// ErrDifferentAccount: the two devices are logged in to different
	// ClinkID accounts. Returned on both devices before any code is shown.
	ErrDifferentAccount = errors.New("devsync: the devices are logged in to different accounts")

	// ErrRejected: the user on the offering (receiving) device did not
	// confirm that the other device accepted the code. Returned on both
	// devices; the offering device discards what it received.
	ErrRejected = errors.New("devsync: not confirmed on the receiving device")

	// ErrAborted: the other device ended the session (its user or its
	// program canceled) without a more specific reason.
	ErrAborted = errors.New("devsync: the other device ended the session")

	// ErrVersion: the other device speaks a protocol version this one does
	// not.
	ErrVersion = errors.New("devsync: unsupported protocol version")

	// ErrSameDevice: both ends presented the same device id; a device cannot
	// sync with itself (this also stops a reflected session).
	ErrSameDevice = errors.New("devsync: both ends have the same device id")

	// ErrProtocol: the other end sent something malformed, unexpected or
	// unauthentic, or closed the connection early.
	ErrProtocol = errors.New("devsync: protocol error")

	// ErrTooLarge: a frame's length prefix is larger than its type allows,
	// or the payload given to Accept is larger than MaxPayload.
	ErrTooLarge = errors.New("devsync: too large")

	// ErrTimeout: the other device did not answer within the configured
	// time.
	ErrTimeout = errors.New("devsync: timed out")

	// ErrConfig: the configuration passed in is not usable.
	ErrConfig = errors.New("devsync: invalid configuration")
)

// Abort reasons carried in ABORT frames (docs/devsync.md, "ABORT").
const (
	reasonWrongCode        byte = 1
	reasonDifferentAccount byte = 2
	reasonRejected         byte = 3
	reasonCanceled         byte = 4
	reasonVersion          byte = 5
	reasonSameDevice       byte = 6
	reasonProtocol         byte = 7
	reasonTooLarge         byte = 8
)

// errForReason maps a reason received from the peer to our sentinel. A
// plaintext ABORT is unauthenticated, so it may only carry reasons that do
// not claim anything about the code, the account or the user's decision.
func errForReason(reason byte, authenticated bool) error {
	if authenticated {
		switch reason {
		case reasonWrongCode:
			return ErrWrongCode
		case reasonDifferentAccount:
			return ErrDifferentAccount
		case reasonRejected:
			return ErrRejected
		}
	}
	switch reason {
	case reasonCanceled:
		return ErrAborted
	case reasonVersion:
		return ErrVersion
	case reasonSameDevice:
		return ErrSameDevice
	case reasonTooLarge:
		return ErrTooLarge
	case reasonProtocol:
		return ErrProtocol
	}
	return ErrProtocol
}

// reasonFor is the reason we send when we stop with err.
func reasonFor(err error) byte {
	switch {
	case errors.Is(err, ErrWrongCode):
		return reasonWrongCode
	case errors.Is(err, ErrDifferentAccount):
		return reasonDifferentAccount
	case errors.Is(err, ErrRejected):
		return reasonRejected
	case errors.Is(err, ErrVersion):
		return reasonVersion
	case errors.Is(err, ErrSameDevice):
		return reasonSameDevice
	case errors.Is(err, ErrTooLarge):
		return reasonTooLarge
	case errors.Is(err, ErrProtocol):
		return reasonProtocol
	}
	// Timeouts, cancellation, a failed callback.
	return reasonCanceled
}
