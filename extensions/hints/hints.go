// Package hints implements the payloads of XEP-0334: Message Processing
// Hints, which clinkd puts on everything it relays that a server must not
// keep.
package hints

import "encoding/xml"

// NS is the XEP-0334 namespace.
const NS = "urn:xmpp:hints"

// NoStore asks that the message not be stored at all (offline or archive).
// Prosody's mod_offline ignores it; mod_mam and ejabberd honour it.
type NoStore struct {
	XMLName xml.Name `xml:"urn:xmpp:hints no-store"`
}

// NoPermanentStore asks that the message not be archived; offline storage
// may still keep it.
type NoPermanentStore struct {
	XMLName xml.Name `xml:"urn:xmpp:hints no-permanent-store"`
}

// Store asks that the message be stored even if it would not be otherwise.
type Store struct {
	XMLName xml.Name `xml:"urn:xmpp:hints store"`
}

// NoCopy asks that the message not be copied to other resources.
type NoCopy struct {
	XMLName xml.Name `xml:"urn:xmpp:hints no-copy"`
}
