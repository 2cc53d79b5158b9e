package client

import (
	"github.com/clinkme/clinkd/extensions/clinkidxml"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/extensions/receiptstate"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
)

// Version is the SDK's version: its module github.com/clinkme/clinkd/client
// is tagged client/v<Version> (docs/DEVELOPING.md, "Modules").
const Version = "0.1.0"

// A Protocol is one protocol the SDK speaks, by its name in
// docs/protocol.md's index, and the version it speaks.
type Protocol struct{ Name, Version string }

// Protocols returns the protocol versions this SDK speaks: a clinkd
// that speaks them serves it.
func Protocols() []Protocol {
	return []Protocol{
		{"Key directory", keydirxml.NS1},
		{"End-to-end envelope", envelopexml.NS},
		{"Timed messages", expiryxml.NS},
		{"Delivery and read receipts", receiptsxml.NS},
		{"Receipt state", receiptstate.NS},
		{"ClinkID accounts", clinkidxml.NS},
		{"Key store file", "clinkme keystore v1"},
		{"Device sync", "1"},
	}
}
