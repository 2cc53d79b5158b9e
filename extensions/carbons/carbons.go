// Package carbons implements the one XEP-0280: Message Carbons payload
// clinkd's devices need: <private/>, which keeps the server from copying a
// message to the sender's other devices (clinkd sends its own copies of
// timed messages, which the server must not keep).
package carbons

import "encoding/xml"

// NS is the XEP-0280 namespace.
const NS = "urn:xmpp:carbons:2"

// Private excludes the message from carbons.
type Private struct {
	XMLName xml.Name `xml:"urn:xmpp:carbons:2 private"`
}
