package devsync

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// Short timeouts: every hostile case must end by itself well within the
// test's own bound. testIO is generous because the race detector on a
// loaded 2-core machine has made a plain loopback step take over 300 ms.
const (
	testIO   = 2 * time.Second
	testUser = 4 * time.Second
	noHang   = 20 * time.Second
	// userGone is the user timeout in cases where a person never answers.
	userGone = time.Second
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func offerCfg(id, account string) OfferConfig {
	return OfferConfig{
		DeviceID:    id,
		Account:     account,
		ShowCode:    func(context.Context, string) error { return nil },
		Confirm:     func(context.Context) error { return nil },
		IOTimeout:   testIO,
		UserTimeout: testUser,
	}
}

func acceptCfg(id, account string, payload []byte) AcceptConfig {
	return AcceptConfig{DeviceID: id, Account: account, Payload: payload, IOTimeout: testIO, UserTimeout: testUser}
}

// TestInProcess runs both honest sides in one process: the quick check that
// the two halves of the protocol agree. The real proof is the two-process
// test in process_test.go.
func TestInProcess(t *testing.T) {
	payload := []byte("v1\x00opaque key store bytes")
	tests := []struct {
		name          string
		acceptAccount string
		typo          bool
		reject        bool
		wantErr       error
	}{
		{name: "ok"},
		{name: "wrong code", typo: true, wantErr: ErrWrongCode},
		{name: "different account", acceptAccount: "bob@clink.example", wantErr: ErrDifferentAccount},
		{name: "rejected", reject: true, wantErr: ErrRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t)
			codes := make(chan string, 1)
			oc := offerCfg("dev-a", "alice@clink.example")
			oc.ShowCode = func(_ context.Context, c string) error { codes <- c; return nil }
			if tt.reject {
				oc.Confirm = func(context.Context) error { return errors.New("user said no") }
			}
			account := "alice@clink.example"
			if tt.acceptAccount != "" {
				account = tt.acceptAccount
			}
			ctx, cancel := context.WithTimeout(context.Background(), noHang)
			defer cancel()
			type res struct {
				got *Received
				err error
			}
			offerDone := make(chan res, 1)
			go func() {
				got, err := Offer(ctx, ln, oc)
				offerDone <- res{got, err}
			}()
			code := func(ctx context.Context) (string, error) {
				select {
				case c := <-codes:
					if tt.typo {
						c = c[:5] + string('0'+(c[5]-'0'+1)%10)
					}
					return c, nil
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}
			aerr := Accept(ctx, ln.Addr().String(), code, acceptCfg("dev-b", account, payload))
			o := <-offerDone
			if tt.wantErr == nil {
				if aerr != nil || o.err != nil {
					t.Fatalf("Accept = %v, Offer = %v; want both nil", aerr, o.err)
				}
				if !bytes.Equal(o.got.Payload, payload) || o.got.PeerDeviceID != "dev-b" {
					t.Fatalf("Offer = %q from %q, want %q from dev-b", o.got.Payload, o.got.PeerDeviceID, payload)
				}
				return
			}
			if !errors.Is(aerr, tt.wantErr) || !errors.Is(o.err, tt.wantErr) {
				t.Fatalf("Accept = %v, Offer = %v; want both %v", aerr, o.err, tt.wantErr)
			}
			if o.got != nil {
				t.Fatalf("Offer returned a payload with error %v", o.err)
			}
		})
	}
}

// evilB plays the accepting side by hand against a real Offer.
type evilB func(t *testing.T, c net.Conn)

// evilA plays the offering side by hand against a real Accept.
type evilA func(t *testing.T, c net.Conn)

func writeRaw(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(b)
}

func readOne(c net.Conn) (frame, error) {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	return readFrame(c)
}

func keyFrameWith(version byte, id string, pk []byte) []byte {
	var v [32]byte
	copy(v[:], pk)
	return appendFrame(nil, typeKey, hello{version, id, v}.marshal())
}

func freshPK(t *testing.T) []byte {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}

