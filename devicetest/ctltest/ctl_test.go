package ctltest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/ctl"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/labdeploy"
)

// clinkctl runs the CLI in-process with a home and passphrase of its own.
type runner struct {
	t       *testing.T
	labJSON string
	home    string
}

func (r runner) run(ctx context.Context, stdin string, args ...string) (code int, stdout, stderr string) {
	return r.runWatching(ctx, stdin, nil, "", args...)
}

// listen runs clinkctl listen with args and closes ready once it says it
// listens (its device is up and announced to clinkd), so that a test
// sends only then: a fixed sleep was too short on a loaded machine.
func (r runner) listen(ctx context.Context, ready chan<- struct{}, name string, args ...string) (code int, stdout, stderr string) {
	return r.runWatching(ctx, "", ready, "listening as ", append([]string{"--as", name, "listen"}, args...)...)
}

func (r runner) runWatching(ctx context.Context, stdin string, seen chan<- struct{}, want string, args ...string) (code int, stdout, stderr string) {
	var out bytes.Buffer
	errb := &watchBuffer{want: want, seen: seen}
	env := map[string]string{"CLINKCTL_HOME": r.home, "CLINKCTL_PASSPHRASE": "a device passphrase"}
	code = ctl.Run(ctx, append([]string{"--lab", r.labJSON}, args...), strings.NewReader(stdin), &out, errb, func(k string) string { return env[k] })
	return code, out.String(), errb.String()
}

// watchBuffer is a buffer that closes seen when want first appears in
// what was written to it.
type watchBuffer struct {
	mu   sync.Mutex
	b    bytes.Buffer
	want string
	seen chan<- struct{}
}

func (w *watchBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.b.Write(p)
	if w.seen != nil && strings.Contains(w.b.String(), w.want) {
		close(w.seen)
		w.seen = nil
	}
	return n, err
}

func (w *watchBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// await waits for ready, failing the test when ctx ends first.
func await(ctx context.Context, t *testing.T, ready <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatalf("%s: %v", what, ctx.Err())
	}
}

