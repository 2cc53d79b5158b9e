package clinkdtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// A Proxy forwards TCP connections to a target, and can cut them the way
// networks do: abruptly (RST), or silently (bytes stop flowing but nobody
// closes anything).
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	pairs []*pipePair
	down  bool // new connections are reset at once (Down)
	wg    sync.WaitGroup
}

type pipePair struct {
	a, b    net.Conn
	mu      sync.Mutex
	stalled bool
	resume  chan struct{}
}

// NewProxy listens on a free loopback port and forwards to target until
// the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Addr is where to connect.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	for {
		a, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			if tc, ok := a.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			a.Close()
			continue
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			a.Close()
			continue
		}
		pp := &pipePair{a: a, b: b, resume: make(chan struct{})}
		p.mu.Lock()
		p.pairs = append(p.pairs, pp)
		p.mu.Unlock()
		p.wg.Go(func() { pp.copy(a, b) })
		p.wg.Go(func() { pp.copy(b, a) })
	}
}

func (pp *pipePair) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			pp.mu.Lock()
			stalled, resume := pp.stalled, pp.resume
			pp.mu.Unlock()
			if stalled {
				<-resume // the bytes are held back, as by a dead middlebox
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}

// Cut resets every current connection at once, as a crashed host or a
// firewall does; new connections are still forwarded.
func (p *Proxy) Cut() {
	p.mu.Lock()
	pairs := p.pairs
	p.pairs = nil
	p.mu.Unlock()
	for _, pp := range pairs {
		for _, c := range []net.Conn{pp.a, pp.b} {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // close with RST, not FIN
			}
			c.Close()
		}
		pp.mu.Lock()
		if pp.stalled {
			close(pp.resume)
			pp.stalled = false
		}
		pp.mu.Unlock()
	}
}

// Stall stops forwarding on every current connection without closing
// anything: the peer simply goes silent. New connections work.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pp := range p.pairs {
		pp.mu.Lock()
		pp.stalled = true
		pp.mu.Unlock()
	}
}

// Down cuts the link the way an outage does: every current connection is
// reset (Cut), and every new one is reset at once, until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	p.down = true
	p.mu.Unlock()
	p.Cut()
}

// Up ends what Down began: new connections are forwarded again.
func (p *Proxy) Up() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}
