package dispatch_test

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// intoBuffer decodes as the router does: into one buffer, reused from
// envelope to envelope.
type intoBuffer struct {
	env envelopexml.Envelope
	buf []byte
}

func (b *intoBuffer) DecodeTokens(r xml.TokenReader, start xml.StartElement) error {
	var err error
	b.buf, err = b.env.DecodeTokensInto(b.buf[:0], r, start)
	return err
}

// FuzzEnvelopeDecodePaths holds the ways a stanza's envelope can be
// decoded to the same result: envelopexml's DecodeTokens over the tokens
// as the stanza holds them (what component.Stanza.Decode does),
// DecodeTokensInto a buffer that earlier envelopes left their bytes in
// (what the router does), and encoding/xml's Decoder around those tokens
// (what it did before).
func FuzzEnvelopeDecodePaths(f *testing.F) {
	// Reused across inputs and never cleared: a field that reads what an
	// earlier envelope left, or overlaps another, decodes differently.
	into := &intoBuffer{buf: make([]byte, 0, 64)}
	// The envelope package's corpus: its vectors and what its fuzzer found.
	dir := filepath.Join("..", "..", "extensions", "envelopexml", "testdata", "fuzz", "FuzzParseEnvelope")
	files, err := os.ReadDir(dir)
	if err != nil || len(files) == 0 {
		f.Fatalf("the envelope corpus at %s: %v (%d files)", dir, err, len(files))
	}
	for _, file := range files {
		b, err := os.ReadFile(filepath.Join(dir, file.Name()))
		if err != nil {
			f.Fatal(err)
		}
		_, value, _ := strings.Cut(string(b), "\n")
		value = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(value), "[]byte("), ")")
		text, err := strconv.Unquote(value)
		if err != nil {
			f.Fatalf("%s: %v", file.Name(), err)
		}
		f.Add([]byte(text))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := component.ParseStanza(`<message from='alice@example.org/r' to='bob\40example.org@clink.example'>`+string(payload)+`</message>`, 256<<10)
		if err != nil {
			return
		}
		for _, name := range m.Payloads() {
			if name.Local != "envelope" {
				continue
			}
			var direct, viaDecoder envelopexml.Envelope
			errDirect := m.Decode(name, &direct)
			errDecoder := xml.NewTokenDecoder(m.Payload(name)).Decode(&viaDecoder)
			// Decode words its error for the sender, around the decoder's.
			if (errDirect == nil) != (errDecoder == nil) ||
				errDirect != nil && errDirect.Error() != "malformed envelope payload: "+errDecoder.Error() {
				t.Fatalf("%s: DecodeTokens: %v; encoding/xml: %v", payload, errDirect, errDecoder)
			}
			if errDirect == nil && !reflect.DeepEqual(direct, viaDecoder) {
				t.Fatalf("%s: DecodeTokens gave %+v; encoding/xml %+v", payload, direct, viaDecoder)
			}
			into.env = envelopexml.Envelope{}
			errInto := m.Decode(name, into)
			if (errInto == nil) != (errDirect == nil) || errInto != nil && errInto.Error() != errDirect.Error() {
				t.Fatalf("%s: DecodeTokensInto: %v; DecodeTokens: %v", payload, errInto, errDirect)
			}
			if errInto == nil {
				// Appending to each field in turn must leave the
				// others as they were: fields share the buffer, not
				// their capacity.
				if !reflect.DeepEqual(into.env, direct) {
					t.Fatalf("%s: DecodeTokensInto gave %+v; DecodeTokens %+v", payload, into.env, direct)
				}
				fields := [][]byte{into.env.KeyID, into.env.Nonce, into.env.Payload, into.env.Signature}
				for _, k := range into.env.Keys {
					fields = append(fields, k.Fingerprint, k.Key)
				}
				for _, fld := range fields {
					_ = append(fld, 0xFF)
				}
				if !reflect.DeepEqual(into.env, direct) {
					t.Fatalf("%s: appending to a field changed another: %+v, want %+v", payload, into.env, direct)
				}
			}
			return
		}
	})
}
