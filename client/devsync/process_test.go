package devsync_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/devsync"
)

// The tests in this file run each device in its own process: the test
// binary re-executes itself with DEVSYNC_TEST_HELPER naming the role. The
// parent plays the user (reads the code printed by one child, types it into
// the other through its stdin) and, where a case needs it, a passive
// recording proxy between the two.
//
// Children talk to the parent in lines starting with "@@ ":
//
//	@@ listen ADDR        offerer or mitm is listening
//	@@ code NNNNNN        offerer shows a code
//	@@ code?              accepter asks for the code (parent answers a line)
//	@@ code accepted      accepter: the typed code matched
//	@@ confirm?           offerer asks for confirmation (parent answers yes/no)
//	@@ result ok          the role succeeded
//	@@ result ERRNAME     the role failed with that sentinel
//	@@ stolen N           (mitm) got N payload bytes from the accepter

const helperEnv = "DEVSYNC_TEST_HELPER"

// Children use short timeouts so that a broken case ends on its own; the
// parent's wait is longer still.
const (
	childIO   = 5 * time.Second
	childUser = 20 * time.Second
	lineWait  = 60 * time.Second
)

var sentinels = []struct {
	name string
	err  error
}{
	{"ErrWrongCode", devsync.ErrWrongCode},
	{"ErrDifferentAccount", devsync.ErrDifferentAccount},
	{"ErrRejected", devsync.ErrRejected},
	{"ErrAborted", devsync.ErrAborted},
	{"ErrVersion", devsync.ErrVersion},
	{"ErrSameDevice", devsync.ErrSameDevice},
	{"ErrProtocol", devsync.ErrProtocol},
	{"ErrTooLarge", devsync.ErrTooLarge},
	{"ErrTimeout", devsync.ErrTimeout},
	{"ErrConfig", devsync.ErrConfig},
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	return "other:" + strings.ReplaceAll(err.Error(), "\n", " ")
}

// TestHelperProcess is not a test: it is the body of a child process.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv(helperEnv)
	if role == "" {
		t.Skip("runs only as a child of the two-process tests")
	}
	os.Exit(runHelper(role))
}

