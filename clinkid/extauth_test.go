package clinkid_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/clinkme/clinkd/clinkid"
)

// fakeChecker stands in for the store in codec tests only: the real store
// is behind the end-to-end tests. It knows alice with password
// "pa:ss word" and token "tok".
type fakeChecker struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (f *fakeChecker) CheckLogin(_ context.Context, name, secret, _ string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "check "+name)
	return name == "alice" && (secret == "pa:ss word" || secret == "tok"), f.err
}

func (f *fakeChecker) Exists(_ context.Context, name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "exists "+name)
	return name == "alice", f.err
}

func frame(s string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(s)))
	return append(b, s...)
}

func frames(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = append(b, frame(s)...)
	}
	return b
}

var (
	yes = []byte{0, 2, 0, 1}
	no  = []byte{0, 2, 0, 0}
)

func replies(rs ...[]byte) []byte { return bytes.Join(rs, nil) }

func TestExtauthServe(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("x", clinkid.ExtauthMaxFrame+1)
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr bool
		calls   int // how many times the checker was asked
	}{
		{"auth ok", frames("auth:alice:lab.localhost:pa:ss word"), yes, false, 1},
		{"auth token", frames("auth:alice:lab.localhost:tok"), yes, false, 1},
		{"auth wrong", frames("auth:alice:lab.localhost:nope"), no, false, 1},
		{"auth empty password", frames("auth:alice:lab.localhost:"), no, false, 1},
		{"auth other domain", frames("auth:alice:example.org:pa:ss word"), no, false, 0},
		{"auth domain case", frames("auth:alice:LAB.localhost:tok"), yes, false, 1},
		{"isuser", frames("isuser:alice:lab.localhost", "isuser:bob:lab.localhost"), replies(yes, no), false, 2},
		{"isuser extra field", frames("isuser:alice:lab.localhost:x"), no, false, 0},
		{"setpass refused", frames("setpass:alice:lab.localhost:new"), no, false, 0},
		{"tryregister refused", frames("tryregister:eve:lab.localhost:pw"), no, false, 0},
		{"removeuser refused", frames("removeuser:alice:lab.localhost"), no, false, 0},
		{"removeuser3 refused", frames("removeuser3:alice:lab.localhost:pa:ss word"), no, false, 0},
		{"unknown op", frames("getuser:alice:lab.localhost"), no, false, 0},
		{"no fields", frames("auth"), no, false, 0},
		{"missing server", frames("auth:alice"), no, false, 0},
		{"empty user", frames("auth::lab.localhost:x"), no, false, 0},
		{"not utf-8", frames("auth:al\xffice:lab.localhost:x"), no, false, 0},
		{"length 0", frames(""), no, false, 0},
		{"garbage", frames("\x00\x01\x02 hello"), no, false, 0},
		{"huge then good: resync", append(frames(huge), frames("auth:alice:lab.localhost:tok")...), replies(no, yes), false, 1},
		{"max length 65535", append(frame(strings.Repeat("y", 65535)), frames("isuser:alice:lab.localhost")...), replies(no, yes), false, 1},
		{"many", frames("auth:alice:lab.localhost:tok", "x", "isuser:alice:lab.localhost", "auth:alice:lab.localhost:bad"), replies(yes, no, yes, no), false, 3},
		{"empty input", nil, nil, false, 0},
		{"eof in header", []byte{0}, nil, true, 0},
		{"eof in body", frame("auth:alice:lab.localhost:tok")[:10], nil, true, 0},
		{"eof in huge body", frame(huge)[:100], nil, true, 0},
		{"answer then eof in body", append(frames("isuser:alice:lab.localhost"), 0, 9, 'a'), yes, true, 1},
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data-err": iotest.DataErrReader,
	}
	for _, tt := range tests {
		for rname, wrap := range readers {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				var logs, out bytes.Buffer
				fc := &fakeChecker{}
				e := &clinkid.Extauth{Checker: fc, Domain: "lab.localhost", Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
				err := e.Serve(t.Context(), wrap(bytes.NewReader(tt.in)), &out)
				if (err != nil) != tt.wantErr {
					t.Errorf("Serve = %v, want error: %v", err, tt.wantErr)
				}
				if !bytes.Equal(out.Bytes(), tt.want) {
					t.Errorf("Serve wrote % x, want % x", out.Bytes(), tt.want)
				}
				if len(fc.calls) != tt.calls {
					t.Errorf("checker asked %d times (%v), want %d", len(fc.calls), fc.calls, tt.calls)
				}
				for _, secret := range []string{"pa:ss word", "ss word", "tok", "nope", "new"} {
					if strings.Contains(logs.String(), secret) {
						t.Errorf("log holds the secret %q:\n%s", secret, logs.String())
					}
				}
			})
		}
	}
}

// TestExtauthCheckerError: a store that cannot answer gives false and a
// log line, and the next request is still answered.
func TestExtauthCheckerError(t *testing.T) {
	t.Parallel()
	var logs, out bytes.Buffer
	e := &clinkid.Extauth{Checker: &fakeChecker{err: errors.New("database down")}, Domain: "lab.localhost", Log: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := e.Serve(t.Context(), bytes.NewReader(frames("auth:alice:lab.localhost:tok", "isuser:alice:lab.localhost")), &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), replies(no, no)) {
		t.Errorf("Serve wrote % x, want two false answers", out.Bytes())
	}
	if !strings.Contains(logs.String(), "database down") {
		t.Errorf("log = %q, want the store's error", logs.String())
	}
}

