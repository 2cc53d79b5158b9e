package component

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"io"
	"sync"
	"testing"
)

// BenchmarkReadStanzas reads a stream of 2.5 KB messages shaped like a
// timed message's envelope (base64 children, a dozen elements) into
// stanzas, as the read loop does. The baseline, in the same run, is what
// the link read with before: encoding/xml's Decoder over the same bytes.
// Report link-reader/encoding-xml for time and bytes, not the timings:
//
//	go test -run '^$' -bench ReadStanzas -count 5 ./component/
func BenchmarkReadStanzas(b *testing.B) {
	const n = 1000
	stream := envelopeStream(n)
	// The link reads each stanza into memory it takes back once the
	// stanza's handler has returned; the baseline read into memory of
	// its own (mem nil).
	read := func(b *testing.B, r xml.TokenReader, mem *sync.Pool) int {
		var jids jidCache
		got := 0
		for {
			tok, err := r.Token()
			if err == io.EOF {
				return got
			}
			if err != nil {
				b.Fatal(err)
			}
			if start, ok := tok.(xml.StartElement); ok {
				var m *stanzaMemory
				if mem != nil {
					m = mem.Get().(*stanzaMemory)
				}
				s, oversized, err := readStanza(r, start, 256<<10, &jids, m)
				if err != nil || oversized {
					b.Fatal(err, oversized)
				}
				if m := s.release(); m != nil {
					mem.Put(m)
				}
				got++
			}
		}
	}
	b.Run("encoding-xml", func(b *testing.B) {
		b.SetBytes(int64(len(stream) / n))
		b.ReportAllocs()
		for i := 0; i < b.N; i += n {
			r, err := newReferenceReader(stream)
			if err != nil {
				b.Fatal(err)
			}
			if got := read(b, r, nil); got != n {
				b.Fatalf("read %d stanzas", got)
			}
		}
	})
	b.Run("link-reader", func(b *testing.B) {
		b.SetBytes(int64(len(stream) / n))
		b.ReportAllocs()
		mem := &sync.Pool{New: newStanzaMemory}
		for i := 0; i < b.N; i += n {
			r := newStreamReader(newLinkBuffer(bytes.NewReader(stream), linkBufferSize), nsAccept, 4<<20)
			if got := read(b, r, mem); got != n {
				b.Fatalf("read %d stanzas", got)
			}
		}
	})
}

// envelopeStream is n messages like a relayed timed message, with
// whitespace between some, as a server writes them.
func envelopeStream(n int) []byte {
	b64 := func(size int) string {
		p := make([]byte, size)
		rand.Read(p)
		return base64.StdEncoding.EncodeToString(p)
	}
	var buf bytes.Buffer
	for i := range n {
		fmt.Fprintf(&buf, `<message type='headline' from='alice@example.org/laptop' to='u%d\40example.org@clink.example.org' id='m%d'>`+
			`<envelope xmlns="urn:clinkme:envelope:0" kind="standard" from="alice@example.org" id="%032x" time="2027-01-15T08:00:00Z" expires="2027-01-15T09:00:00Z">`+
			`<to jid="u%d@example.org"></to><key fp="%s">%s</key><key fp="%s">%s</key><nonce>%s</nonce><payload>%s</payload><sig>%s</sig></envelope>`+
			`<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`,
			i%200, i, i, i%200, b64(32), b64(384), b64(32), b64(384), b64(12), b64(300), b64(384))
		if i%10 == 0 {
			buf.WriteString(" ")
		}
	}
	return buf.Bytes()
}