// TestCLI drives clinkctl against a whole clinklab deployment (real
// Prosody, PostgreSQL, coturn, clinkd), as an operator trying it would:
// log in, verify keys, send standard, secure and timed messages, listen,
// move alice's keys to a second device over loopback, and read there.
func TestCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dep, err := labdeploy.Start(ctx, labdeploy.Options{Server: lab.Prosody, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dep.Close() })
	labJSON := filepath.Join(dir, "lab.json")
	alice := runner{t, labJSON, t.TempDir()}
	bob := runner{t, labJSON, t.TempDir()}

	for _, r := range []runner{alice, bob} {
		name := map[string]string{alice.home: "alice", bob.home: "bob"}[r.home]
		code, out, errs := r.run(ctx, "", "--as", name, "login")
		if code != 0 || !strings.Contains(out, "created this device's key store") || !strings.Contains(out, "published") {
			t.Fatalf("login %s = %d\n%s%s", name, code, out, errs)
		}
	}
	bobJID := dep.Info.Users[1].JID
	if code, out, errs := alice.run(ctx, "", "--as", "alice", "keys", "verify", bobJID); code != 0 || !strings.Contains(out, "proof verified") {
		t.Fatalf("keys verify = %d\n%s%s", code, out, errs)
	}

	// bob listens while alice sends three kinds of message.
	var wg sync.WaitGroup
	bobListens := make(chan struct{})
	var listenOut string
	wg.Go(func() {
		_, listenOut, _ = bob.listen(ctx, bobListens, "bob", "--count", "3", "--for", "2m")
	})
	await(ctx, t, bobListens, "bob's listen")
	for _, args := range [][]string{
		{"send", "--to", bobJID, "plain hello"},
		{"send", "--to", bobJID, "--enhanced", "enhanced hello"},
		{"send", "--to", bobJID, "--enhanced", "--ttl", "1m", "timed hello"},
	} {
		code, out, errs := alice.run(ctx, "", append([]string{"--as", "alice"}, args...)...)
		if code != 0 || !strings.Contains(out, "sent ") {
			t.Fatalf("%v = %d\nstdout: %s\nstderr: %s", args, code, out, errs)
		}
	}
	wg.Wait()
	for _, want := range []string{"plain hello", "[enhanced]: enhanced hello", "timed hello"} {
		if !strings.Contains(listenOut, want) {
			t.Errorf("bob's listen output lacks %q:\n%s", want, listenOut)
		}
	}

	// A second device of alice's receives her keys over loopback.
	second := runner{t, labJSON, t.TempDir()}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	pr, pw := io.Pipe()
	var offerCode int
	var offerErr string
	wg.Go(func() {
		var out bytes.Buffer
		var errb bytes.Buffer
		env := map[string]string{"CLINKCTL_HOME": second.home, "CLINKCTL_PASSPHRASE": "a device passphrase"}
		offerCode = ctl.Run(ctx, []string{"--lab", labJSON, "--as", "alice", "sync", "offer", "--listen", addr, "--yes"},
			strings.NewReader(""), io.MultiWriter(&out, pw), &errb, func(k string) string { return env[k] })
		offerErr = errb.String()
		pw.Close()
	})
	// As a user would: accept dials, offer then shows the code, the user
	// types it on the accepting device.
	codeIn, typeCode := io.Pipe()
	var acceptCode int
	var acceptOut string
	wg.Go(func() {
		var out, errb bytes.Buffer
		env := map[string]string{"CLINKCTL_HOME": alice.home, "CLINKCTL_PASSPHRASE": "a device passphrase"}
		acceptCode = ctl.Run(ctx, []string{"--lab", labJSON, "--as", "alice", "sync", "accept", "--to", addr}, codeIn, &out, &errb, func(k string) string { return env[k] })
		acceptOut = out.String() + errb.String()
	})
	code := readCode(t, pr)
	go io.Copy(io.Discard, pr)
	io.WriteString(typeCode, code+"\n")
	typeCode.Close()
	wg.Wait()
	if offerCode != 0 || acceptCode != 0 {
		t.Fatalf("sync offer = %d: %s\nsync accept = %d: %s", offerCode, offerErr, acceptCode, acceptOut)
	}
	// The second device reads with alice's keys: first the copy of her
	// timed message, still valid, then what bob writes now.
	secondListens := make(chan struct{})
	wg.Go(func() {
		_, listenOut, _ = second.listen(ctx, secondListens, "alice", "--count", "2", "--for", "2m")
	})
	await(ctx, t, secondListens, "the second device's listen")
	if c, out, errs := bob.run(ctx, "", "--as", "bob", "send", "--to", dep.Info.Users[0].JID, "--enhanced", "to both of alice's devices"); c != 0 {
		t.Fatalf("bob send = %d\n%s%s", c, out, errs)
	}
	wg.Wait()
	if !strings.Contains(listenOut, "sent by another of your devices") || !strings.Contains(listenOut, "to both of alice's devices") {
		t.Errorf("alice's second device did not read bob's message:\n%s", listenOut)
	}

	// A call: bob waits, alice calls the device bob's clinkctl names.
	callR, callW := io.Pipe()
	var calleeCode int
	var calleeOut bytes.Buffer
	wg.Go(func() {
		var errb bytes.Buffer
		env := map[string]string{"CLINKCTL_HOME": bob.home, "CLINKCTL_PASSPHRASE": "a device passphrase"}
		calleeCode = ctl.Run(ctx, []string{"--lab", labJSON, "--as", "bob", "call"}, strings.NewReader(""), io.MultiWriter(&calleeOut, callW), &errb, func(k string) string { return env[k] })
		callW.Close()
	})
	full := readMatch(t, callR, regexp.MustCompile(`waiting for a call to (\S+) `))
	go io.Copy(io.Discard, callR)
	c, callerOut, errs := alice.run(ctx, "", "--as", "alice", "call", "--to", full)
	wg.Wait()
	if c != 0 || calleeCode != 0 {
		t.Fatalf("call = %d, %d\ncaller: %s%s\ncallee: %s", c, calleeCode, callerOut, errs, calleeOut.String())
	}
	for _, out := range []string{callerOut, calleeOut.String()} {
		if !strings.Contains(out, "DTLS-SRTP") || !strings.Contains(out, "route") {
			t.Errorf("call screen lacks the security or the route:\n%s", out)
		}
	}

	// Mistakes and refusals get a clear message and a non-zero exit; a
	// refusal names clinkd's reason and bounds. (send printed "sent" and
	// exited 0 for a refused message before, and took a flag after the
	// text as more text.)
	for _, tt := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"--as", "carol", "login"}, 2, []string{"no user \"carol\""}},
		{[]string{"--as", "alice", "send", "--to", "not a jid", "x"}, 2, []string{"is not a user JID"}},
		{[]string{"--as", "alice", "frobnicate"}, 2, []string{"unknown command"}},
		{[]string{"--as", "alice", "sync", "offer", "--listen", addr, "--yes"}, 1, []string{"never replaced"}},
		{[]string{"--as", "alice", "send", "--to", bobJID, "hello", "--ttl", "1m"}, 2, []string{"flag --ttl after the text"}},
		{[]string{"--as", "alice", "send", "--to", bobJID, "--ttl", "1s", "too short"}, 1,
			[]string{"clinkd refused", "not-acceptable", "validity period", "hint: clinkd accepts a --ttl between 5s and 168h0m0s"}},
	} {
		c, _, errs := second.run(ctx, "", tt.args...)
		ok := c == tt.code && strings.HasPrefix(errs, "clinkctl: error: ")
		for _, w := range tt.want {
			ok = ok && strings.Contains(errs, w)
		}
		if !ok {
			t.Errorf("clinkctl %v = %d, %q; want %d and %q", tt.args, c, errs, tt.code, tt.want)
		}
	}
	// "--" lets a text start with a dash.
	if c, out, errs := alice.run(ctx, "", "--as", "alice", "send", "--receipt", "0", "--to", bobJID, "--", "-- not a flag"); c != 0 || !strings.Contains(out, "accepted by clinkd") {
		t.Errorf("send -- TEXT = %d\n%s%s", c, out, errs)
	}

	// --json: one object per line, for scripts, refusals included.
	c, out, errs := alice.run(ctx, "", "--json", "--as", "alice", "send", "--receipt", "0", "--to", bobJID, "for scripts")
	var accepted struct {
		Event, ID, To, Kind string
	}
	if err := json.Unmarshal([]byte(out), &accepted); c != 0 || err != nil || accepted.Event != "accepted" || accepted.ID == "" || accepted.To != bobJID {
		t.Errorf("send --json = %d, %q (%v)\n%s", c, out, err, errs)
	}
	c, out, _ = alice.run(ctx, "", "--json", "--as", "alice", "send", "--to", bobJID, "--ttl", "8760h", "too long")
	var refused struct {
		Event   string
		Refused struct {
			Condition string
			Min       int64 `json:"min_validity_seconds"`
			Max       int64 `json:"max_validity_seconds"`
		}
	}
	if err := json.Unmarshal([]byte(out), &refused); c != 1 || err != nil || refused.Event != "error" ||
		refused.Refused.Condition != "not-acceptable" || refused.Refused.Min != 5 || refused.Refused.Max != 7*24*3600 {
		t.Errorf("send --json of a refused message = %d, %q (%v); want exit 1 and the refusal with its bounds", c, out, err)
	}

	// listen follows the server going away and coming back: it reconnects
	// and gets what is sent afterwards (it printed "refused: session ended"
	// in a tight loop before).
	var restartOut string
	var restartCode int
	bobListensAgain := make(chan struct{})
	wg.Go(func() {
		// Two messages wait for bob already (the dashed one, the one
		// for scripts); the third comes after the restart.
		restartCode, restartOut, _ = bob.listen(ctx, bobListensAgain, "bob", "--count", "3", "--for", "3m")
	})
	await(ctx, t, bobListensAgain, "bob's listen across the restart")
	if err := dep.XMPP.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	var sendOut, sendErr string
	for range 60 { // until clinkd has linked again
		if c, sendOut, sendErr = alice.run(ctx, "", "--as", "alice", "send", "--receipt", "0", "--to", bobJID, "after the restart"); c == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	if c != 0 {
		t.Fatalf("send after the restart = %d\n%s%s", c, sendOut, sendErr)
	}
	wg.Wait()
	if restartCode != 0 || !strings.Contains(restartOut, "connection lost") || !strings.Contains(restartOut, "reconnected") || !strings.Contains(restartOut, "after the restart") {
		t.Errorf("bob's listen across a server restart = %d:\n%s", restartCode, restartOut)
	}
	if n := strings.Count(restartOut, "connection lost"); n > 20 {
		t.Errorf("bob's listen printed %d connection losses: it spins", n)
	}
}

