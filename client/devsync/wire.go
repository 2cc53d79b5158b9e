package devsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"unicode/utf8"
)

// Wire format, version 1 (docs/devsync.md). Every message is one frame:
//
//	type   uint8
//	length uint32, big endian: the number of body bytes that follow
//	body   [length]byte
//
// Each type has its own largest body; a larger length prefix is refused
// before anything is allocated.

const (
	version1 = 1

	headerLen = 5
	keyLen    = 32 // X25519 public value, SHA-256 commitment
	tagLen    = 16 // AES-GCM tag

	// MaxDeviceID is the longest device id, in bytes.
	MaxDeviceID = 64
	// MaxAccount is the longest account name, in bytes.
	MaxAccount = 1024
	// MaxPayload is the largest payload Accept sends, in bytes: 4 MiB less
	// the 4-byte length that pads it (see padPayload). A key store with an
	// RSA key and ten thousand contact keys is well under 1 MiB.
	MaxPayload = maxPadded - 4

	// accountPlainLen is the fixed size of an ACCOUNT plaintext: a 2-byte
	// length, the name, zeros. Every ACCOUNT frame has the same length, so
	// the wire does not tell how long the account name is.
	accountPlainLen = 2 + MaxAccount
	// minPadded and maxPadded bound a PAYLOAD plaintext, which is padded
	// to its Padmé length (see paddedLen), so that the wire tells the key
	// store's size only roughly.
	minPadded = 4 << 10
	maxPadded = 4 << 20
)

type frameType byte

const (
	typeCommit     frameType = 0x01 // offerer -> accepter, plaintext
	typeKey        frameType = 0x02 // accepter -> offerer, plaintext
	typeReveal     frameType = 0x03 // offerer -> accepter, plaintext
	typeAccount    frameType = 0x04 // both ways, handshake keys
	typePayload    frameType = 0x05 // accepter -> offerer, data keys
	typeDone       frameType = 0x06 // offerer -> accepter, data keys
	typePlainAbort frameType = 0x7e // either way, before keys exist
	typeAbort      frameType = 0x7f // either way, data keys
)

// maxBody returns the largest body a frame of type t may have, and false for
// an unknown type.
func maxBody(t frameType) (int, bool) {
	switch t {
	case typeCommit, typeKey:
		return 2 + MaxDeviceID + keyLen, true
	case typeReveal:
		return keyLen, true
	case typeAccount:
		return accountPlainLen + tagLen, true
	case typePayload:
		return maxPadded + tagLen, true
	case typeDone:
		return tagLen, true
	case typePlainAbort:
		return 1, true
	case typeAbort:
		return 1 + tagLen, true
	}
	return 0, false
}

// frame is one message as read from the wire. raw is header and body, the
// exact bytes that enter the transcript; body aliases raw.
type frame struct {
	typ  frameType
	raw  []byte
	body []byte
}

// readFrame reads one frame from r. If want is not empty, only those types
// are accepted: any other is refused from its header, before its body is
// read, so that a peer cannot make us allocate a large frame in a state
// where only small ones are expected. It never allocates more than the
// type's largest body plus the header, and it reports:
//   - io.EOF, unwrapped, when r ends before the first header byte;
//   - ErrProtocol for a truncated frame, an unknown type or one not in want;
//   - ErrTooLarge for a length prefix over the type's maximum;
//   - any other error of r, wrapped.
func readFrame(r io.Reader, want ...frameType) (frame, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return frame{}, io.EOF
		}
		return frame{}, readErr("frame header", err)
	}
	t := frameType(hdr[0])
	limit, ok := maxBody(t)
	if !ok {
		return frame{}, fmt.Errorf("devsync: unknown frame type 0x%02x: %w", byte(t), ErrProtocol)
	}
	if len(want) > 0 && !slices.Contains(want, t) {
		return frame{}, fmt.Errorf("devsync: unexpected frame type 0x%02x: %w", byte(t), ErrProtocol)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if uint64(n) > uint64(limit) {
		return frame{}, fmt.Errorf("devsync: frame type 0x%02x claims %d bytes, limit %d: %w", byte(t), n, limit, ErrTooLarge)
	}
	raw := make([]byte, headerLen+int(n))
	copy(raw, hdr[:])
	if _, err := io.ReadFull(r, raw[headerLen:]); err != nil {
		return frame{}, readErr("frame body", err)
	}
	return frame{typ: t, raw: raw, body: raw[headerLen:]}, nil
}

