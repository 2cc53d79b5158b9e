package envelopexml

// EncodedLen exposes encodedLen to the tests, which check it is exact.
func EncodedLen(e *Envelope) int { return e.encodedLen() }