func runHelper(role string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*childUser)
	defer cancel()
	in := bufio.NewScanner(os.Stdin)
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Printf("@@ "+format+"\n", args...)
	}
	ask := func(ctx context.Context, prompt string) (string, error) {
		say("%s", prompt)
		line := make(chan string, 1)
		go func() {
			if in.Scan() {
				line <- in.Text()
			}
			close(line)
		}()
		select {
		case l, ok := <-line:
			if !ok {
				return "", io.EOF
			}
			return l, nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	env := os.Getenv
	switch role {
	case "offer":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			say("result other:%v", err)
			return 1
		}
		defer ln.Close()
		say("listen %s", ln.Addr())
		got, err := devsync.Offer(ctx, ln, devsync.OfferConfig{
			DeviceID: env("DEVSYNC_DEVICE"),
			Account:  env("DEVSYNC_ACCOUNT"),
			ShowCode: func(_ context.Context, code string) error {
				say("code %s", code)
				return nil
			},
			Confirm: func(ctx context.Context) error {
				a, err := ask(ctx, "confirm?")
				if err != nil {
					return err
				}
				if a != "yes" {
					return errors.New("user answered no")
				}
				return nil
			},
			IOTimeout:   childIO,
			UserTimeout: childUser,
		})
		if err == nil {
			if werr := os.WriteFile(env("DEVSYNC_OUT"), got.Payload, 0o600); werr != nil {
				say("result other:%v", werr)
				return 1
			}
		}
		say("result %s", errName(err))
	case "accept":
		payload, err := os.ReadFile(env("DEVSYNC_PAYLOAD"))
		if err != nil {
			say("result other:%v", err)
			return 1
		}
		err = devsync.Accept(ctx, env("DEVSYNC_ADDR"), func(ctx context.Context) (string, error) {
			return ask(ctx, "code?")
		}, devsync.AcceptConfig{
			DeviceID:       env("DEVSYNC_DEVICE"),
			Account:        env("DEVSYNC_ACCOUNT"),
			Payload:        payload,
			OnCodeAccepted: func() { say("code accepted") },
			IOTimeout:      childIO,
			UserTimeout:    childUser,
		})
		say("result %s", errName(err))
	case "mitm-naive", "mitm-smart":
		// A man in the middle that does not know the code. Toward the
		// accepter it is an honest-looking offerer; toward the offerer an
		// accepter that (naive) guesses a code or (smart) skips the code
		// and pushes its own payload.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			say("result other:%v", err)
			return 1
		}
		defer ln.Close()
		say("listen %s", ln.Addr())
		var wg sync.WaitGroup
		wg.Go(func() {
			got, err := devsync.Offer(ctx, ln, devsync.OfferConfig{
				DeviceID:    "mallory-to-b",
				Account:     env("DEVSYNC_ACCOUNT"),
				ShowCode:    func(context.Context, string) error { return nil },
				Confirm:     func(context.Context) error { return nil },
				IOTimeout:   childIO,
				UserTimeout: childUser,
			})
			if err == nil {
				say("stolen %d", len(got.Payload))
			}
			say("leg-b %s", errName(err))
		})
		wg.Go(func() {
			forged := []byte("mallory's keys")
			var err error
			if role == "mitm-naive" {
				err = devsync.Accept(ctx, env("DEVSYNC_ADDR"), func(context.Context) (string, error) {
					return "123456", nil // a guess
				}, devsync.AcceptConfig{
					DeviceID: "mallory-to-a", Account: env("DEVSYNC_ACCOUNT"), Payload: forged,
					IOTimeout: childIO, UserTimeout: childUser,
				})
			} else {
				err = devsync.AttackerAccept(ctx, env("DEVSYNC_ADDR"), "mallory-to-a", env("DEVSYNC_ACCOUNT"), forged)
			}
			say("leg-a %s", errName(err))
		})
		wg.Wait()
		say("result done")
	default:
		say("result other:unknown role %q", role)
		return 2
	}
	return 0
}

// child is a running helper process.
type child struct {
	t     *testing.T
	name  string
	stdin io.WriteCloser
	lines chan string
}

func startChild(t *testing.T, name, role string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + role}, env...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, name: name, stdin: stdin, lines: make(chan string, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "@@ "); ok {
				c.lines <- l
			}
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		<-done
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("%s stderr:\n%s", name, stderr.String())
		}
	})
	return c
}

// expect waits for the child's next line and checks that it starts with
// prefix; it returns the rest of the line.
func (c *child) expect(prefix string) string {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			c.t.Fatalf("%s exited, want line %q", c.name, prefix)
		}
		rest, found := strings.CutPrefix(l, prefix)
		if !found {
			c.t.Fatalf("%s said %q, want %q...", c.name, l, prefix)
		}
		return strings.TrimSpace(rest)
	case <-time.After(lineWait):
		c.t.Fatalf("%s said nothing for %v, want %q", c.name, lineWait, prefix)
	}
	return ""
}

func (c *child) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		c.t.Fatalf("writing to %s: %v", c.name, err)
	}
}

// recorder is a passive proxy: it forwards one connection's bytes both ways
// unchanged and keeps a copy of each direction.
type recorder struct {
	ln     net.Listener
	target string
	done   chan struct{}
	// written by one goroutine each, read only after done is closed
	toOfferer, toAccepter bytes.Buffer
}

func startRecorder(t *testing.T, target string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln, target: target, done: make(chan struct{})}
	go r.serve()
	t.Cleanup(func() { ln.Close() })
	return r
}

