// Package receiptsxml implements the payloads of XEP-0184: Message Delivery
// Receipts.
package receiptsxml

import "encoding/xml"

// NS is the XEP-0184 namespace.
const NS = "urn:xmpp:receipts"

// Request asks the recipient for a delivery receipt.
type Request struct {
	XMLName xml.Name `xml:"urn:xmpp:receipts request"`
}

// Received is the recipient's receipt for the message with ID.
type Received struct {
	XMLName xml.Name `xml:"urn:xmpp:receipts received"`
	ID      string   `xml:"id,attr"`
}
