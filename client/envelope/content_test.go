package envelope

import (
	"bytes"
	"errors"
	"testing"
)

func TestContentEncoding(t *testing.T) {
	k, err := ParseContactKey(bytes.Repeat([]byte{7}, ContactKeySize))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Content{
		{Kind: KindText, Text: ""},
		{Kind: KindText, Text: "Hello, 世界"},
		{Kind: KindText, Text: string(bytes.Repeat([]byte("a"), 243))}, // exactly one block
		{Kind: KindText, Text: string(bytes.Repeat([]byte("a"), 244))}, // two blocks
		{Kind: KindKeyShare, Key: k},
	} {
		b, err := c.marshal()
		if err != nil {
			t.Fatalf("marshal(%v) = %v", c, err)
		}
		if len(b)%padBlock != 0 {
			t.Errorf("len(marshal(%v)) = %d, not a multiple of %d", c, len(b), padBlock)
		}
		got, err := unmarshalContent(b)
		if err != nil || got.Kind != c.Kind || got.Text != c.Text || !got.Key.Equal(c.Key) {
			t.Errorf("unmarshalContent(marshal(%v)) = %v, %v", c, got, err)
		}
	}
	// The layout of docs/envelope.md, byte by byte.
	b, err := Content{Kind: KindText, Text: "hi"}.marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("\x00\x00\x00\x00\x04text\x00\x00\x00\x02hi"), make([]byte, 256-15)...)
	if !bytes.Equal(b, want) {
		t.Errorf("marshal(text hi) = %x, want %x", b, want)
	}
	// Padding is optional when reading.
	if c, err := unmarshalContent(want[:15]); err != nil || c.Text != "hi" {
		t.Errorf("unmarshalContent(unpadded) = %v, %v", c, err)
	}
}

// TestContentPadding: the sender pads to the smallest multiple of 256 that
// holds the content, so content of a multiple of 256 bytes gets no padding
// (docs/envelope.md, section 4).
func TestContentPadding(t *testing.T) {
	k, err := ParseContactKey(bytes.Repeat([]byte{7}, ContactKeySize))
	if err != nil {
		t.Fatal(err)
	}
	text := func(n int) Content { return Content{Kind: KindText, Text: string(bytes.Repeat([]byte("a"), n))} }
	for _, tt := range []struct {
		name string
		c    Content
		want int // encoded size; the unpadded size is 13 + text length
	}{
		{"empty text", text(0), 256},
		{"one byte short of a block", text(242), 256},
		{"exactly one block", text(243), 256},
		{"one byte over", text(244), 512},
		{"exactly two blocks", text(499), 512},
		{"largest text", text(MaxTextSize), maxContent},
		{"key-share", Content{Kind: KindKeyShare, Key: k}, 256},
	} {
		b, err := tt.c.marshal()
		if err != nil {
			t.Fatalf("%s: marshal = %v", tt.name, err)
		}
		if len(b) != tt.want {
			t.Errorf("len(marshal(%s)) = %d, want %d", tt.name, len(b), tt.want)
		}
	}
}

// FuzzUnmarshalContent checks that decoding decrypted content never panics,
// fails only with the content errors, and that what it accepts encodes back
// to an equivalent content.
func FuzzUnmarshalContent(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 4, 't', 'e', 'x', 't', 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := unmarshalContent(b)
		if err != nil {
			if !errors.Is(err, ErrBadContent) && !errors.Is(err, ErrUnsupportedContent) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("unmarshalContent() = %v, not a content error", err)
			}
			return
		}
		if len(b) > maxContent {
			return // Open never sees more; marshal refuses it
		}
		out, err := c.marshal()
		if err != nil {
			t.Fatalf("marshal(unmarshalContent(b)) = %v", err)
		}
		back, err := unmarshalContent(out)
		if err != nil || back.Kind != c.Kind || back.Text != c.Text || !back.Key.Equal(c.Key) {
			t.Fatalf("round trip = %v, %v; want %v", back, err, c)
		}
	})
}
