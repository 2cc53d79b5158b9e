// Package receiptstate implements the payloads with which a device asks
// clinkd for the receipt state of the messages it sent through clinkd
// (namespace urn:clinkme:receipts:0, specified in docs/receipts.md).
package receiptstate

import (
	"encoding/xml"
	"time"
)

// NS is the namespace of these payloads. A version change changes it.
const NS = "urn:clinkme:receipts:0"

// MaxIDs bounds the messages one query may name.
const MaxIDs = 100

// Status is both the query (message IDs, or Since for everything sent
// after a time) and the answer.
type Status struct {
	XMLName  xml.Name     `xml:"urn:clinkme:receipts:0 status"`
	Since    *time.Time   `xml:"since,attr,omitempty"`
	Messages []MessageRef `xml:"message"`
}

// MessageRef names a message in a query and gives its state in an answer.
// Delivered and Displayed are absent until the recipient's device sent the
// receipt (XEP-0184) or the displayed marker (XEP-0333).
type MessageRef struct {
	ID        string     `xml:"id,attr"`
	To        string     `xml:"to,attr,omitempty"`
	Sent      *time.Time `xml:"sent,attr,omitempty"`
	Delivered *time.Time `xml:"delivered,attr,omitempty"`
	Displayed *time.Time `xml:"displayed,attr,omitempty"`
	Unknown   bool       `xml:"unknown,attr,omitempty"` // not found (never sent, or past retention)
}