func TestOfferHostilePeer(t *testing.T) {
	tests := []struct {
		name      string
		peer      evilB
		want      error
		wantAbort byte // reason the peer should receive, 0 for none checked
		fromStart bool // the peer reads COMMIT itself
	}{
		{"garbage", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		}, ErrProtocol, reasonProtocol, false},
		{"huge length prefix", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, []byte{byte(typeKey), 0xff, 0xff, 0xff, 0xf0})
		}, ErrTooLarge, reasonTooLarge, false},
		{"truncated frame then close", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, keyFrameWith(1, "dev-b", freshPK(t))[:20])
			c.(*net.TCPConn).CloseWrite()
		}, ErrProtocol, 0, false},
		{"early EOF", func(t *testing.T, c net.Conn) {
			c.(*net.TCPConn).CloseWrite()
		}, ErrProtocol, 0, false},
		{"silent peer", func(t *testing.T, c net.Conn) {}, ErrTimeout, 0, false},
		{"half a header then silence", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, []byte{byte(typeKey), 0})
		}, ErrTimeout, 0, false},
		{"future version", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, appendFrame(nil, typeKey, []byte{2, 'x', 'y'}))
		}, ErrVersion, reasonVersion, false},
		{"same device id", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, keyFrameWith(1, "dev-a", freshPK(t)))
		}, ErrSameDevice, reasonSameDevice, false},
		{"low-order point", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, keyFrameWith(1, "dev-b", make([]byte, 32)))
		}, ErrProtocol, reasonProtocol, false},
		{"reveal instead of key", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, appendFrame(nil, typeReveal, freshPK(t)))
		}, ErrProtocol, reasonProtocol, false},
		{"key with trailing byte", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, appendFrame(nil, typeKey, append(hello{1, "dev-b", [32]byte{1}}.marshal(), 0)))
		}, ErrProtocol, reasonProtocol, false},
		{"forged plaintext wrong-code abort", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, appendFrame(nil, typePlainAbort, []byte{reasonWrongCode}))
		}, ErrProtocol, 0, false},
		{"plaintext cancel", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, appendFrame(nil, typePlainAbort, []byte{reasonCanceled}))
		}, ErrAborted, 0, false},
		{"garbage account ciphertext", func(t *testing.T, c net.Conn) {
			writeRaw(t, c, keyFrameWith(1, "dev-b", freshPK(t)))
			writeRaw(t, c, appendFrame(nil, typeAccount, bytes.Repeat([]byte{7}, 40)))
		}, ErrProtocol, 0, false},
		{"valid handshake then garbage payload", func(t *testing.T, c net.Conn) {
			s := newSession(context.Background(), c, testIO, orDiscard(nil))
			if _, err := acceptHandshake(s, "dev-b", "alice@clink.example"); err != nil {
				t.Errorf("evil handshake: %v", err)
				return
			}
			writeRaw(t, c, appendFrame(nil, typePayload, bytes.Repeat([]byte{7}, 100)))
		}, ErrProtocol, 0, true},
		{"valid handshake then DONE", func(t *testing.T, c net.Conn) {
			s := newSession(context.Background(), c, testIO, orDiscard(nil))
			if _, err := acceptHandshake(s, "dev-b", "alice@clink.example"); err != nil {
				t.Errorf("evil handshake: %v", err)
				return
			}
			writeRaw(t, c, s.seal(typeDone, nil))
		}, ErrProtocol, 0, true},
		{"valid handshake then silence", func(t *testing.T, c net.Conn) {
			s := newSession(context.Background(), c, testIO, orDiscard(nil))
			if _, err := acceptHandshake(s, "dev-b", "alice@clink.example"); err != nil {
				t.Errorf("evil handshake: %v", err)
			}
		}, ErrTimeout, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := listen(t)
			ctx, cancel := context.WithTimeout(context.Background(), noHang)
			defer cancel()
			errc := make(chan error, 1)
			start := time.Now()
			go func() {
				_, err := Offer(ctx, ln, offerCfg("dev-a", "alice@clink.example"))
				errc <- err
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !tt.fromStart {
				if _, err := readOne(c); err != nil { // COMMIT
					t.Fatalf("reading COMMIT: %v", err)
				}
			}
			tt.peer(t, c)
			err = <-errc
			if !errors.Is(err, tt.want) {
				t.Fatalf("Offer against %s = %v, want %v", tt.name, err, tt.want)
			}
			if d := time.Since(start); d > testUser+time.Second {
				t.Errorf("Offer against %s took %v", tt.name, d)
			}
			if tt.wantAbort != 0 {
				f, err := readOne(c)
				if err != nil || f.typ != typePlainAbort || !bytes.Equal(f.body, []byte{tt.wantAbort}) {
					t.Errorf("peer got %x, %v; want plaintext ABORT %d", f.raw, err, tt.wantAbort)
				}
			}
		})
	}
}