func (r *recorder) serve() {
	defer close(r.done)
	in, err := r.ln.Accept()
	if err != nil {
		return
	}
	defer in.Close()
	out, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer out.Close()
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn, rec *bytes.Buffer) {
		_, _ = io.Copy(io.MultiWriter(dst, rec), src)
		_ = dst.(*net.TCPConn).CloseWrite()
	}
	wg.Go(func() { pipe(out, in, &r.toOfferer) })
	wg.Go(func() { pipe(in, out, &r.toAccepter) })
	wg.Wait()
}

func (r *recorder) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(lineWait):
		t.Fatal("recording proxy did not finish")
	}
}

// leaks reports whether any 16-byte window of secret, at 16-byte steps,
// appears in wire.
func leaks(wire, secret []byte) bool {
	for i := 0; i+16 <= len(secret); i += 16 {
		if bytes.Contains(wire, secret[i:i+16]) {
			return true
		}
	}
	return false
}

type procCase struct {
	name          string
	acceptAccount string
	wrongCode     bool
}

func TestTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	const account = "alice@clink.example"
	tests := []procCase{
		{name: "right code"},
		{name: "wrong code", wrongCode: true},
		{name: "different account", acceptAccount: "bob@clink.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			payload := make([]byte, 64<<10)
			rand.Read(payload)
			copy(payload, "keystore v1\x00")
			payloadFile := filepath.Join(dir, "payload")
			outFile := filepath.Join(dir, "received")
			if err := os.WriteFile(payloadFile, payload, 0o600); err != nil {
				t.Fatal(err)
			}
			acceptAccount := account
			if tt.acceptAccount != "" {
				acceptAccount = tt.acceptAccount
			}

			a := startChild(t, "offerer", "offer", "DEVSYNC_DEVICE=phone-new", "DEVSYNC_ACCOUNT="+account, "DEVSYNC_OUT="+outFile)
			addrA := a.expect("listen")
			rec := startRecorder(t, addrA)
			b := startChild(t, "accepter", "accept", "DEVSYNC_DEVICE=phone-old", "DEVSYNC_ACCOUNT="+acceptAccount,
				"DEVSYNC_ADDR="+rec.ln.Addr().String(), "DEVSYNC_PAYLOAD="+payloadFile)

			switch {
			case tt.acceptAccount != "":
				// Refused before any code is shown or asked for.
				if got := a.expect("result"); got != "ErrDifferentAccount" {
					t.Errorf("offerer result = %s, want ErrDifferentAccount", got)
				}
				if got := b.expect("result"); got != "ErrDifferentAccount" {
					t.Errorf("accepter result = %s, want ErrDifferentAccount", got)
				}
			case tt.wrongCode:
				code := a.expect("code")
				b.expect("code?")
				b.send(otherCode(code))
				if got := b.expect("result"); got != "ErrWrongCode" {
					t.Errorf("accepter result = %s, want ErrWrongCode", got)
				}
				if got := a.expect("result"); got != "ErrWrongCode" {
					t.Errorf("offerer result = %s, want ErrWrongCode", got)
				}
			default:
				code := a.expect("code")
				b.expect("code?")
				b.send(code)
				b.expect("code accepted")
				a.expect("confirm?")
				a.send("yes")
				if got := a.expect("result"); got != "ok" {
					t.Fatalf("offerer result = %s, want ok", got)
				}
				if got := b.expect("result"); got != "ok" {
					t.Fatalf("accepter result = %s, want ok", got)
				}
			}
			rec.wait(t)

			received, err := os.ReadFile(outFile)
			if tt.wrongCode || tt.acceptAccount != "" {
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("offerer wrote %d payload bytes (err %v), want none", len(received), err)
				}
				// Not even ciphertext of the payload was sent.
				// A PAYLOAD frame is at least 4 KiB (padding).
				if n := rec.toOfferer.Len(); n >= 4096 {
					t.Errorf("accepter sent %d bytes, want < 4096 (no PAYLOAD frame)", n)
				}
			} else if !bytes.Equal(received, payload) {
				t.Errorf("offerer received %d bytes, want the %d-byte payload byte-identical", len(received), len(payload))
			}
			wire := append(rec.toOfferer.Bytes(), rec.toAccepter.Bytes()...)
			if leaks(wire, payload) {
				t.Errorf("payload plaintext visible to the recording proxy")
			}
			if bytes.Contains(wire, []byte(account)) || bytes.Contains(wire, []byte("bob@clink.example")) {
				t.Errorf("account name visible to the recording proxy")
			}
			t.Logf("recording proxy saw %d bytes to the offerer, %d to the accepter", rec.toOfferer.Len(), rec.toAccepter.Len())
		})
	}
}