func readErr(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("devsync: truncated %s: %w: %w", what, ErrProtocol, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("devsync: read %s: %w", what, err)
}

// appendFrame appends a frame of type t with the given body to dst. The
// caller guarantees len(body) <= maxBody(t).
func appendFrame(dst []byte, t frameType, body []byte) []byte {
	dst = append(dst, byte(t))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

// hello is the body of COMMIT and KEY: who is speaking, in which version,
// and a 32-byte value (the commitment in COMMIT, the public value in KEY).
type hello struct {
	version  byte
	deviceID string
	value    [keyLen]byte
}

func (h hello) marshal() []byte {
	b := make([]byte, 0, 2+len(h.deviceID)+keyLen)
	b = append(b, h.version, byte(len(h.deviceID)))
	b = append(b, h.deviceID...)
	return append(b, h.value[:]...)
}

// parseHello decodes a COMMIT or KEY body. The version is returned as sent;
// the caller decides whether it speaks it, so that a peer of another version
// gets ErrVersion rather than a parse error if the layout changed.
func parseHello(body []byte) (hello, error) {
	var h hello
	if len(body) < 1 {
		return h, fmt.Errorf("devsync: empty hello: %w", ErrProtocol)
	}
	h.version = body[0]
	if h.version != version1 {
		return h, nil
	}
	if len(body) < 2 {
		return h, fmt.Errorf("devsync: short hello: %w", ErrProtocol)
	}
	n := int(body[1])
	if n == 0 || n > MaxDeviceID {
		return h, fmt.Errorf("devsync: device id of %d bytes: %w", n, ErrProtocol)
	}
	if len(body) != 2+n+keyLen {
		return h, fmt.Errorf("devsync: hello of %d bytes, want %d: %w", len(body), 2+n+keyLen, ErrProtocol)
	}
	id := body[2 : 2+n]
	if !utf8.Valid(id) {
		return h, fmt.Errorf("devsync: device id is not UTF-8: %w", ErrProtocol)
	}
	h.deviceID = string(id)
	copy(h.value[:], body[2+n:])
	return h, nil
}

func parseReveal(body []byte) ([keyLen]byte, error) {
	var pk [keyLen]byte
	if len(body) != keyLen {
		return pk, fmt.Errorf("devsync: reveal of %d bytes, want %d: %w", len(body), keyLen, ErrProtocol)
	}
	copy(pk[:], body)
	return pk, nil
}

// padAccount encodes an ACCOUNT plaintext. The caller checked the name's
// length.
func padAccount(name string) []byte {
	b := make([]byte, accountPlainLen)
	binary.BigEndian.PutUint16(b, uint16(len(name)))
	copy(b[2:], name)
	return b
}

// parseAccount decodes an ACCOUNT plaintext: exactly accountPlainLen bytes,
// a length of 1..MaxAccount, zeros after the name.
func parseAccount(plain []byte) (string, error) {
	if len(plain) != accountPlainLen {
		return "", fmt.Errorf("devsync: account plaintext of %d bytes, want %d: %w", len(plain), accountPlainLen, ErrProtocol)
	}
	n := int(binary.BigEndian.Uint16(plain))
	if n == 0 || n > MaxAccount {
		return "", fmt.Errorf("devsync: account name of %d bytes: %w", n, ErrProtocol)
	}
	if !allZero(plain[2+n:]) {
		return "", fmt.Errorf("devsync: account padding is not zero: %w", ErrProtocol)
	}
	return string(plain[2 : 2+n]), nil
}

// paddedLen is the PAYLOAD plaintext length for an n-byte payload: the
// Padmé length of 4+n (the length field and the payload), at least
// minPadded. Padmé (Nikitin et al., "Reducing Metadata Leakage from
// Encrypted Files and Communication with PURBs", PETS 2019) rounds a length
// L with floor(log2 L) = E up to a multiple of 2^(E - floor(log2 E) - 1):
// at most 12% overhead, and the padded length reveals O(log log L) bits.
// For n <= MaxPayload the result is at most maxPadded.
func paddedLen(n int) int {
	l := 4 + n
	if l <= minPadded {
		return minPadded
	}
	e := bits.Len(uint(l)) - 1
	lastBits := e - bits.Len(uint(e))
	mask := 1<<lastBits - 1
	return (l + mask) &^ mask
}

// putPayload writes a PAYLOAD plaintext into b, which is paddedLen(n) bytes
// and zero.
func putPayload(b, payload []byte) {
	binary.BigEndian.PutUint32(b, uint32(len(payload)))
	copy(b[4:], payload)
}

// padPayload encodes a PAYLOAD plaintext. The caller checked n <= MaxPayload.
func padPayload(payload []byte) []byte {
	b := make([]byte, paddedLen(len(payload)))
	putPayload(b, payload)
	return b
}

// parsePayload decodes a PAYLOAD plaintext; the payload aliases plain but
// has no capacity beyond its length.
func parsePayload(plain []byte) ([]byte, error) {
	if len(plain) < 4 {
		return nil, fmt.Errorf("devsync: payload plaintext of %d bytes: %w", len(plain), ErrProtocol)
	}
	n := binary.BigEndian.Uint32(plain)
	if uint64(n) > uint64(len(plain)-4) || len(plain) != paddedLen(int(n)) {
		return nil, fmt.Errorf("devsync: payload length %d in %d padded bytes: %w", n, len(plain), ErrProtocol)
	}
	if !allZero(plain[4+n:]) {
		return nil, fmt.Errorf("devsync: payload padding is not zero: %w", ErrProtocol)
	}
	return plain[4 : 4+n : 4+n], nil
}

func allZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}

// parseAbort decodes an ABORT plaintext (or a plaintext ABORT body).
func parseAbort(plain []byte) (byte, error) {
	if len(plain) != 1 {
		return 0, fmt.Errorf("devsync: abort of %d bytes: %w", len(plain), ErrProtocol)
	}
	return plain[0], nil
}
