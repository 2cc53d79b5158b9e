package calltest

import (
	"bytes"
	"net"
	"sync"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
)

// tap is a pion network that records every datagram and stream write a
// device's WebRTC stack sends, and can drop what goes anywhere but the
// allowed destinations (to make the direct path fail).
type tap struct {
	*stdnet.Net
	allow func(dst net.Addr) bool // nil: everything

	mu   sync.Mutex
	sent []packet
}

type packet struct {
	dst     string
	data    []byte
	dropped bool
}

func newTap(allow func(net.Addr) bool) *tap {
	n, err := stdnet.NewNet()
	if err != nil {
		panic(err)
	}
	return &tap{Net: n, allow: allow}
}

// record keeps a copy of b and reports whether it may go out.
func (t *tap) record(dst net.Addr, b []byte) bool {
	ok := t.allow == nil || dst == nil || t.allow(dst)
	d := ""
	if dst != nil {
		d = dst.String()
	}
	t.mu.Lock()
	t.sent = append(t.sent, packet{dst: d, data: bytes.Clone(b), dropped: !ok})
	t.mu.Unlock()
	return ok
}

func (t *tap) packets() []packet {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]packet(nil), t.sent...)
}

func (t *tap) ListenPacket(network, address string) (net.PacketConn, error) {
	c, err := t.Net.ListenPacket(network, address)
	if err != nil {
		return nil, err
	}
	return &tapPacketConn{PacketConn: c, t: t}, nil
}

func (t *tap) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	c, err := t.Net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	return &tapUDPConn{UDPConn: c, t: t}, nil
}

func (t *tap) DialUDP(network string, laddr, raddr *net.UDPAddr) (transport.UDPConn, error) {
	c, err := t.Net.DialUDP(network, laddr, raddr)
	if err != nil {
		return nil, err
	}
	return &tapUDPConn{UDPConn: c, t: t}, nil
}

func (t *tap) DialTCP(network string, laddr, raddr *net.TCPAddr) (transport.TCPConn, error) {
	c, err := t.Net.DialTCP(network, laddr, raddr)
	if err != nil {
		return nil, err
	}
	return &tapTCPConn{TCPConn: c, t: t}, nil
}

func (t *tap) Dial(network, address string) (net.Conn, error) {
	c, err := t.Net.Dial(network, address)
	if err != nil {
		return nil, err
	}
	return &tapConn{Conn: c, t: t}, nil
}

type tapPacketConn struct {
	net.PacketConn
	t *tap
}

func (c *tapPacketConn) WriteTo(b []byte, dst net.Addr) (int, error) {
	if !c.t.record(dst, b) {
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, dst)
}

type tapUDPConn struct {
	transport.UDPConn
	t *tap
}

func (c *tapUDPConn) Write(b []byte) (int, error) {
	if !c.t.record(c.RemoteAddr(), b) {
		return len(b), nil
	}
	return c.UDPConn.Write(b)
}

func (c *tapUDPConn) WriteTo(b []byte, dst net.Addr) (int, error) {
	if !c.t.record(dst, b) {
		return len(b), nil
	}
	return c.UDPConn.WriteTo(b, dst)
}

func (c *tapUDPConn) WriteToUDP(b []byte, dst *net.UDPAddr) (int, error) {
	if !c.t.record(dst, b) {
		return len(b), nil
	}
	return c.UDPConn.WriteToUDP(b, dst)
}

func (c *tapUDPConn) WriteMsgUDP(b, oob []byte, dst *net.UDPAddr) (int, int, error) {
	var d net.Addr = dst
	if dst == nil {
		d = c.RemoteAddr()
	}
	if !c.t.record(d, b) {
		return len(b), len(oob), nil
	}
	return c.UDPConn.WriteMsgUDP(b, oob, dst)
}

type tapTCPConn struct {
	transport.TCPConn
	t *tap
}

func (c *tapTCPConn) Write(b []byte) (int, error) {
	c.t.record(c.RemoteAddr(), b)
	return c.TCPConn.Write(b)
}

type tapConn struct {
	net.Conn
	t *tap
}

func (c *tapConn) Write(b []byte) (int, error) {
	c.t.record(c.RemoteAddr(), b)
	return c.Conn.Write(b)
}
