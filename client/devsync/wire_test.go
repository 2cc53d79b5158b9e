package devsync

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadFrame(t *testing.T) {
	commit := appendFrame(nil, typeCommit, hello{version1, "dev-a", [32]byte{1}}.marshal())
	tests := []struct {
		name    string
		in      []byte
		wantErr error // nil: success
	}{
		{"commit", commit, nil},
		{"empty input", nil, io.EOF},
		{"short header", []byte{0x01, 0, 0}, ErrProtocol},
		{"unknown type", []byte{0x47, 0, 0, 0, 0}, ErrProtocol},
		{"http request", []byte("GET / HTTP/1.1\r\n\r\n"), ErrProtocol},
		{"huge length", []byte{byte(typeKey), 0xff, 0xff, 0xff, 0xff}, ErrTooLarge},
		{"reveal one over", append([]byte{byte(typeReveal), 0, 0, 0, 33}, make([]byte, 33)...), ErrTooLarge},
		{"payload over max", []byte{byte(typePayload), 0x00, 0x40, 0x00, 0x11}, ErrTooLarge},
		{"truncated body", commit[:len(commit)-1], ErrProtocol},
		{"empty abort body", []byte{byte(typePlainAbort), 0, 0, 0, 0}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := readFrame(bytes.NewReader(tt.in))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("readFrame(%x) = %v, want success", tt.in, err)
				}
				if !bytes.Equal(f.raw, tt.in) {
					t.Fatalf("readFrame(%x).raw = %x, want input", tt.in, f.raw)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("readFrame(%x) = %v, want %v", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestParseHello(t *testing.T) {
	good := hello{version1, "phone-1", [32]byte{9, 9}}
	tests := []struct {
		name    string
		body    []byte
		want    hello
		wantErr bool
	}{
		{"good", good.marshal(), good, false},
		{"future version is not parsed further", []byte{2, 0xff}, hello{version: 2}, false},
		{"empty", nil, hello{}, true},
		{"no id length", []byte{1}, hello{version: 1}, true},
		{"zero-length id", append([]byte{1, 0}, make([]byte, 32)...), hello{version: 1}, true},
		{"id too long", append([]byte{1, 65}, make([]byte, 65+32)...), hello{version: 1}, true},
		{"short value", good.marshal()[:len(good.marshal())-1], hello{version: 1}, true},
		{"trailing byte", append(good.marshal(), 0), hello{version: 1}, true},
		{"id not utf-8", append([]byte{1, 1, 0xff}, make([]byte, 32)...), hello{version: 1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseHello(tt.body)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseHello(%x) error = %v, want error %v", tt.body, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Fatalf("parseHello(%x) = %+v, want %+v", tt.body, got, tt.want)
			}
		})
	}
}

func TestCode(t *testing.T) {
	// Fixed vector, computed independently (Python hashlib); docs/devsync.md
	// quotes the same input and output.
	th1 := bytes.Repeat([]byte{0xab}, 32)
	if got, want := codeFor(th1), codeFor(th1); got != want || len(got) != CodeDigits {
		t.Fatalf("codeFor = %q, %q; want one %d-digit value", got, want, CodeDigits)
	}
	if got, want := codeFor(th1), "015812"; got != want {
		t.Errorf("codeFor(ab*32) = %q, want %q", got, want)
	}
	seen := map[string]bool{}
	for i := range 256 {
		th := []byte{byte(i)}
		c := codeFor(th)
		if len(c) != CodeDigits || strings.Trim(c, "0123456789") != "" {
			t.Fatalf("codeFor(%x) = %q, want %d digits", th, c, CodeDigits)
		}
		seen[c] = true
	}
	if len(seen) < 250 {
		t.Errorf("256 transcripts gave only %d distinct codes", len(seen))
	}
}

func TestCodesEqual(t *testing.T) {
	tests := []struct {
		typed string
		want  bool
	}{
		{"012345", true},
		{"012 345", true},
		{"012-345", true},
		{" 0 1 2 3 4 5 ", true},
		{"012346", false},
		{"12345", false},
		{"0123456", false},
		{"01234a", false},
		{"０12345", false}, // fullwidth digit
		{"", false},
	}
	for _, tt := range tests {
		if got := codesEqual(tt.typed, "012345"); got != tt.want {
			t.Errorf("codesEqual(%q, 012345) = %v, want %v", tt.typed, got, tt.want)
		}
	}
}

func TestCommitmentVector(t *testing.T) {
	// Pins the commitment layout of docs/devsync.md: a change here is a
	// wire change and needs a new version.
	c := commitment("dev-a", bytes.Repeat([]byte{0x01}, 32))
	got := hex.EncodeToString(c[:])
	want := "b7feff70077a075abe53ee9a17e834b66c049fd80248d3d788b5159da087c1e0"
	if got != want {
		t.Errorf("commitment(dev-a, 01*32) = %s, want %s", got, want)
	}
}

func TestAccountPadding(t *testing.T) {
	for _, name := range []string{"a", "alice@clink.example", strings.Repeat("x", MaxAccount)} {
		b := padAccount(name)
		if len(b) != accountPlainLen {
			t.Fatalf("len(padAccount(%d bytes)) = %d, want %d", len(name), len(b), accountPlainLen)
		}
		if got, err := parseAccount(b); err != nil || got != name {
			t.Fatalf("parseAccount(padAccount(%q)) = %q, %v", name, got, err)
		}
	}
	bad := map[string][]byte{
		"short":          padAccount("a")[:accountPlainLen-1],
		"zero length":    make([]byte, accountPlainLen),
		"length too big": append([]byte{0x04, 0x01}, make([]byte, MaxAccount)...),
		"dirty padding":  func() []byte { b := padAccount("a"); b[100] = 1; return b }(),
	}
	for name, b := range bad {
		if _, err := parseAccount(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("parseAccount(%s) = %v, want ErrProtocol", name, err)
		}
	}
}

func TestPayloadPadding(t *testing.T) {
	tests := []struct{ n, padded int }{
		{0, 4096}, {1, 4096}, {4092, 4096}, {4093, 4352}, {64 << 10, 67584}, {1 << 20, 1081344}, {MaxPayload, 4 << 20},
	}
	for _, tt := range tests {
		p := bytes.Repeat([]byte{0xa5}, tt.n)
		b := padPayload(p)
		if len(b) != tt.padded {
			t.Errorf("len(padPayload(%d bytes)) = %d, want %d", tt.n, len(b), tt.padded)
		}
		if got, err := parsePayload(b); err != nil || !bytes.Equal(got, p) {
			t.Errorf("parsePayload(padPayload(%d bytes)) = %d bytes, %v", tt.n, len(got), err)
		}
	}
	bad := map[string][]byte{
		"empty":             nil,
		"length past end":   append([]byte{0, 0, 0x10, 0}, make([]byte, 4092)...),
		"not a padded size": append([]byte{0, 0, 0, 1}, make([]byte, 5000)...),
		"oversized bucket":  append([]byte{0, 0, 0, 1}, make([]byte, 8188)...),
		"dirty padding":     func() []byte { b := padPayload([]byte("x")); b[4000] = 1; return b }(),
	}
	for name, b := range bad {
		if _, err := parsePayload(b); !errors.Is(err, ErrProtocol) {
			t.Errorf("parsePayload(%s) = %v, want ErrProtocol", name, err)
		}
	}
}

// TestKeyScheduleVector pins the key schedule of docs/devsync.md ("Test
// vectors"); the expected values were computed independently with Python's
// hmac module.
func TestKeyScheduleVector(t *testing.T) {
	dh := bytes.Repeat([]byte{0x11}, 32)
	th1 := bytes.Repeat([]byte{0xab}, 32)
	th2 := bytes.Repeat([]byte{0xcd}, 32)
	hs, err := handshakeSecret(dh, th1)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dataSecret(hs, th2)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(hs), "6d2b333d155a1647e9fd80add75c49acc573452cd625b590184ccaf52f418dbc"; got != want {
		t.Errorf("handshakeSecret = %s, want %s", got, want)
	}
	tests := []struct {
		prk   []byte
		label string
		want  string
	}{
		{hs, labelHsA2B, "2424289d10095697b7d968b6c54c59ce07bfea88a99117793b880c6979a1f2e2"},
		{hs, labelHsB2A, "667889a71e8daa93544e9816c658a617070b3936356bdbbe151697ee036058c3"},
		{ds, labelDataA2B, "4d952021acbb94d182a92e3f4b6b1d5cdfb29a7a49a9d05f13db6b9bd5062058"},
		{ds, labelDataB2A, "3f8a44c74f6b5cc58c5cdb02b919ae0ad073d7f7af2f42fc16f0315601cd8cdc"},
	}
	for _, tt := range tests {
		k, err := expandKey(tt.prk, tt.label)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(k); got != tt.want {
			t.Errorf("expandKey(%q) = %s, want %s", tt.label, got, tt.want)
		}
	}
}

func TestReadFrameUnexpectedTypeRefusedFromHeader(t *testing.T) {
	// A PAYLOAD header claiming 4 MiB while a KEY is expected: refused from
	// the header alone, before the body is read or allocated.
	hdr := []byte{byte(typePayload), 0x00, 0x40, 0x00, 0x10}
	r := bytes.NewReader(append(hdr, make([]byte, 100)...))
	_, err := readFrame(r, typeKey, typePlainAbort)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("readFrame(PAYLOAD header, want KEY) = %v, want ErrProtocol", err)
	}
	if read := int(r.Size()) - r.Len(); read != headerLen {
		t.Errorf("readFrame consumed %d bytes, want only the %d-byte header", read, headerLen)
	}
}

func TestPaddedLen(t *testing.T) {
	// Every size up to the maximum: never smaller than needed, never more
	// than 12% (or the 4 KiB floor) larger, never above the frame limit,
	// and idempotent (a padded size pads to itself).
	for n := 0; n <= MaxPayload; n += 1 + n/64 {
		p := paddedLen(n)
		if p < 4+n || p > maxPadded || (p > minPadded && float64(p) > 1.12*float64(4+n)) {
			t.Fatalf("paddedLen(%d) = %d", n, p)
		}
		if p > minPadded && paddedLen(p-4) != p {
			t.Fatalf("paddedLen(paddedLen(%d)-4) = %d, want %d", n, paddedLen(p-4), p)
		}
	}
	if got := paddedLen(MaxPayload); got != maxPadded {
		t.Errorf("paddedLen(MaxPayload) = %d, want %d", got, maxPadded)
	}
}
