package calltest

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/call"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab/labtest"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRun runs what `clinkctl call` runs on both ends, relay-only, and
// checks the call screen each prints: connected, SRTP, relayed through a
// TURN server clinkd announced, audio both ways, the verdict, and no
// credential anywhere.
func TestRun(t *testing.T) {
	t.Parallel()
	srv := labtest.Servers(t)[0]
	turn := labtest.Coturn(t)
	d := startClinkd(t, srv)
	alice := clinkdtest.NewDevice(t, srv)
	bob := clinkdtest.NewDevice(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svcs, err := bob.ExternalServices(ctx, d.Component().Domain())
	if err != nil {
		t.Fatal(err)
	}
	opts := call.Options{Services: d.Component().Domain(), Loopback: true, RelayOnly: true, Logger: clinkdtest.Logger(t)}

	var outA, outB syncBuffer
	errB := make(chan error, 1)
	go func() {
		_, err := call.Run(ctx, bob, call.RunConfig{Options: opts, Packets: 20}, &outB)
		errB <- err
	}()
	for !strings.Contains(outB.String(), "waiting for a call") {
		select {
		case <-ctx.Done():
			t.Fatal("bob never waited for the call")
		case <-time.After(10 * time.Millisecond):
		}
	}
	da, err := call.Run(ctx, alice, call.RunConfig{Peer: bob.JID(), Options: opts, Packets: 20}, &outA)
	if err != nil {
		t.Errorf("alice: %v\n%s", err, outA.String())
	}
	if err := <-errB; err != nil {
		t.Errorf("bob: %v\n%s", err, outB.String())
	}
	for who, out := range map[string]string{"alice": outA.String(), "bob": outB.String()} {
		t.Logf("%s:\n%s", who, out)
		for _, want := range []string{
			": connected\n", "  media       DTLS-SRTP SRTP_", "  route       relayed: relay 127.0.0.1:",
			" via turn:" + turn.UDPAddr, "  signalling  TLS 1.", "  audio       sent 20 probe packets, received ",
			"verdict: Encrypted end to end (DTLS-SRTP ", "; relayed via turn:",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%s's screen lacks %q", who, want)
			}
		}
		for _, s := range svcs {
			if s.Password != "" && strings.Contains(out, s.Password) {
				t.Errorf("%s's screen shows a TURN password", who)
			}
		}
		if strings.Contains(out, turn.Secret) {
			t.Errorf("%s's screen shows coturn's secret", who)
		}
	}
	if !da.Relayed || !da.Encrypted {
		t.Errorf("alice's diagnostics: %+v", da)
	}
}
