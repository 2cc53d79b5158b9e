package envelope

import (
	"encoding/binary"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// ContentKind says what a Content holds. Later versions add kinds; Open
// reports one it does not know with ErrUnsupportedContent.
type ContentKind string

const (
	// KindText is a text message.
	KindText ContentKind = "text"
	// KindKeyShare hands a contact key to the one recipient of a standard
	// envelope (and to the sender's other devices).
	KindKeyShare ContentKind = "key-share"
)

// contentVersion is the first byte of every encoded content.
const contentVersion = 0

// padBlock: the encoded content is padded with zeros to a multiple of
// padBlock, so that the payload size shows the server little of the
// message length.
const padBlock = 256

// maxContent is the largest encoded content, padding included.
const maxContent = envelopexml.MaxPayloadSize - envelopexml.TagSize

// MaxTextSize is the largest text a KindText content can carry, in bytes.
const MaxTextSize = maxContent - (1 + 4 + len(KindText) + 4)

// Content is what an envelope carries, inside the encryption.
//
// Formatting a Content with the fmt package prints its kind and size only,
// never its text or key.
type Content struct {
	Kind ContentKind
	Text string     // for KindText: UTF-8, at most MaxTextSize bytes
	Key  ContactKey // for KindKeyShare
}

// String describes c without its text or key.
func (c Content) String() string {
	switch c.Kind {
	case KindText:
		return fmt.Sprintf("envelope.Content(text, %d bytes)", len(c.Text))
	case KindKeyShare:
		return fmt.Sprintf("envelope.Content(key-share, %s)", c.Key)
	}
	if c.Kind == "" {
		return "envelope.Content(zero)"
	}
	return fmt.Sprintf("envelope.Content(%q)", string(c.Kind))
}

// Format makes every fmt verb print String.
func (c Content) Format(f fmt.State, _ rune) { io.WriteString(f, c.String()) }

// marshal encodes c: version byte, str(kind), str(body), zero padding to a
// multiple of padBlock. str(x) is x's length as 4 bytes big-endian, then x.
func (c Content) marshal() ([]byte, error) {
	var body []byte
	switch c.Kind {
	case KindText:
		if !utf8.ValidString(c.Text) {
			return nil, fmt.Errorf("%w: text is not UTF-8", ErrBadContent)
		}
		if len(c.Text) > MaxTextSize {
			return nil, fmt.Errorf("%w: text of %d bytes, at most %d", ErrTooLarge, len(c.Text), MaxTextSize)
		}
		body = []byte(c.Text)
	case KindKeyShare:
		if !c.Key.valid() {
			return nil, fmt.Errorf("%w: key-share of the zero ContactKey", ErrBadContent)
		}
		body = c.Key.key()
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedContent, string(c.Kind))
	}
	n := 1 + 4 + len(c.Kind) + 4 + len(body)
	padded := (n + padBlock - 1) / padBlock * padBlock
	b := make([]byte, 0, padded)
	b = append(b, contentVersion)
	b = appendStr(b, []byte(c.Kind))
	b = appendStr(b, body)
	return b[:padded], nil // the spare capacity is zeroed by make
}

// unmarshalContent decodes what marshal encodes, accepting any amount of
// zero padding.
func unmarshalContent(b []byte) (Content, error) {
	if len(b) == 0 {
		return Content{}, fmt.Errorf("%w: empty", ErrBadContent)
	}
	if b[0] != contentVersion {
		return Content{}, fmt.Errorf("%w: content version %d", ErrUnsupportedVersion, b[0])
	}
	rest := b[1:]
	kind, rest, ok := readStr(rest)
	if !ok {
		return Content{}, fmt.Errorf("%w: truncated kind", ErrBadContent)
	}
	body, rest, ok := readStr(rest)
	if !ok {
		return Content{}, fmt.Errorf("%w: truncated body", ErrBadContent)
	}
	for _, p := range rest {
		if p != 0 {
			return Content{}, fmt.Errorf("%w: non-zero padding", ErrBadContent)
		}
	}
	switch c := (Content{Kind: ContentKind(kind)}); c.Kind {
	case KindText:
		if !utf8.Valid(body) {
			return Content{}, fmt.Errorf("%w: text is not UTF-8", ErrBadContent)
		}
		c.Text = string(body)
		return c, nil
	case KindKeyShare:
		k, err := ParseContactKey(body)
		if err != nil {
			return Content{}, fmt.Errorf("%w: key-share: %v", ErrBadContent, err)
		}
		c.Key = k
		return c, nil
	}
	if len(kind) > 64 || !printable(kind) {
		return Content{}, fmt.Errorf("%w: unsupported kind", ErrUnsupportedContent)
	}
	return Content{}, fmt.Errorf("%w: %q", ErrUnsupportedContent, kind)
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// appendStr appends str(s): len(s) as a 4-byte big-endian integer, then s.
func appendStr[T ~string | ~[]byte](b []byte, s T) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// readStr reads a str from b, returning it and the rest of b.
func readStr(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}
