package expiry

import (
	"context"
	"strconv"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/component"
)

// RawSender is a Sender that writes payloads held as bytes as they are (a
// *component.Component). When the relay's Sender is one, the relay writes
// each held envelope's canonical bytes and its constant payloads as
// bytes, without tokenising them again for every device (issue 15: the
// re-parse was about a third of the relay's CPU).
type RawSender interface {
	SendMessageRaw(ctx context.Context, m stanza.Message, children ...[]byte) error
}

// The payloads the relay writes around an envelope, as the bytes
// xml.Marshal makes of their types (TestWireMatchesMarshal): made once,
// read by every send, never written.
const (
	// wireTail follows a message delivered to its recipient: a receipt
	// request, markable, and the three hints that keep the server from
	// storing, archiving or carbon-copying it.
	wireTail = `<request xmlns="urn:xmpp:receipts"></request><markable xmlns="urn:xmpp:chat-markers:0"></markable>` + wireHints
	// wireHints follows a copy delivered to its sender's other devices.
	wireHints = `<no-store xmlns="urn:xmpp:hints"></no-store><no-permanent-store xmlns="urn:xmpp:hints"></no-permanent-store><no-copy xmlns="urn:xmpp:hints"></no-copy>`
	// wireCopyHints follows a copy sent through the server to the
	// instance that owns the sender (no no-copy: it goes to a
	// component address, not a device).
	wireCopyHints = `<no-store xmlns="urn:xmpp:hints"></no-store><no-permanent-store xmlns="urn:xmpp:hints"></no-permanent-store>`
)

// wire holds the constant payloads as byte slices, so that no send
// converts them again.
type wire struct {
	tail, hints, copyHints []byte
}

func newWire() wire {
	return wire{tail: []byte(wireTail), hints: []byte(wireHints), copyHints: []byte(wireCopyHints)}
}

// appendTimed appends expiryxml.Timed{Expires: expires} and
// ephemeral.Ephemeral{Timer: timer} as xml.Marshal writes them.
func appendTimed(b []byte, expires time.Time, timer uint32) []byte {
	b = append(b, `<timed xmlns="urn:clinkme:expiry:0" expires="`...)
	b = expires.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `"></timed><ephemeral xmlns="urn:xmpp:ephemeral:0" timer="`...)
	b = strconv.AppendUint(b, uint64(timer), 10)
	return append(b, `"></ephemeral>`...)
}

// appendBy appends the element name (expiryxml.Sent's "sent" or
// expiryxml.Copy's "copy") with its by attribute, as xml.Marshal writes
// it.
func appendBy(b []byte, name, by string) []byte {
	b = append(b, '<')
	b = append(b, name...)
	b = append(b, ` xmlns="urn:clinkme:expiry:0" by="`...)
	b = component.AppendEscaped(b, by)
	b = append(b, `"></`...)
	b = append(b, name...)
	return append(b, '>')
}
