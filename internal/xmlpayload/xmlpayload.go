// Package xmlpayload turns Go values into XML token streams for sending as
// stanza payloads.
//
// It exists because mellium.im/xmpp v0.22.0's Session.EncodeElement ignores
// the start element it is given (its internal marshal.EncodeXMLElement never
// reads it), so a stanza must be sent as tokens with SendElement.
package xmlpayload

import (
	"bytes"
	"encoding/xml"
	"fmt"

	"mellium.im/xmlstream"
)

// Reader returns the tokens of one payload: its own tokens when it is an
// xmlstream.Marshaler or an xml.TokenReader, else what encoding/xml makes
// of it.
func Reader(v any) (xml.TokenReader, error) {
	switch v := v.(type) {
	case xmlstream.Marshaler:
		return v.TokenReader(), nil
	case xml.TokenReader:
		return v, nil
	}
	b, err := xml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("xmlpayload: encode %T: %w", v, err)
	}
	return xml.NewDecoder(bytes.NewReader(b)), nil
}

// Readers concatenates the tokens of several payloads.
func Readers(vs ...any) (xml.TokenReader, error) {
	rs := make([]xml.TokenReader, 0, len(vs))
	for _, v := range vs {
		r, err := Reader(v)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return xmlstream.MultiReader(rs...), nil
}