func TestAcceptHostilePeer(t *testing.T) {
	validCommit := func(t *testing.T, c net.Conn, pk []byte) {
		writeRaw(t, c, appendFrame(nil, typeCommit, hello{1, "dev-a", commitment("dev-a", pk)}.marshal()))
		if _, err := readOne(c); err != nil { // KEY
			t.Errorf("reading KEY: %v", err)
		}
	}
	tests := []struct {
		name       string
		peer       evilA
		want       error
		codeAsked  bool
		wantAbort  byte
		abortPlain bool
	}{
		{name: "garbage", peer: func(t *testing.T, c net.Conn) {
			writeRaw(t, c, []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // a TLS ClientHello start
		}, want: ErrProtocol, wantAbort: reasonProtocol, abortPlain: true},
		{name: "huge length prefix", peer: func(t *testing.T, c net.Conn) {
			writeRaw(t, c, []byte{byte(typeCommit), 0x7f, 0xff, 0xff, 0xff})
		}, want: ErrTooLarge, wantAbort: reasonTooLarge, abortPlain: true},
		{name: "early EOF", peer: func(t *testing.T, c net.Conn) {
			c.(*net.TCPConn).CloseWrite()
		}, want: ErrProtocol},
		{name: "silent peer", peer: func(t *testing.T, c net.Conn) {}, want: ErrTimeout},
		{name: "future version", peer: func(t *testing.T, c net.Conn) {
			writeRaw(t, c, appendFrame(nil, typeCommit, []byte{9}))
		}, want: ErrVersion, wantAbort: reasonVersion, abortPlain: true},
		{name: "reveal does not match commitment", peer: func(t *testing.T, c net.Conn) {
			validCommit(t, c, freshPK(t))
			writeRaw(t, c, appendFrame(nil, typeReveal, freshPK(t)))
		}, want: ErrProtocol, wantAbort: reasonProtocol, abortPlain: true},
		{name: "truncated reveal then close", peer: func(t *testing.T, c net.Conn) {
			pk := freshPK(t)
			validCommit(t, c, pk)
			writeRaw(t, c, appendFrame(nil, typeReveal, pk)[:10])
			c.(*net.TCPConn).CloseWrite()
		}, want: ErrProtocol},
		{name: "commit then silence", peer: func(t *testing.T, c net.Conn) {
			validCommit(t, c, freshPK(t))
		}, want: ErrTimeout},
		{name: "valid handshake then DONE during code entry", peer: func(t *testing.T, c net.Conn) {
			s := newSession(context.Background(), c, testIO, orDiscard(nil))
			if _, err := offerHandshake(s, "dev-a", "alice@clink.example"); err != nil {
				t.Errorf("evil handshake: %v", err)
				return
			}
			writeRaw(t, c, s.seal(typeDone, nil))
		}, want: ErrProtocol, codeAsked: true},
		{name: "valid handshake then cancel during code entry", peer: func(t *testing.T, c net.Conn) {
			s := newSession(context.Background(), c, testIO, orDiscard(nil))
			if _, err := offerHandshake(s, "dev-a", "alice@clink.example"); err != nil {
				t.Errorf("evil handshake: %v", err)
				return
			}
			writeRaw(t, c, s.seal(typeAbort, []byte{reasonCanceled}))
		}, want: ErrAborted, codeAsked: true},
		{name: "valid handshake then close during code entry", peer: func(t *testing.T, c net.Conn) {
			s := newSession(context.Background(), c, testIO, orDiscard(nil))
			if _, err := offerHandshake(s, "dev-a", "alice@clink.example"); err != nil {
				t.Errorf("evil handshake: %v", err)
				return
			}
			c.Close()
		}, want: ErrProtocol, codeAsked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := listen(t)
			ctx, cancel := context.WithTimeout(context.Background(), noHang)
			defer cancel()
			asked := make(chan struct{}, 1)
			code := func(ctx context.Context) (string, error) {
				asked <- struct{}{}
				<-ctx.Done() // a user who never types: only the peer ends this
				return "", ctx.Err()
			}
			errc := make(chan error, 1)
			go func() {
				errc <- Accept(ctx, ln.Addr().String(), code, acceptCfg("dev-b", "alice@clink.example", []byte("secret")))
			}()
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tt.peer(t, c)
			err = <-errc
			if !errors.Is(err, tt.want) {
				t.Fatalf("Accept against %s = %v, want %v", tt.name, err, tt.want)
			}
			if ctx.Err() != nil {
				t.Fatalf("Accept against %s ran into the test's own deadline", tt.name)
			}
			if got := len(asked) == 1; got != tt.codeAsked {
				t.Errorf("code asked = %v, want %v", got, tt.codeAsked)
			}
			if tt.wantAbort != 0 {
				f, err := readOne(c)
				if err != nil || (f.typ == typePlainAbort) != tt.abortPlain || (tt.abortPlain && !bytes.Equal(f.body, []byte{tt.wantAbort})) {
					t.Errorf("peer got %x, %v; want ABORT %d", f.raw, err, tt.wantAbort)
				}
			}
		})
	}
}

