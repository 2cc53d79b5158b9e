package envelopexml_test

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"time"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// A server that relays a message checks that it carries a well-formed
// envelope, without any key. The binary fields here are filler of the right
// sizes; a device SDK fills them with real ciphertext and a signature.
func ExampleEnvelope_MarshalXML() {
	e := envelopexml.Envelope{
		Kind:      envelopexml.Enhanced,
		From:      "alice@example.org",
		To:        []string{"bob@example.org"},
		ID:        "m1",
		Time:      time.Date(2025, 11, 25, 19, 44, 0, 0, time.UTC),
		KeyID:     bytes.Repeat([]byte{0x11}, envelopexml.KeyIDSize),
		Nonce:     bytes.Repeat([]byte{0x22}, envelopexml.NonceSize),
		Payload:   bytes.Repeat([]byte{0x33}, 48),
		Signature: bytes.Repeat([]byte{0x44}, envelopexml.MinRSASize),
	}
	if err := e.Validate(); err != nil {
		fmt.Println(err)
		return
	}
	out, err := xml.MarshalIndent(e, "", "  ")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(out))

	var back envelopexml.Envelope
	if err := xml.Unmarshal(out, &back); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(back.Validate() == nil, back.Kind, back.From, back.To)
	// Output:
	// <envelope xmlns="urn:clinkme:envelope:0" kind="enhanced" from="alice@example.org" id="m1" time="2025-11-25T19:44:00Z">
	//   <to jid="bob@example.org"></to>
	//   <keyid>EREREREREREREREREREREQ==</keyid>
	//   <nonce>IiIiIiIiIiIiIiIi</nonce>
	//   <payload>MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMz</payload>
	//   <sig>RERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERE</sig>
	// </envelope>
	// true enhanced alice@example.org [bob@example.org]
}
