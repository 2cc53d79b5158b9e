package expiry_test

import (
	"encoding/xml"
	"math"
	"testing"
	"time"

	"github.com/clinkme/clinkd/expiry"
	"github.com/clinkme/clinkd/extensions/ephemeral"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
)

// TestWireMatchesMarshal proves that the payloads the relay writes as
// bytes are what encoding/xml makes of their types, byte for byte, so
// that a device cannot tell the two ways of sending apart.
func TestWireMatchesMarshal(t *testing.T) {
	marshal := func(vs ...any) string {
		t.Helper()
		var out []byte
		for _, v := range vs {
			b, err := xml.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b...)
		}
		return string(out)
	}
	for _, c := range []struct{ got, want string }{
		{expiry.WireTail, marshal(receiptsxml.Request{}, markers.Markable{}, hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{})},
		{expiry.WireHints, marshal(hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{})},
		{expiry.WireCopyHints, marshal(hints.NoStore{}, hints.NoPermanentStore{})},
	} {
		if c.got != c.want {
			t.Errorf("constant payload = %s, want %s", c.got, c.want)
		}
	}
	for _, tc := range []struct {
		expires time.Time
		timer   uint32
	}{
		{time.Date(2026, 12, 7, 2, 30, 0, 0, time.UTC), 1},
		{time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC), 604800},
		{time.Date(2030, 6, 30, 23, 59, 59, 123456789, time.UTC), math.MaxUint32},
		{time.Unix(1e9, 5e8).UTC(), 0},
	} {
		got := string(expiry.AppendTimed([]byte("prefix"), tc.expires, tc.timer))
		if want := "prefix" + marshal(expiryxml.Timed{Expires: tc.expires}, ephemeral.Ephemeral{Timer: tc.timer}); got != want {
			t.Errorf("AppendTimed(%v, %d) = %s, want %s", tc.expires, tc.timer, got, want)
		}
	}
	for _, by := range []string{"alice@example.org/laptop", `odd@example.org/"quote'<&>`, "ü@example.org/\t"} {
		if got, want := string(expiry.AppendBy(nil, "sent", by)), marshal(expiryxml.Sent{By: by}); got != want {
			t.Errorf("AppendBy(sent, %q) = %s, want %s", by, got, want)
		}
		if got, want := string(expiry.AppendBy(nil, "copy", by)), marshal(expiryxml.Copy{By: by}); got != want {
			t.Errorf("AppendBy(copy, %q) = %s, want %s", by, got, want)
		}
	}
}