func readCode(t *testing.T, r io.Reader) string {
	t.Helper()
	return readMatch(t, r, regexp.MustCompile(`code: (\d{6})`))
}

// readMatch reads r until re matches and returns its first group.
func readMatch(t *testing.T, r io.Reader, re *regexp.Regexp) string {
	t.Helper()
	var buf []byte
	b := make([]byte, 256)
	for {
		n, err := r.Read(b)
		buf = append(buf, b[:n]...)
		if m := re.FindSubmatch(buf); m != nil {
			return string(m[1])
		}
		if err != nil {
			t.Fatalf("%s not found in %q", re, buf)
		}
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestBench runs clinkctl bench against a --fast lab, as docs/operators.md
// ("Capacity") shows: 50 timed messages and 10 lookups all accepted; then
// messages clinkd refuses (a validity period past its bound), counted by
// condition, with a non-zero exit.
func TestBench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dep, err := labdeploy.Start(ctx, labdeploy.Options{Server: lab.Prosody, Dir: dir, Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dep.Close() })
	labJSON := filepath.Join(dir, "lab.json")
	alice := runner{t, labJSON, t.TempDir()}
	bob := runner{t, labJSON, t.TempDir()}
	for name, r := range map[string]runner{"alice": alice, "bob": bob} {
		if code, out, errs := r.run(ctx, "", "--as", name, "login"); code != 0 {
			t.Fatalf("login %s = %d\n%s%s", name, code, out, errs)
		}
	}
	bobJID := dep.Info.Users[1].JID

	type stats struct {
		Count, OK int
		PerSecond float64 `json:"per_second"`
		P50       float64 `json:"p50_ms"`
		P99       float64 `json:"p99_ms"`
		Errors    map[string]int
	}
	var summary struct {
		Event    string
		Messages stats
		Lookups  stats
	}
	code, out, errs := alice.run(ctx, "", "--json", "--as", "alice", "bench", "--to", bobJID, "-n", "50", "--ttl", "1m", "--lookups", "10")
	if err := json.Unmarshal([]byte(out), &summary); code != 0 || err != nil {
		t.Fatalf("bench --json = %d, %q (%v)\n%s", code, out, err, errs)
	}
	m, l := summary.Messages, summary.Lookups
	if summary.Event != "bench" || m.Count != 50 || m.OK != 50 || len(m.Errors) != 0 || l.Count != 10 || l.OK != 10 || len(l.Errors) != 0 {
		t.Errorf("bench summary = %+v; want 50 of 50 messages and 10 of 10 lookups, no errors", summary)
	}
	if m.PerSecond <= 0 || m.P50 <= 0 || m.P99 < m.P50 {
		t.Errorf("bench messages = %+v; want a rate and 0 < p50 ≤ p99", m)
	}

	// For people: one line per kind.
	code, out, errs = alice.run(ctx, "", "--as", "alice", "bench", "--to", bobJID, "-n", "5", "--in-flight", "2")
	if code != 0 || !strings.Contains(out, "messages: 5 of 5 accepted") || !strings.Contains(out, "no errors") {
		t.Errorf("bench = %d\n%s%s", code, out, errs)
	}

	// A validity period past clinkd's bound: every message refused with
	// not-acceptable, counted, exit 1.
	code, out, errs = alice.run(ctx, "", "--json", "--as", "alice", "bench", "--to", bobJID, "-n", "6", "--ttl", "8760h")
	first, _, _ := strings.Cut(out, "\n")
	summary.Messages = stats{}
	if err := json.Unmarshal([]byte(first), &summary); code != 1 || err != nil ||
		summary.Messages.Count != 6 || summary.Messages.OK != 0 || summary.Messages.Errors["not-acceptable"] != 6 {
		t.Errorf("bench --ttl 8760h = %d, %q (%v); want exit 1 and 6 not-acceptable\n%s", code, out, err, errs)
	}
	if !strings.Contains(errs, "clinkctl: error: bench: 6 of 6 operations failed") {
		t.Errorf("bench --ttl 8760h stderr = %q; want the failure count", errs)
	}
}
