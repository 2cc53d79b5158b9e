package keydirxml

import (
	"encoding/xml"
	"strconv"
)

// AppendXML appends l as xml.Marshal writes it, byte for byte
// (TestAppendXMLMatchesMarshal, FuzzDecode), for the server, which
// writes a lookup's answer as bytes: encoding/xml's reflection over an
// answer of a dozen fields per entry cost about a tenth of a lookup's
// CPU in clinkd (issue 15). Like Marshal it writes l whether valid or
// not.
func (l *Lookup1) AppendXML(b []byte) []byte {
	b = append(b, lookup1Start...)
	if l.Known != 0 {
		b = append(b, ` known="`...)
		b = strconv.AppendInt(b, l.Known, 10)
		b = append(b, '"')
	}
	if l.Unchanged != 0 {
		b = append(b, ` unchanged="`...)
		b = strconv.AppendInt(b, l.Unchanged, 10)
		b = append(b, '"')
	}
	b = append(b, '>')
	for _, j := range l.JIDs {
		b = appendElement(b, "jid", j)
	}
	b = AppendAnswerHead(b, l.Checkpoint, l.Head)
	for i := range l.Entries {
		b = l.Entries[i].AppendXML(b)
	}
	return append(b, lookup1Close...)
}

const (
	lookup1Start = `<lookup xmlns="` + NS1 + `"`
	lookup1Open  = lookup1Start + `>`
	lookup1Close = `</lookup>`
)

// AppendAnswerHead appends the checkpoint (when not empty) and the head
// (when not nil) of a v1 answer as AppendXML writes them.
func AppendAnswerHead(b []byte, checkpoint string, h *Head) []byte {
	if checkpoint != "" {
		b = appendElement(b, "checkpoint", checkpoint)
	}
	if h != nil {
		b = append(b, `<head xmlns="`+NS1+`" index="`...)
		b = strconv.AppendInt(b, h.Index, 10)
		b = append(b, '"')
		b = appendAttr(b, "record", h.Record)
		b = append(b, '>')
		b = appendEscaped(b, h.Proof)
		b = append(b, `</head>`...)
	}
	return b
}

// AppendLookup1Answer appends a lookup answer (no JIDs) from its parts,
// encoded already: head by AppendAnswerHead, each entry by
// Entry1.AppendXML. The bytes are those AppendXML writes for the Lookup1
// they encode (TestAnswerPartsMatchAppendXML), for a server that keeps
// the parts encoded, since they are the same in every answer at one log
// size.
func AppendLookup1Answer(b, head []byte, entries ...[]byte) []byte {
	b = append(b, lookup1Open...)
	b = append(b, head...)
	for _, e := range entries {
		b = append(b, e...)
	}
	return append(b, lookup1Close...)
}

// AppendXML appends e as its MarshalXML writes it.
func (e *Entry1) AppendXML(b []byte) []byte {
	b = append(b, `<entry xmlns="`+NS1+`"`...)
	b = appendAttr(b, "jid", e.JID)
	b = appendAttr(b, "status", e.Status)
	b = appendAttr(b, "vrf", e.VRF)
	if e.Status == StatusNone {
		b = append(b, '>')
		b = appendElement(b, "map", e.Map)
		return append(b, `</entry>`...)
	}
	for _, a := range [...]struct {
		name string
		v    int64
	}{{"version", e.Version}, {"index", e.Index}, {"time", e.Time}} {
		b = append(b, ' ')
		b = append(b, a.name...)
		b = append(b, `="`...)
		b = strconv.AppendInt(b, a.v, 10)
		b = append(b, '"')
	}
	for _, a := range [...]struct{ name, v string }{{"fingerprint", e.Fingerprint}, {"kind", e.Kind}, {"record", e.Record}, {"root", e.Root}} {
		if a.v != "" {
			b = appendAttr(b, a.name, a.v)
		}
	}
	b = append(b, '>')
	if e.Key != "" {
		b = appendElement(b, "key", e.Key)
	}
	b = appendElement(b, "map", e.Map)
	if e.Proof != "" {
		b = appendElement(b, "proof", e.Proof)
	}
	return append(b, `</entry>`...)
}

// appendAttr appends ` name="value"`, value escaped as encoding/xml
// escapes it.
func appendAttr(b []byte, name, value string) []byte {
	b = append(b, ' ')
	b = append(b, name...)
	b = append(b, `="`...)
	b = appendEscaped(b, value)
	return append(b, '"')
}

// appendElement appends <name>text</name>, text escaped.
func appendElement(b []byte, name, text string) []byte {
	b = append(b, '<')
	b = append(b, name...)
	b = append(b, '>')
	b = appendEscaped(b, text)
	b = append(b, "</"...)
	b = append(b, name...)
	return append(b, '>')
}

// appendEscaped appends s escaped as xml.EscapeText escapes it: as it
// is when it is printable ASCII with nothing to escape (base64, numbers,
// most JIDs), else through xml.EscapeText itself.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\'', c == '&', c == '<', c == '>':
			w := appendWriter{b}
			_ = xml.EscapeText(&w, []byte(s)) // an appendWriter never fails
			return w.b
		}
	}
	return append(b, s...)
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
