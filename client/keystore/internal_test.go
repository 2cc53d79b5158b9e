package keystore

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/clinkme/clinkd/client/envelope"
)

var update = flag.Bool("update", false, "rewrite the fuzz seed corpora")

func testIdentity(t testing.TB) envelope.Identity {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "identity.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	id, err := envelope.NewIdentity("alice@example.org", k.(*rsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

var fast = Params{Time: 1, MemoryKiB: 64, Threads: 1}

// TestNoTornReads rewrites the file many times while a reader reads it in a
// loop: every read must be a complete file that decrypts.
func TestNoTornReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	s, err := create(path, []byte("pass"), testIdentity(t), fast)
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	done := make(chan error)
	var reads atomic.Int64
	go func() {
		for !stop.Load() {
			data, err := os.ReadFile(path)
			if err != nil {
				done <- err
				return
			}
			h, sealed, err := parseHeader(data)
			if err != nil {
				done <- fmt.Errorf("read %d: %v", reads.Load(), err)
				return
			}
			plain, err := newGCM(s.fileKey).Open(nil, h.nonce[:], sealed, data[:headerSize])
			if err != nil {
				done <- fmt.Errorf("read %d (%d bytes): does not decrypt", reads.Load(), len(data))
				return
			}
			if _, err := parseContents(plain, h.version); err != nil {
				done <- err
				return
			}
			reads.Add(1)
		}
		done <- nil
	}()
	for range 25 {
		if err := s.AddContactKey("bob@example.org", envelope.NewContactKey()); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d complete reads during 25 rewrites", reads.Load())
}

func TestHeaderLayout(t *testing.T) {
	h := header{version: 1, Params: Params{Time: 3, MemoryKiB: 65536, Threads: 4}}
	for i := range h.salt {
		h.salt[i] = byte(0xa0 + i)
	}
	for i := range h.nonce {
		h.nonce[i] = byte(0xb0 + i)
	}
	got := h.marshal()
	want := []byte("clinkme keystore v1\n" +
		"\x00\x00\x00\x03" + "\x00\x01\x00\x00" + "\x04" +
		"\xa0\xa1\xa2\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xab\xac\xad\xae\xaf" +
		"\xb0\xb1\xb2\xb3\xb4\xb5\xb6\xb7\xb8\xb9\xba\xbb")
	if !bytes.Equal(got, want) || len(got) != headerSize {
		t.Fatalf("marshal() = %q, want %q (%d bytes)", got, want, headerSize)
	}
	back, _, err := parseHeader(append(got, make([]byte, tagSize)...))
	if err != nil || *back != h {
		t.Fatalf("parseHeader(marshal()) = %+v, %v", back, err)
	}
}

// FuzzParseHeader checks that the header parser never panics, accepts only
// parameters in bounds, and that what it accepts encodes back to the same
// bytes.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte(magicV1))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, rest, err := parseHeader(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrBadParams) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("parseHeader() = %v, not a key store error", err)
			}
			return
		}
		if h.check() != nil {
			t.Fatalf("parseHeader() accepted %+v", h.Params)
		}
		if !bytes.Equal(h.marshal(), data[:headerSize]) || !bytes.Equal(rest, data[headerSize:]) {
			t.Fatalf("parseHeader() does not round-trip")
		}
	})
}

// FuzzParseContents checks that the decoder of decrypted contents (of
// version 1) never panics and that what it accepts encodes back to the
// same bytes. It fuzzes
// our framing and the size checks of the identity key, not crypto/x509's
// parsing of that key: a full RSA key check costs milliseconds, and far more
// under coverage instrumentation, which starves the fuzzer.
func FuzzParseContents(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeContents(data, 1)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeContents() = %v, not ErrCorrupt", err)
			}
			return
		}
		checkKeySizes(r.der)
		c := contents{contacts: r.contacts, pins: r.pins}
		out := c.appendRest(appendStr(appendStr(nil, r.jid), r.der), 1)
		if !bytes.Equal(out, data) {
			t.Fatalf("decodeContents() does not round-trip")
		}
	})
}

