// Package clinkidxml implements the payloads of ClinkID entitlements over
// XMPP (urn:clinkme:clinkid:0, specified in docs/clinkid.md): a device asks
// clinkd which ClinkMe entitlements its own account carries.
//
// A device sends an IQ get with an empty <entitlements/> to the clinkd
// component; the result lists the account's entitlements by name:
//
//	<entitlements xmlns='urn:clinkme:clinkid:0' account='alice'>
//	  <entitlement name='secure'/>
//	</entitlements>
//
// Only the wire types live here; package clinkid (the service) answers the
// requests. A later, incompatible version of the payload gets a new
// namespace (urn:clinkme:clinkid:1); new entitlement names are not a new
// version, and a device ignores names it does not know.
package clinkidxml

import "encoding/xml"

// NS is the namespace of the payload.
const NS = "urn:clinkme:clinkid:0"

// Entitlements is both the request (empty) and the result.
type Entitlements struct {
	XMLName xml.Name `xml:"urn:clinkme:clinkid:0 entitlements"`
	// Account is the ClinkID account name (the localpart of the asking
	// JID); set in results only.
	Account string        `xml:"account,attr,omitempty"`
	Items   []Entitlement `xml:"entitlement"`
}

// Entitlement is one entitlement the account carries, e.g. "secure" for
// ClinkMe Secure.
type Entitlement struct {
	Name string `xml:"name,attr"`
}

// Names returns the entitlement names in the order received.
func (e Entitlements) Names() []string {
	names := make([]string, len(e.Items))
	for i, it := range e.Items {
		names[i] = it.Name
	}
	return names
}

// Has reports whether the result lists name.
func (e Entitlements) Has(name string) bool {
	for _, it := range e.Items {
		if it.Name == name {
			return true
		}
	}
	return false
}