func TestOfferContextCanceled(t *testing.T) {
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := Offer(ctx, ln, offerCfg("dev-a", "a@x"))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Offer after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(noHang):
		t.Fatal("Offer did not return after cancel")
	}
	// The listener is usable again: its deadline was cleared.
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), noHang)
	defer cancel2()
	if _, err := Offer(ctx2, ln, offerCfg("dev-a", "a@x")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("second Offer on the same listener = %v, want ErrTimeout from the silent peer", err)
	}
}

func TestConfigErrors(t *testing.T) {
	ln := listen(t)
	ctx := context.Background()
	okCode := func(context.Context) (string, error) { return "", nil }
	cfgs := []OfferConfig{
		{DeviceID: "", Account: "a"},
		{DeviceID: string(make([]byte, MaxDeviceID+1)), Account: "a"},
		{DeviceID: "d", Account: ""},
		{DeviceID: "d", Account: "\xff"},
		{DeviceID: "d", Account: "a"}, // no callbacks
	}
	for _, c := range cfgs {
		if _, err := Offer(ctx, ln, c); !errors.Is(err, ErrConfig) {
			t.Errorf("Offer(%+v) = %v, want ErrConfig", c, err)
		}
	}
	if err := Accept(ctx, ln.Addr().String(), nil, acceptCfg("d", "a", nil)); !errors.Is(err, ErrConfig) {
		t.Errorf("Accept(nil code) = %v, want ErrConfig", err)
	}
	big := make([]byte, MaxPayload+1)
	if err := Accept(ctx, ln.Addr().String(), okCode, acceptCfg("d", "a", big)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Accept(%d-byte payload) = %v, want ErrTooLarge", len(big), err)
	}
}