// FuzzParseContents2 is FuzzParseContents for version 2's contents
// (trust records, alarms, the own history reviewed).
func FuzzParseContents2(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeContents(data, 2)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeContents() = %v, not ErrCorrupt", err)
			}
			return
		}
		checkKeySizes(r.der)
		c := contents{contacts: r.contacts, pins: r.pins}
		out := c.appendRest(appendStr(appendStr(nil, r.jid), r.der), 2)
		if !bytes.Equal(out, data) {
			t.Fatalf("decodeContents() does not round-trip")
		}
	})
}

// TestParseContentsSeeds parses the seeds completely, identity key included.
func TestParseContentsSeeds(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzParseContents", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no seeds: %v", err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, lit, _ := bytes.Cut(raw, []byte("\n[]byte("))
		s, err := strconv.Unquote(string(bytes.TrimSuffix(lit, []byte(")\n"))))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		c, err := parseContents([]byte(s), 1)
		if err != nil {
			t.Fatalf("parseContents(%s) = %v", filepath.Base(f), err)
		}
		out, err := c.marshalVersion(1)
		if err != nil || !bytes.Equal(out, []byte(s)) {
			t.Fatalf("parseContents(%s) does not round-trip: %v", filepath.Base(f), err)
		}
	}
}

// TestWriteSeeds writes the seed corpora of the fuzzers from real files, with
// -update.
func TestWriteSeeds(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite the seed corpora")
	}
	path := filepath.Join(t.TempDir(), "keys")
	s, err := create(path, []byte("pass"), testIdentity(t), fast)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	emptyContents, err := s.contents.marshalVersion(1)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := envelope.ParseContactKey(bytes.Repeat([]byte{7}, envelope.ContactKeySize))
	if err := s.AddContactKey("bob@example.org", k); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSharedKey("example.net", SharedKey{Key: envelope.NewContactKey(), PeerKey: [32]byte{1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCheckpoint("clink.example.org/keydir", []byte("clink.example.org/keydir\n3\nAAAA\n\n— sig\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyPin("bob@example.org", KeyPin{Fingerprint: [32]byte{4}, Version: 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyPin("alice@example.org", KeyPin{Fingerprint: [32]byte{5}, Ended: true}); err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fullContents, err := s.contents.marshalVersion(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetTrust("bob@example.org", Trust{State: TrustChanged, Key: [32]byte{4}, New: [32]byte{6}, WasVerified: true, OldVersion: 1, NewVersion: 3, NewIndex: 9, NewTime: 1764099840, EndKind: "reset", EndIndex: 8}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTrust("alice@example.org", Trust{State: TrustVerified, Key: [32]byte{5}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddAlarm(Alarm{Kind: AlarmFork, Time: 1764099840, JID: "bob@example.org", Text: "fork", Evidence: [2][]byte{[]byte("a\n1\nAAAA\n\n— sig\n"), []byte("a\n1\nBBBB\n\n— sig\n")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOwnSeen(3); err != nil {
		t.Fatal(err)
	}
	trustContents, err := s.contents.marshal()
	if err != nil {
		t.Fatal(err)
	}
	def := header{version: currentVersion, Params: DesktopParams()}
	seeds := map[string]map[string][]byte{
		"FuzzParseHeader": {
			"empty_store":    empty,
			"two_contacts":   full,
			"default_params": append(def.marshal(), make([]byte, tagSize)...),
			"version_0":      []byte("clinkme keystore v0\n"),
			"version_2":      []byte("clinkme keystore v2\n"),
			"version_3":      []byte("clinkme keystore v3\n"),
		},
		"FuzzParseContents": {
			"empty_store":         emptyContents,
			"two_contacts_pinned": fullContents,
		},
		"FuzzParseContents2": {
			"trust_alarms_own": trustContents,
		},
	}
	for fuzz, files := range seeds {
		dir := filepath.Join("testdata", "fuzz", fuzz)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(seed), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
