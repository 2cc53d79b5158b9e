// Package expiryxml implements the payloads of clinkd's timed-message relay,
// namespace urn:clinkme:expiry:0, specified in docs/expiry.md.
//
// A timed message itself is an end-to-end envelope (extensions/envelopexml)
// whose signed expires attribute is its validity period; these payloads
// are what clinkd adds when it relays one, tells devices to delete one, or
// passes a copy between instances.
package expiryxml

import (
	"encoding/xml"
	"fmt"
	"time"
)

// NS is the namespace of these payloads. A version change changes it.
const NS = "urn:clinkme:expiry:0"

// Timed marks a relayed timed message with its absolute expiry, the same
// instant as the envelope's expires attribute, readable without parsing
// the envelope.
type Timed struct {
	XMLName xml.Name  `xml:"urn:clinkme:expiry:0 timed"`
	Expires time.Time `xml:"expires,attr"`
}

// Expired tells a device that the timed message with ID, in the
// conversation the stanza comes from, has expired: delete it now.
type Expired struct {
	XMLName xml.Name `xml:"urn:clinkme:expiry:0 expired"`
	ID      string   `xml:"id,attr"`
}

// Sent marks the copy of a timed message that one of the user's own
// devices (By) sent, delivered to the user's other devices.
type Sent struct {
	XMLName xml.Name `xml:"urn:clinkme:expiry:0 sent"`
	By      string   `xml:"by,attr"`
}

// Copy carries, from the clinkd instance that owns the recipient to the
// one that owns the sender, a timed message for the sender's other
// devices. It travels from the recipient's address at the component to the
// sender's, so only clinkd can send it; the envelope follows it as a
// sibling payload.
type Copy struct {
	XMLName xml.Name `xml:"urn:clinkme:expiry:0 copy"`
	By      string   `xml:"by,attr"` // the sending device
}

// Device names the device a stanza comes from by the stable id it chose
// (1 to 64 bytes of A-Z, a-z, 0-9, '.', '_' and '-'), which outlives its
// XMPP resource: in a device's announcement (presence to its own user's
// address), so that clinkd delivers each held message to it once however
// often it reconnects with a new resource; and in a receipt clinkd
// forwards, naming the reader's device.
type Device struct {
	XMLName xml.Name `xml:"urn:clinkme:expiry:0 device"`
	ID      string   `xml:"id,attr"`
}

// MaxDeviceIDLen bounds a Device's ID.
const MaxDeviceIDLen = 64

// CheckDeviceID reports whether id is a valid Device ID. The error never
// quotes id.
func CheckDeviceID(id string) error {
	if len(id) == 0 || len(id) > MaxDeviceIDLen {
		return fmt.Errorf("expiryxml: a device id is 1 to %d bytes, not %d", MaxDeviceIDLen, len(id))
	}
	for i := range len(id) {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("expiryxml: a device id holds only A-Z, a-z, 0-9, '.', '_' and '-' (byte %d is not)", i)
		}
	}
	return nil
}
