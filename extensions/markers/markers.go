// Package markers implements the payloads of XEP-0333: Displayed Markers
// (urn:xmpp:chat-markers:0), which ClinkMe uses for read receipts.
package markers

import "encoding/xml"

// NS is the XEP-0333 namespace.
const NS = "urn:xmpp:chat-markers:0"

// Markable says the sender wants markers for this message.
type Markable struct {
	XMLName xml.Name `xml:"urn:xmpp:chat-markers:0 markable"`
}

// Displayed says the message with ID was shown to the user: read.
type Displayed struct {
	XMLName xml.Name `xml:"urn:xmpp:chat-markers:0 displayed"`
	ID      string   `xml:"id,attr"`
}