// otherCode returns a valid-looking code that differs from code in its last
// digit.
func otherCode(code string) string {
	last := code[len(code)-1]
	return code[:len(code)-1] + string('0'+(last-'0'+1)%10)
}

func TestManInTheMiddle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	const account = "alice@clink.example"
	for _, role := range []string{"mitm-naive", "mitm-smart"} {
		t.Run(role, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			payload := make([]byte, 4096)
			rand.Read(payload)
			payloadFile := filepath.Join(dir, "payload")
			outFile := filepath.Join(dir, "received")
			if err := os.WriteFile(payloadFile, payload, 0o600); err != nil {
				t.Fatal(err)
			}

			a := startChild(t, "offerer", "offer", "DEVSYNC_DEVICE=phone-new", "DEVSYNC_ACCOUNT="+account, "DEVSYNC_OUT="+outFile)
			addrA := a.expect("listen")
			m := startChild(t, "mallory", role, "DEVSYNC_ACCOUNT="+account, "DEVSYNC_ADDR="+addrA)
			addrM := m.expect("listen")
			b := startChild(t, "accepter", "accept", "DEVSYNC_DEVICE=phone-old", "DEVSYNC_ACCOUNT="+account,
				"DEVSYNC_ADDR="+addrM, "DEVSYNC_PAYLOAD="+payloadFile)

			// The user reads the code on the offering device and types it
			// on the accepting one, which is talking to mallory.
			code := a.expect("code")
			b.expect("code?")
			b.send(code)
			if got := b.expect("result"); got != "ErrWrongCode" {
				t.Errorf("accepter result = %s, want ErrWrongCode", got)
			}

			var legA, legB string
			if role == "mitm-smart" {
				// Mallory computed the offerer's code itself and pushed a
				// payload; the offerer's user saw the accepter say "wrong
				// code" and answers no.
				a.expect("confirm?")
				a.send("no")
				if got := a.expect("result"); got != "ErrRejected" {
					t.Errorf("offerer result = %s, want ErrRejected", got)
				}
			} else if got := a.expect("result"); got != "ErrWrongCode" {
				t.Errorf("offerer result = %s, want ErrWrongCode (mallory guessed)", got)
			}
			for l := m.expect(""); !strings.HasPrefix(l, "result"); l = m.expect("") {
				switch {
				case strings.HasPrefix(l, "stolen"):
					t.Errorf("mallory: %s", l)
				case strings.HasPrefix(l, "leg-a "):
					legA = strings.TrimPrefix(l, "leg-a ")
				case strings.HasPrefix(l, "leg-b "):
					legB = strings.TrimPrefix(l, "leg-b ")
				}
			}
			if legB != "ErrWrongCode" {
				t.Errorf("mallory's leg to the accepter = %s, want ErrWrongCode", legB)
			}
			wantA := "ErrWrongCode"
			if role == "mitm-smart" {
				wantA = "ErrRejected"
			}
			if legA != wantA {
				t.Errorf("mallory's leg to the offerer = %s, want %s", legA, wantA)
			}
			if _, err := os.Stat(outFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("offerer kept a payload (stat: %v), want none", err)
			}
		})
	}
}