// TestUserSlowOrGone covers the steps that wait for a person: each ends on
// its own, and both sides report it.
func TestUserSlowOrGone(t *testing.T) {
	tests := []struct {
		name             string
		confirmNever     bool
		cancelDuringCode bool
		wantOffer        error
		wantAccept       error
	}{
		{name: "code never typed", wantOffer: ErrAborted, wantAccept: ErrTimeout},
		{name: "never confirmed", confirmNever: true, wantOffer: ErrRejected, wantAccept: ErrRejected},
		{name: "accepting app canceled", cancelDuringCode: true, wantOffer: ErrAborted, wantAccept: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := listen(t)
			ctx, cancel := context.WithTimeout(context.Background(), noHang)
			defer cancel()
			codes := make(chan string, 1)
			oc := offerCfg("dev-a", "a@x")
			oc.ShowCode = func(_ context.Context, c string) error { codes <- c; return nil }
			if tt.confirmNever {
				oc.UserTimeout = userGone
				oc.Confirm = func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
			}
			offerErr := make(chan error, 1)
			go func() {
				_, err := Offer(ctx, ln, oc)
				offerErr <- err
			}()
			actx, acancel := context.WithCancel(ctx)
			defer acancel()
			ac := acceptCfg("dev-b", "a@x", []byte("secret"))
			code := func(ctx context.Context) (string, error) {
				c := <-codes
				switch {
				case tt.confirmNever:
					return c, nil
				case tt.cancelDuringCode:
					acancel()
				}
				<-ctx.Done()
				return "", ctx.Err()
			}
			if !tt.confirmNever {
				ac.UserTimeout = userGone
			}
			aerr := Accept(actx, ln.Addr().String(), code, ac)
			oerr := <-offerErr
			if !errors.Is(aerr, tt.wantAccept) || !errors.Is(oerr, tt.wantOffer) {
				t.Fatalf("Accept = %v, Offer = %v; want %v, %v", aerr, oerr, tt.wantAccept, tt.wantOffer)
			}
			if ctx.Err() != nil {
				t.Fatal("ran into the test's own deadline")
			}
		})
	}
}

// TestNoSecretsInLogsOrErrors runs sessions that succeed and fail with all
// logging on, and looks for the code, the account names and the payload in
// the log records and the errors.
func TestNoSecretsInLogsOrErrors(t *testing.T) {
	payload := []byte("PAYLOAD-SECRET-0123456789abcdef")
	for _, tt := range []struct {
		name          string
		acceptAccount string
		typo          bool
	}{
		{name: "ok"},
		{name: "wrong code", typo: true},
		{name: "different account", acceptAccount: "bob-secret-account@clink.example"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			// No timestamps: their digits could match the six-digit code.
			logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
				Level: slog.LevelDebug,
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				},
			}))
			ln := listen(t)
			ctx, cancel := context.WithTimeout(context.Background(), noHang)
			defer cancel()
			codes := make(chan string, 1)
			var shown string
			oc := offerCfg("dev-a", "alice-secret-account@clink.example")
			oc.Logger = logger
			oc.ShowCode = func(_ context.Context, c string) error { shown = c; codes <- c; return nil }
			oerrc := make(chan error, 1)
			go func() {
				_, err := Offer(ctx, ln, oc)
				oerrc <- err
			}()
			account := "alice-secret-account@clink.example"
			if tt.acceptAccount != "" {
				account = tt.acceptAccount
			}
			ac := acceptCfg("dev-b", account, payload)
			ac.Logger = logger
			aerr := Accept(ctx, ln.Addr().String(), func(ctx context.Context) (string, error) {
				c := <-codes
				if tt.typo {
					return otherCodeOf(c), nil
				}
				return c, nil
			}, ac)
			oerr := <-oerrc
			all := logs.String() + "\n" + fmt.Sprint(aerr) + "\n" + fmt.Sprint(oerr)
			secrets := []string{"alice-secret-account", "bob-secret-account", string(payload)}
			if shown != "" {
				secrets = append(secrets, shown)
			}
			for _, s := range secrets {
				if strings.Contains(all, s) {
					t.Errorf("logs or errors contain %q:\n%s", s, all)
				}
			}
			if logs.Len() == 0 {
				t.Error("no log records at all; the test would prove nothing")
			}
		})
	}
}

func otherCodeOf(code string) string {
	last := code[len(code)-1]
	return code[:len(code)-1] + string('0'+(last-'0'+1)%10)
}
