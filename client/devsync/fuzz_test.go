package devsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The seed corpus lives in testdata/fuzz/<FuzzName>/. It is written by
// TestWriteFuzzSeeds (DEVSYNC_WRITE_SEEDS=1 go test -run TestWriteFuzzSeeds)
// from the frames below, so it follows the wire format when that changes.

func seedFrames() map[string][]byte {
	pk := bytes.Repeat([]byte{0x42}, 32)
	commit := appendFrame(nil, typeCommit, hello{version1, "dev-a", commitment("dev-a", pk)}.marshal())
	key := appendFrame(nil, typeKey, hello{version1, "dev-b", [32]byte{0x09}}.marshal())
	reveal := appendFrame(nil, typeReveal, pk)
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	return map[string][]byte{
		"commit":          commit,
		"key":             key,
		"reveal":          reveal,
		"commit-reveal":   cat(commit, reveal),
		"key-account":     cat(key, appendFrame(nil, typeAccount, bytes.Repeat([]byte{1}, accountPlainLen+tagLen))),
		"account":         appendFrame(nil, typeAccount, padAccount("alice@clink.example")),
		"payload":         appendFrame(nil, typePayload, padPayload([]byte("keystore v1"))),
		"done":            appendFrame(nil, typeDone, bytes.Repeat([]byte{3}, 16)),
		"abort":           appendFrame(nil, typeAbort, bytes.Repeat([]byte{4}, 17)),
		"plain-abort":     appendFrame(nil, typePlainAbort, []byte{reasonVersion}),
		"future-version":  appendFrame(nil, typeKey, []byte{2, 0xff}),
		"huge-length":     {byte(typePayload), 0xff, 0xff, 0xff, 0xff},
		"truncated":       commit[:len(commit)-3],
		"garbage":         []byte("GET / HTTP/1.1\r\n\r\n"),
		"empty":           {},
		"low-order-point": appendFrame(nil, typeKey, hello{version1, "dev-b", [32]byte{}}.marshal()),
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, b := range seedFrames() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := readFrame(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrTooLarge) && err != io.EOF {
				t.Fatalf("readFrame(%x) = %v, want ErrProtocol, ErrTooLarge or io.EOF", data, err)
			}
			return
		}
		limit, ok := maxBody(fr.typ)
		if !ok || len(fr.body) > limit {
			t.Fatalf("readFrame accepted type 0x%02x with %d bytes", byte(fr.typ), len(fr.body))
		}
		if !bytes.HasPrefix(data, fr.raw) {
			t.Fatalf("raw %x is not a prefix of the input", fr.raw)
		}
		if again := appendFrame(nil, fr.typ, fr.body); !bytes.Equal(again, fr.raw) {
			t.Fatalf("re-encoded %x, read %x", again, fr.raw)
		}
	})
}

// FuzzParseMessage runs the body parser of each message type.
func FuzzParseMessage(f *testing.F) {
	for _, b := range seedFrames() {
		if len(b) >= headerLen {
			f.Add(b[0], b[headerLen:])
		}
	}
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		switch frameType(typ) {
		case typeCommit, typeKey:
			h, err := parseHello(body)
			if err != nil || h.version != version1 {
				return
			}
			if len(h.deviceID) == 0 || len(h.deviceID) > MaxDeviceID {
				t.Fatalf("parseHello accepted a %d-byte device id", len(h.deviceID))
			}
			if again := h.marshal(); !bytes.Equal(again, body) {
				t.Fatalf("parseHello(%x) re-encodes to %x", body, again)
			}
		case typeReveal:
			if pk, err := parseReveal(body); err == nil && !bytes.Equal(pk[:], body) {
				t.Fatalf("parseReveal(%x) = %x", body, pk)
			}
		case typeAccount:
			if a, err := parseAccount(body); err == nil {
				if a == "" || len(a) > MaxAccount || !bytes.Equal(padAccount(a), body) {
					t.Fatalf("parseAccount(%x) = %q, which does not re-encode", body, a)
				}
			}
		case typePayload:
			if p, err := parsePayload(body); err == nil && !bytes.Equal(padPayload(p), body) {
				t.Fatalf("parsePayload(%d bytes) = %d bytes, which do not re-encode", len(body), len(p))
			}
		case typePlainAbort, typeAbort:
			if r, err := parseAbort(body); err == nil {
				_ = errForReason(r, typ == byte(typeAbort))
			}
		default:
			// The code as typed by a user is outside input too.
			if norm, ok := normalizeCode(string(body)); ok && len(norm) != CodeDigits {
				t.Fatalf("normalizeCode(%q) = %q", body, norm)
			}
		}
	})
}

// scriptConn is a net.Conn whose peer has already said everything: reads
// come from a fixed buffer and then io.EOF, writes are counted and dropped.
// No read can block, so a fuzz input cannot hang the session.
type scriptConn struct {
	r       *bytes.Reader
	written int
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { c.written += len(p); return len(p), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzOfferPeer feeds arbitrary bytes to the offering side as the accepting
// device's messages: every input must end in an error (a forger cannot
// produce the AEAD frames), without a panic.
func FuzzOfferPeer(f *testing.F) {
	for _, b := range seedFrames() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSession(context.Background(), &scriptConn{r: bytes.NewReader(data)}, time.Second, orDiscard(nil))
		cfg := offerCfg("dev-a", "alice@clink.example")
		got, err := offer(s, &cfg, time.Second)
		if err == nil {
			t.Fatalf("offer accepted forged input %x: %q", data, got.Payload)
		}
		_ = s.abort(err)
	})
}

// FuzzAcceptPeer does the same for the accepting side.
func FuzzAcceptPeer(f *testing.F) {
	for _, b := range seedFrames() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newSession(context.Background(), &scriptConn{r: bytes.NewReader(data)}, time.Second, orDiscard(nil))
		cfg := acceptCfg("dev-b", "alice@clink.example", []byte("secret"))
		code := func(context.Context) (string, error) { return "000000", nil }
		if err := accept(s, code, &cfg, time.Second); err == nil {
			t.Fatalf("accept succeeded against forged input %x", data)
		}
	})
}

func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("DEVSYNC_WRITE_SEEDS") == "" {
		t.Skip("set DEVSYNC_WRITE_SEEDS=1 to rewrite testdata/fuzz")
	}
	write := func(target, name, content string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte("go test fuzz v1\n"+content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range seedFrames() {
		for _, target := range []string{"FuzzReadFrame", "FuzzOfferPeer", "FuzzAcceptPeer"} {
			write(target, name, fmt.Sprintf("[]byte(%q)\n", b))
		}
		if len(b) >= headerLen {
			write("FuzzParseMessage", name, fmt.Sprintf("byte(%q)\n[]byte(%q)\n", b[0], b[headerLen:]))
		}
	}
	write("FuzzParseMessage", "typed-code", fmt.Sprintf("byte(%q)\n[]byte(%q)\n", byte(0), "12 34-56"))
}
