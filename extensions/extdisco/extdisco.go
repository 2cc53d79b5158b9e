// Package extdisco implements the payloads of XEP-0215: External Service
// Discovery (urn:xmpp:extdisco:2), which clinkd uses to hand devices their
// STUN and TURN servers and short-lived TURN credentials.
//
// Only the wire types live here; turncred answers the requests.
package extdisco

import (
	"encoding/xml"
	"time"
)

// NS is the XEP-0215 namespace.
const NS = "urn:xmpp:extdisco:2"

// Services is both the request (<services/>, optionally with a type
// filter) and the result listing the services.
type Services struct {
	XMLName  xml.Name  `xml:"urn:xmpp:extdisco:2 services"`
	Type     string    `xml:"type,attr,omitempty"`
	Services []Service `xml:"service"`
}

// Credentials asks for (and returns) credentials for the services it
// names by host and type.
type Credentials struct {
	XMLName  xml.Name  `xml:"urn:xmpp:extdisco:2 credentials"`
	Services []Service `xml:"service"`
}

// Service is one external service. For TURN with REST credentials,
// Username and Password are set and Expires says until when they work.
type Service struct {
	XMLName    xml.Name   `xml:"urn:xmpp:extdisco:2 service"`
	Type       string     `xml:"type,attr"` // stun, turn or turns
	Host       string     `xml:"host,attr"`
	Port       int        `xml:"port,attr,omitempty"`
	Transport  string     `xml:"transport,attr,omitempty"` // udp or tcp
	Restricted bool       `xml:"restricted,attr,omitempty"`
	Username   string     `xml:"username,attr,omitempty"`
	Password   string     `xml:"password,attr,omitempty"`
	Expires    *time.Time `xml:"expires,attr,omitempty"`
	Name       string     `xml:"name,attr,omitempty"`
}
