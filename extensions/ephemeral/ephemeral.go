// Package ephemeral implements the payload of XEP-0466: Ephemeral Messages
// (urn:xmpp:ephemeral:0).
//
// XEP-0466's timer counts seconds from when the message is read, while a
// ClinkMe validity period is absolute from sending. clinkd therefore takes
// the authoritative expiry from the envelope's signed expires attribute and
// adds <ephemeral timer='remaining seconds'/> on delivery, so that clients
// that know only XEP-0466 delete the message no later (docs/expiry.md).
package ephemeral

import "encoding/xml"

// NS is the XEP-0466 namespace.
const NS = "urn:xmpp:ephemeral:0"

// Ephemeral says after how many seconds the message must be discarded.
type Ephemeral struct {
	XMLName xml.Name `xml:"urn:xmpp:ephemeral:0 ephemeral"`
	Timer   uint32   `xml:"timer,attr"`
}
