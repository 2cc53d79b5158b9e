package dispatch

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// TestDecodedBuffersAreZeroed: what an envelope left in the router's
// buffers is zeroed when they go back for the next envelope, the bytes a
// decode that failed halfway wrote beyond their length included.
func TestDecodedBuffersAreZeroed(t *testing.T) {
	t.Parallel()
	r, err := New(Config{
		Component: jid.MustParse("clink.example.org"), Devices: NewDevices(DevicesConfig{}),
		Timed: Unavailable{}, Ordinary: Unavailable{}, Access: Access{Local: "example.org"},
	})
	if err != nil {
		t.Fatal(err)
	}
	const mark = 0x5A
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{mark}, n)) }
	payload := b64(32)
	// The same, but with trailing bits set: strict decoding writes the
	// first 30 bytes before it refuses the last quantum.
	badPayload := payload[:len(payload)-2] + "b="
	now := envelopexml.FormatTime(time.Unix(1_800_000_000, 0))
	envelope := func(payload string) string {
		return `<message type='headline' from='alice@example.org/r' to='bob\40example.org@clink.example.org'>` +
			`<envelope xmlns='urn:clinkme:envelope:0' kind='standard' from='alice@example.org' id='m1' time='` + now + `'>` +
			`<to jid='bob@example.org'/><key fp='` + b64(32) + `'>` + b64(384) + `</key>` +
			`<nonce>` + b64(12) + `</nonce><payload>` + payload + `</payload><sig>` + b64(384) + `</sig></envelope></message>`
	}
	for _, tt := range []struct {
		name    string
		payload string
		ok      bool
	}{
		{"decoded", payload, true},
		{"refused halfway", badPayload, false},
	} {
		m, err := component.ParseStanza(envelope(tt.payload), 256<<10)
		if err != nil {
			t.Fatal(err)
		}
		d := &decoded{}
		err = r.decode(m, jid.MustParse("alice@example.org"), d)
		if (err == nil) != tt.ok {
			t.Fatalf("%s: decode: %v", tt.name, err)
		}
		if tt.ok && !strings.Contains(string(d.raw), payload) {
			t.Fatalf("%s: canonical bytes without the payload: %s", tt.name, d.raw)
		}
		if bytes.IndexByte(d.fields[:cap(d.fields)], mark) < 0 {
			t.Fatalf("%s: the decode left nothing in the buffer, so the test shows nothing", tt.name)
		}
		r.putDecoded(d)
		for what, b := range map[string][]byte{"fields": d.fields[:cap(d.fields)], "canonical bytes": d.raw[:cap(d.raw)]} {
			if i := bytes.IndexFunc(b, func(r rune) bool { return r != 0 }); i >= 0 {
				t.Errorf("%s: the %s buffer still holds %#x at %d", tt.name, what, b[i], i)
			}
		}
	}
}
