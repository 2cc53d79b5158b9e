package jingle_test

import (
	"encoding/xml"
	"fmt"

	"github.com/clinkme/clinkd/extensions/jingle"
)

// A session-initiate as a ClinkMe device sends it (candidates follow in
// transport-info).
func ExampleJingle() {
	j := jingle.Jingle{
		Action:    jingle.ActionSessionInitiate,
		Initiator: "alice@example.org/phone",
		SID:       "a73sjjvkla37jfea",
		Contents: []jingle.Content{{
			Creator: "initiator", Name: "0", Senders: "both",
			Description: &jingle.Description{
				Media: "audio",
				PayloadTypes: []jingle.PayloadType{{
					ID: 111, Name: "opus", ClockRate: 48000, Channels: 2,
					Parameters: []jingle.Parameter{{Name: "minptime", Value: "10"}, {Name: "useinbandfec", Value: "1"}},
				}},
				Sources: []jingle.Source{{SSRC: 3735928559, Parameters: []jingle.SSMAParameter{
					{Name: "cname", Value: "Ux4oNbXkUHsbvL1L"}, {Name: "msid", Value: "clinkme-a73sjjvk audio"},
				}}},
				RTCPMux: &jingle.Empty{},
			},
			Transport: &jingle.Transport{
				Ufrag: "qLQMhUhwvPDdTvrS", Pwd: "xSyUjzbMbBWFHbXxdOXmJHjlFJdVbmOW",
				Fingerprint: &jingle.Fingerprint{Hash: "sha-256", Setup: "actpass",
					Value: "8A:3B:5F:11:0C:74:9E:2D:45:A1:B6:C3:D8:E9:F0:01:12:23:34:45:56:67:78:89:9A:AB:BC:CD:DE:EF:F0:0F"},
			},
		}},
		Group: &jingle.Group{Semantics: "BUNDLE", Contents: []jingle.GroupContent{{Name: "0"}}},
	}
	if err := j.Validate(); err != nil {
		panic(err)
	}
	out, _ := xml.MarshalIndent(j, "", "  ")
	fmt.Println(string(out))
	// Output:
	// <jingle xmlns="urn:xmpp:jingle:1" action="session-initiate" initiator="alice@example.org/phone" sid="a73sjjvkla37jfea">
	//   <content xmlns="urn:xmpp:jingle:1" creator="initiator" name="0" senders="both">
	//     <description xmlns="urn:xmpp:jingle:apps:rtp:1" media="audio">
	//       <payload-type xmlns="urn:xmpp:jingle:apps:rtp:1" id="111" name="opus" clockrate="48000" channels="2">
	//         <parameter xmlns="urn:xmpp:jingle:apps:rtp:1" name="minptime" value="10"></parameter>
	//         <parameter xmlns="urn:xmpp:jingle:apps:rtp:1" name="useinbandfec" value="1"></parameter>
	//       </payload-type>
	//       <source xmlns="urn:xmpp:jingle:apps:rtp:ssma:0" ssrc="3735928559">
	//         <parameter xmlns="urn:xmpp:jingle:apps:rtp:ssma:0" name="cname" value="Ux4oNbXkUHsbvL1L"></parameter>
	//         <parameter xmlns="urn:xmpp:jingle:apps:rtp:ssma:0" name="msid" value="clinkme-a73sjjvk audio"></parameter>
	//       </source>
	//       <rtcp-mux xmlns="urn:xmpp:jingle:apps:rtp:1"></rtcp-mux>
	//     </description>
	//     <transport xmlns="urn:xmpp:jingle:transports:ice-udp:1" ufrag="qLQMhUhwvPDdTvrS" pwd="xSyUjzbMbBWFHbXxdOXmJHjlFJdVbmOW">
	//       <fingerprint xmlns="urn:xmpp:jingle:apps:dtls:0" hash="sha-256" setup="actpass">8A:3B:5F:11:0C:74:9E:2D:45:A1:B6:C3:D8:E9:F0:01:12:23:34:45:56:67:78:89:9A:AB:BC:CD:DE:EF:F0:0F</fingerprint>
	//     </transport>
	//   </content>
	//   <group xmlns="urn:xmpp:jingle:apps:grouping:0" semantics="BUNDLE">
	//     <content xmlns="urn:xmpp:jingle:apps:grouping:0" name="0"></content>
	//   </group>
	// </jingle>
}
