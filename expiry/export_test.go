package expiry

// For the external tests: what the relay writes as bytes.
var (
	AppendTimed = appendTimed
	AppendBy    = appendBy
)

const (
	WireTail      = wireTail
	WireHints     = wireHints
	WireCopyHints = wireCopyHints
)
