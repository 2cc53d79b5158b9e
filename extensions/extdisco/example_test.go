package extdisco_test

import (
	"encoding/xml"
	"fmt"
	"time"

	"github.com/clinkme/clinkd/extensions/extdisco"
)

func ExampleServices() {
	exp := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	out, _ := xml.MarshalIndent(extdisco.Services{Services: []extdisco.Service{
		{Type: "stun", Host: "turn.example.org", Port: 3478, Transport: "udp"},
		{Type: "turn", Host: "turn.example.org", Port: 3478, Transport: "udp", Restricted: true,
			Username: "1795636800:alice@example.org", Password: "base64-hmac", Expires: &exp},
	}}, "", "  ")
	fmt.Println(string(out))
	// Output:
	// <services xmlns="urn:xmpp:extdisco:2">
	//   <service xmlns="urn:xmpp:extdisco:2" type="stun" host="turn.example.org" port="3478" transport="udp"></service>
	//   <service xmlns="urn:xmpp:extdisco:2" type="turn" host="turn.example.org" port="3478" transport="udp" restricted="true" username="1795636800:alice@example.org" password="base64-hmac" expires="2026-11-25T20:00:00Z"></service>
	// </services>
}
