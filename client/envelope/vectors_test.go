package envelope_test

import (
	"bufio"
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// expectations maps the expect: values of docs/envelope.md, "Test vectors",
// to the errors of this package.
var expectations = map[string]error{
	"success":             nil,
	"invalid":             envelope.ErrInvalid,
	"unsupported version": envelope.ErrUnsupportedVersion,
	"key size":            envelope.ErrKeySize,
	"bad signature":       envelope.ErrBadSignature,
	"not for me":          envelope.ErrNotForMe,
	"no contact key":      envelope.ErrNoContactKey,
	"tampered":            envelope.ErrTampered,
	"bad content":         envelope.ErrBadContent,
	"unsupported content": envelope.ErrUnsupportedContent,
}

// A testVector is a parsed file of testdata/vectors.
type testVector struct {
	expect    string
	identity  envelope.Identity
	senderKey *rsa.PublicKey
	contacts  contactKeys
	content   *envelope.Content
	padding   int // -1 if not given
	// checkpoint: the checkpoint a version 1 envelope that opens carries
	checkpoint []byte
	body       []byte
}

// contactKeys is the simplest ContactKeys: a list.
type contactKeys []struct {
	contact string
	key     envelope.ContactKey
}

func (ks contactKeys) ContactKey(contact string, id []byte) (envelope.ContactKey, bool) {
	for _, k := range ks {
		if k.contact == contact && bytes.Equal(k.key.ID(), id) {
			return k.key, true
		}
	}
	return envelope.ContactKey{}, false
}

func readPEM(path string) (any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, rest := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%s: want exactly one PRIVATE KEY block", path)
	}
	return x509.ParsePKCS8PrivateKey(b.Bytes)
}

// parseVector parses a vector file; any header it does not know is an error.
func parseVector(data []byte) (*testVector, error) {
	head, body, ok := bytes.Cut(data, []byte("\n\n"))
	if !ok {
		return nil, errors.New("no blank line after the header")
	}
	body, ok = bytes.CutSuffix(body, []byte("\n"))
	if !ok {
		return nil, errors.New("no final newline")
	}
	v := &testVector{body: body, padding: -1}
	once := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(head))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			return nil, fmt.Errorf("header line %q: no \": \"", sc.Text())
		}
		switch name {
		case "expect", "identity", "sender key", "content", "padding", "checkpoint":
			if once[name] {
				return nil, fmt.Errorf("header %q repeated", name)
			}
			once[name] = true
		}
		switch name {
		case "expect":
			if _, ok := expectations[value]; !ok {
				return nil, fmt.Errorf("unknown expect: %q", value)
			}
			v.expect = value
		case "comment":
		case "identity":
			jid, file, ok := strings.Cut(value, " ")
			if !ok {
				return nil, fmt.Errorf("identity: want JID and key file")
			}
			k, err := readPEM(filepath.Join("testdata", "keys", file))
			if err != nil {
				return nil, err
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("identity: %s is not an RSA key", file)
			}
			if v.identity, err = envelope.NewIdentity(jid, rk); err != nil {
				return nil, err
			}
		case "sender key":
			k, err := readPEM(filepath.Join("testdata", "keys", value))
			if err != nil {
				return nil, err
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("sender key: %s is not an RSA key", value)
			}
			v.senderKey = &rk.PublicKey
		case "contact key":
			contact, b64, ok := strings.Cut(value, " ")
			if !ok {
				return nil, fmt.Errorf("contact key: want JID and key")
			}
			b, err := base64.StdEncoding.Strict().DecodeString(b64)
			if err != nil {
				return nil, fmt.Errorf("contact key: %v", err)
			}
			k, err := envelope.ParseContactKey(b)
			if err != nil {
				return nil, err
			}
			v.contacts = append(v.contacts, struct {
				contact string
				key     envelope.ContactKey
			}{contact, k})
		case "content":
			kind, b64, ok := strings.Cut(value, " ")
			if !ok {
				return nil, fmt.Errorf("content: want kind and body")
			}
			b, err := base64.StdEncoding.Strict().DecodeString(b64)
			if err != nil {
				return nil, fmt.Errorf("content: %v", err)
			}
			c := envelope.Content{Kind: envelope.ContentKind(kind)}
			switch c.Kind {
			case envelope.KindText:
				c.Text = string(b)
			case envelope.KindKeyShare:
				if c.Key, err = envelope.ParseContactKey(b); err != nil {
					return nil, err
				}
			default:
				return nil, fmt.Errorf("content: unknown kind %q", kind)
			}
			v.content = &c
		case "padding":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || strconv.Itoa(n) != value {
				return nil, fmt.Errorf("padding: %q is not a byte count", value)
			}
			v.padding = n
		case "checkpoint":
			b, err := base64.StdEncoding.Strict().DecodeString(value)
			if err != nil || len(b) == 0 {
				return nil, fmt.Errorf("checkpoint: %q is not base64 of a note", value)
			}
			v.checkpoint = b
		default:
			return nil, fmt.Errorf("unknown header %q", name)
		}
	}
	for _, h := range []string{"expect", "identity", "sender key"} {
		if !once[h] {
			return nil, fmt.Errorf("missing header %q", h)
		}
	}
	if (v.expect == "success") != (v.content != nil) {
		return nil, errors.New("content: is required with expect: success, and only then")
	}
	if v.padding >= 0 && v.expect != "success" {
		return nil, errors.New("padding: only with expect: success")
	}
	if v.checkpoint != nil && v.expect != "success" {
		return nil, errors.New("checkpoint: only with expect: success")
	}
	return v, nil
}

