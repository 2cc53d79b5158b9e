package component

import (
	"encoding/xml"
	"errors"
	"strings"
)

// ParseStanza reads one stanza from its XML text, as the read loop would
// (with the link's reader, in a component stream whose default namespace
// is jabber:component:accept), with maxBytes as the size limit. It exists
// for fuzz tests, benchmarks and tools of feature packages, which must see
// exactly what a handler sees.
func ParseStanza(text string, maxBytes int) (*Stanza, error) {
	d := newStreamReader(newLinkBuffer(strings.NewReader(text), len(text)+1), nsAccept, max(4<<20, 2*maxBytes))
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if !isStanza(start.Name) {
			return nil, errors.New("component: not a stanza")
		}
		s, oversized, err := readStanza(d, start, maxBytes, nil, nil)
		if err != nil {
			return nil, err
		}
		if oversized {
			return nil, errors.New("component: stanza too large")
		}
		return s, nil
	}
}
