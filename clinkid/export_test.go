package clinkid

// Internals exported to the external test package.
var (
	DecodePHC        = decodePHC
	EncodePHC        = encodePHC
	CheckNewPassword = checkNewPassword
	LockDuration     = lockDuration
	ErrFrameTooLarge = errFrameTooLarge
)