// open is what another implementation does with a vector: unmarshal the
// envelope and open it. It also returns the checkpoint the envelope
// carries (version 1).
func (v *testVector) open() (envelope.Content, []byte, error) {
	var e envelopexml.Envelope
	if err := xml.Unmarshal(v.body, &e); err != nil {
		return envelope.Content{}, nil, err
	}
	var keys envelope.ContactKeys
	if v.contacts != nil {
		keys = v.contacts
	}
	c, err := envelope.Open(&e, v.identity, v.senderKey, keys)
	return c, e.Checkpoint, err
}

func TestVectors(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "vectors", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no test vectors")
	}
	seen := map[string]bool{}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			v, err := parseVector(data)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			seen[v.expect] = true
			c, cp, err := v.open()
			want := expectations[v.expect]
			if want == nil {
				if err != nil {
					t.Fatalf("Open() = %v, want success", err)
				}
				if !bytes.Equal(cp, v.checkpoint) {
					t.Fatalf("checkpoint = %q, want %q", cp, v.checkpoint)
				}
				if !sameContent(c, *v.content) {
					t.Fatalf("Open() = %v, want %v", c, *v.content)
				}
				if v.padding >= 0 {
					if got := v.contentPadding(t); got != v.padding {
						t.Fatalf("padding = %d bytes, want %d", got, v.padding)
					}
				}
				return
			}
			if !errors.Is(err, want) {
				t.Fatalf("Open() = %v, want %v", err, want)
			}
			// Each failure is exactly one of the sentinels.
			for exp, other := range expectations {
				if other != nil && other != want && errors.Is(err, other) {
					t.Errorf("Open() = %v, which is also %q", err, exp)
				}
			}
		})
	}
	for exp := range expectations {
		if !seen[exp] {
			t.Errorf("no vector expects %q", exp)
		}
	}
}

// contentPadding returns the number of padding bytes in the content of a
// vector that opened: the payload less its tag is the content, which is the
// version byte, str(kind) and str(body), then the padding.
func (v *testVector) contentPadding(t *testing.T) int {
	var e envelopexml.Envelope
	if err := xml.Unmarshal(v.body, &e); err != nil {
		t.Fatal(err)
	}
	body := len(v.content.Text)
	if v.content.Kind == envelope.KindKeyShare {
		body = envelope.ContactKeySize
	}
	return len(e.Payload) - envelopexml.TagSize - (1 + 4 + len(v.content.Kind) + 4 + body)
}

func sameContent(a, b envelope.Content) bool {
	return a.Kind == b.Kind && a.Text == b.Text && a.Key.Equal(b.Key)
}

// TestVectorParser checks that the vector parser refuses what the spec says
// it must, above all an unknown header line.
func TestVectorParser(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("testdata", "vectors", "standard_text"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseVector(good); err != nil {
		t.Fatalf("parseVector(standard_text) = %v", err)
	}
	for _, tt := range []struct{ name, old, new string }{
		{"unknown header", "sender key:", "x-note: hello\nsender key:"},
		{"misspelt header", "sender key:", "sender-key:"},
		{"unknown expect", "expect: success", "expect: succeeded"},
		{"repeated expect", "expect: success", "expect: success\nexpect: success"},
		{"missing identity", "identity: bob@example.org bob.pem\n", ""},
		{"missing content", "content: text SGVsbG8sIEJvYiEg8J+Riw==\n", ""},
		{"bad padding", "sender key:", "padding: -1\nsender key:"},
		{"padding with leading zero", "sender key:", "padding: 00\nsender key:"},
		{"repeated padding", "sender key:", "padding: 0\npadding: 0\nsender key:"},
		{"no blank line", "\n\n<envelope", "\n<envelope"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := strings.Replace(string(good), tt.old, tt.new, 1)
			if bad == string(good) {
				t.Fatalf("%q not found", tt.old)
			}
			if _, err := parseVector([]byte(bad)); err == nil {
				t.Fatalf("parseVector(%s) = nil, want an error", tt.name)
			}
		})
	}
}
