package keydirxml_test

import (
	"encoding/xml"
	"fmt"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

func ExampleLookup() {
	req, _ := xml.MarshalIndent(keydirxml.Lookup{JIDs: []string{"alice@example.org", "bob@example.org"}}, "", "  ")
	fmt.Println(string(req))
	res, _ := xml.MarshalIndent(keydirxml.Lookup{
		Checkpoint: "clink.example.org/keydir\n2\nq1Y3DSaNRdLBwsLbmUMsT7tGVHKh4r6Wwmh+gKs0VN4=\n\n— clink.example.org/keydir Az3grlbDCp5dT7UN7a7R...\n",
		Entries: []keydirxml.Entry{
			{JID: "alice@example.org", Status: keydirxml.StatusFound, Index: 0, Time: 1795636800,
				Fingerprint: "5c9c1d4e0c2b7a0f3d8e6b1a9f4c2e7d8b3a6f1e0d9c8b7a6f5e4d3c2b1a0f9e",
				Key:         "MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA...",
				Proof:       &keydirxml.Proof{Hashes: []string{"3pTLmB8zu3Zk4vLqoGMZX6D1j0Gn0bKx0mMI1cWw8VY="}}},
			{JID: "bob@example.org", Status: keydirxml.StatusNone},
		},
	}, "", "  ")
	fmt.Println(string(res))
	// Output:
	// <lookup xmlns="urn:clinkme:keydir:0">
	//   <jid>alice@example.org</jid>
	//   <jid>bob@example.org</jid>
	// </lookup>
	// <lookup xmlns="urn:clinkme:keydir:0">
	//   <checkpoint>clink.example.org/keydir&#xA;2&#xA;q1Y3DSaNRdLBwsLbmUMsT7tGVHKh4r6Wwmh+gKs0VN4=&#xA;&#xA;— clink.example.org/keydir Az3grlbDCp5dT7UN7a7R...&#xA;</checkpoint>
	//   <entry xmlns="urn:clinkme:keydir:0" jid="alice@example.org" status="found" index="0" time="1795636800" fingerprint="5c9c1d4e0c2b7a0f3d8e6b1a9f4c2e7d8b3a6f1e0d9c8b7a6f5e4d3c2b1a0f9e">
	//     <key>MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA...</key>
	//     <proof xmlns="urn:clinkme:keydir:0">
	//       <hash>3pTLmB8zu3Zk4vLqoGMZX6D1j0Gn0bKx0mMI1cWw8VY=</hash>
	//     </proof>
	//   </entry>
	//   <entry xmlns="urn:clinkme:keydir:0" jid="bob@example.org" status="none"></entry>
	// </lookup>
}

func ExamplePublish() {
	req, _ := xml.Marshal(keydirxml.Publish{Key: "MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA..."})
	fmt.Println(string(req))
	cons, _ := xml.Marshal(keydirxml.Consistency{Old: 3, New: 7})
	fmt.Println(string(cons))
	// Output:
	// <publish xmlns="urn:clinkme:keydir:0"><key>MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA...</key></publish>
	// <consistency xmlns="urn:clinkme:keydir:0" old="3" new="7"></consistency>
}