// slowChecker answers after its context ends, to show the timeout.
type slowChecker struct{}

func (slowChecker) CheckLogin(ctx context.Context, _, _, _ string) (bool, error) {
	<-ctx.Done()
	return false, ctx.Err()
}
func (slowChecker) Exists(ctx context.Context, _ string) (bool, error) {
	<-ctx.Done()
	return false, ctx.Err()
}

// TestExtauthTimeout: a check that hangs is answered false once Timeout
// passes, so the answer never arrives after ejabberd's 30 s.
func TestExtauthTimeout(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	e := &clinkid.Extauth{Checker: slowChecker{}, Domain: "lab.localhost", Timeout: 50 * time.Millisecond}
	if err := e.Serve(t.Context(), bytes.NewReader(frames("auth:alice:lab.localhost:x")), &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), no) {
		t.Errorf("Serve wrote % x, want false", out.Bytes())
	}
}

func TestReadExtauthFrame(t *testing.T) {
	t.Parallel()
	buf := make([]byte, clinkid.ExtauthMaxFrame)
	r := bytes.NewReader(append(frame(strings.Repeat("z", clinkid.ExtauthMaxFrame+5)), frame("isuser:a:b")...))
	if _, err := clinkid.ReadExtauthFrame(r, buf); !errors.Is(err, clinkid.ErrFrameTooLarge) {
		t.Fatalf("ReadExtauthFrame(oversized) = %v, want ErrFrameTooLarge", err)
	}
	got, err := clinkid.ReadExtauthFrame(r, buf)
	if err != nil || string(got) != "isuser:a:b" {
		t.Fatalf("ReadExtauthFrame after an oversized frame = %q, %v, want the next frame", got, err)
	}
	if _, err := clinkid.ReadExtauthFrame(r, buf); err != io.EOF {
		t.Fatalf("ReadExtauthFrame at the end = %v, want io.EOF", err)
	}
}

func TestParseExtauth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want clinkid.ExtauthRequest
		ok   bool
	}{
		{"auth:u:s:p", clinkid.ExtauthRequest{"auth", "u", "s", "p"}, true},
		{"auth:u:s:p:q::", clinkid.ExtauthRequest{"auth", "u", "s", "p:q::"}, true},
		{"auth:u:s:", clinkid.ExtauthRequest{"auth", "u", "s", ""}, true},
		{"isuser:u:s", clinkid.ExtauthRequest{"isuser", "u", "s", ""}, true},
		{"removeuser3:u:s:p", clinkid.ExtauthRequest{"removeuser3", "u", "s", "p"}, true},
		{"auth:u:s", clinkid.ExtauthRequest{}, false},
		{"isuser:u", clinkid.ExtauthRequest{}, false},
		{"isuser:u:s:p", clinkid.ExtauthRequest{}, false},
		{"AUTH:u:s:p", clinkid.ExtauthRequest{}, false},
		{":u:s:p", clinkid.ExtauthRequest{}, false},
	}
	for _, tt := range tests {
		got, err := clinkid.ParseExtauth([]byte(tt.in))
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("ParseExtauth(%q) = %+v, %v, want %+v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// FuzzExtauth feeds arbitrary bytes to the reader. Whatever comes in, the
// program answers only with the two valid replies, at most one per frame
// begun, never panics, and never asks the checker about another domain.
func FuzzExtauth(f *testing.F) {
	// The seed corpus is in testdata/fuzz/FuzzExtauth; these are its
	// shapes, kept here so a reader sees them.
	f.Add(frames("auth:alice:lab.localhost:pa:ss word"))
	f.Add(frames("isuser:alice:lab.localhost", "setpass:alice:lab.localhost:x"))
	f.Add(frame(strings.Repeat("x", 5000)))
	f.Add([]byte{0xff, 0xff, 1, 2, 3})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		fc := &fakeChecker{}
		e := &clinkid.Extauth{Checker: fc, Domain: "lab.localhost"}
		e.Serve(context.Background(), bytes.NewReader(in), &out)
		got := out.Bytes()
		if len(got)%4 != 0 {
			t.Fatalf("output % x is not whole replies", got)
		}
		maxReplies := 0
		for rest := in; len(rest) >= 2; {
			n := int(binary.BigEndian.Uint16(rest))
			maxReplies++
			if len(rest) < 2+n {
				break
			}
			rest = rest[2+n:]
		}
		if len(got)/4 > maxReplies {
			t.Fatalf("%d replies for at most %d frames", len(got)/4, maxReplies)
		}
		for i := 0; i < len(got); i += 4 {
			if r := got[i : i+4]; !bytes.Equal(r, yes) && !bytes.Equal(r, no) {
				t.Fatalf("reply % x is neither 00 02 00 01 nor 00 02 00 00", r)
			}
		}
		if len(fc.calls) > len(got)/4 {
			t.Fatalf("checker asked %d times for %d replies", len(fc.calls), len(got)/4)
		}
	})
}
