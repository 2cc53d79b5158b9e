// Package turnprobe checks STUN and TURN servers the way a device uses
// them: a STUN Binding over UDP, and a TURN allocation (RFC 8656) over
// UDP, TCP or TLS with TURN REST credentials, using pion's TURN client,
// the same implementation the calls use. The TURN end-to-end tests, the
// benchmarks and `clinkd doctor` share it.
package turnprobe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
)

// Binding sends one STUN Binding request to addr over UDP and returns the
// address the server saw (XOR-MAPPED-ADDRESS). It retransmits until ctx
// ends, as UDP may lose a datagram.
func Binding(ctx context.Context, addr string) (*net.UDPAddr, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("turnprobe: binding %s: %w", addr, err)
	}
	defer conn.Close()
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	wait := 100 * time.Millisecond
	for {
		if _, err := conn.Write(req.Raw); err != nil {
			return nil, fmt.Errorf("turnprobe: binding %s: %w", addr, err)
		}
		deadline := time.Now().Add(wait)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		conn.SetReadDeadline(deadline)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				break
			}
			var res stun.Message
			if stun.Decode(buf[:n], &res) != nil || res.TransactionID != req.TransactionID {
				continue
			}
			if res.Type != stun.BindingSuccess {
				return nil, fmt.Errorf("turnprobe: binding %s: answered %s", addr, res.Type)
			}
			var xor stun.XORMappedAddress
			if err := xor.GetFrom(&res); err != nil {
				return nil, fmt.Errorf("turnprobe: binding %s: %w", addr, err)
			}
			return &net.UDPAddr{IP: xor.IP, Port: xor.Port}, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("turnprobe: binding %s: no answer: %w", addr, ctx.Err())
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// An Allocation is a relayed transport address on a TURN server.
type Allocation struct {
	// Relay sends to and receives from peers through the relayed
	// address (its LocalAddr).
	Relay  net.PacketConn
	client *turn.Client
	conn   net.PacketConn // closed by Close unless the caller owns it
}

// Allocate connects to the TURN server at addr over transport ("udp",
// "tcp" or "tls"; tlsConfig verifies the server for "tls"), authenticates
// with username and password and allocates a UDP relay.
//
// Over UDP a new socket may get the port of one whose allocation coturn
// has not freed yet (it frees a released allocation about a second
// later): the server then answers the first request with 437 Allocation
// Mismatch, which pion reports as a missing attribute. RFC 8656 §7.2 says
// to try again from another 5-tuple, so Allocate does, twice, opening the
// new socket before closing the old one; so it does too when a request
// over UDP went unanswered.
func Allocate(ctx context.Context, transport, addr string, tlsConfig *tls.Config, username, password string) (*Allocation, error) {
	var stale []net.PacketConn
	defer func() {
		for _, c := range stale {
			c.Close()
		}
	}()
	for attempt := 0; ; attempt++ {
		conn, err := dial(ctx, transport, addr, tlsConfig)
		if err != nil {
			return nil, fmt.Errorf("turnprobe: %s %s: %w", transport, addr, err)
		}
		a, err := AllocateOn(ctx, conn, addr, username, password)
		if err == nil {
			a.conn = conn
			return a, nil
		}
		stale = append(stale, conn)
		if transport != "udp" || attempt == 2 || !(errors.Is(err, stun.ErrAttributeNotFound) || unanswered(err)) || ctx.Err() != nil {
			return nil, fmt.Errorf("turnprobe: allocate on %s %s: %w", transport, addr, err)
		}
	}
}

// unanswered reports whether pion gave up on a UDP transaction after its
// seven transmissions (about 8 s), when RFC 8489 §6.2.1 deems the
// transaction failed. coturn on a loaded machine has let that pass
// without an answer (seen in a CI run at load 10); a new transaction
// from a new socket, within ctx, is the client's to try. pion does not
// export the error.
func unanswered(err error) bool {
	return strings.Contains(err.Error(), "all retransmissions failed")
}

// AllocateOn allocates a UDP relay on the TURN server at addr through
// conn, which the caller owns and closes after Close. A benchmark uses it
// to keep its sockets open: coturn frees a released allocation about a
// second later, and a new socket on the same port meanwhile would be the
// same 5-tuple (437 Allocation Mismatch).
func AllocateOn(ctx context.Context, conn net.PacketConn, addr, username, password string) (*Allocation, error) {
	cl, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr,
		TURNServerAddr: addr,
		Username:       username,
		Password:       password,
		Conn:           conn,
		LoggerFactory:  quiet{},
	})
	if err != nil {
		return nil, fmt.Errorf("turnprobe: %w", err)
	}
	if err := cl.Listen(); err != nil {
		cl.Close()
		return nil, fmt.Errorf("turnprobe: %w", err)
	}
	relay, err := cl.AllocateWithContext(ctx)
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("turnprobe: allocate on %s: %w", addr, err)
	}
	return &Allocation{Relay: relay, client: cl}, nil
}

func dial(ctx context.Context, transport, addr string, tlsConfig *tls.Config) (net.PacketConn, error) {
	switch transport {
	case "udp":
		var lc net.ListenConfig
		return lc.ListenPacket(ctx, "udp4", "0.0.0.0:0")
	case "tcp":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return turn.NewSTUNConn(c), nil
	case "tls":
		if tlsConfig == nil {
			return nil, errors.New("no TLS config")
		}
		d := tls.Dialer{Config: tlsConfig}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return turn.NewSTUNConn(c), nil
	}
	return nil, fmt.Errorf("transport %q: want udp, tcp or tls", transport)
}

// RelayedAddr is the allocation's address on the TURN server.
func (a *Allocation) RelayedAddr() net.Addr { return a.Relay.LocalAddr() }

// Permit asks the server to let the peers send through the relay
// (CreatePermission). The server refuses peers its policy denies.
func (a *Allocation) Permit(peers ...net.Addr) error {
	if err := a.client.CreatePermission(peers...); err != nil {
		return fmt.Errorf("turnprobe: permission for %v: %w", peers, err)
	}
	return nil
}

// Close releases the allocation (a Refresh with lifetime 0) and the
// connection to the server.
func (a *Allocation) Close() error {
	err := a.Relay.Close()
	a.client.Close()
	if a.conn != nil {
		a.conn.Close()
	}
	return err
}

// quiet discards pion's log: it would print credentials' usernames and
// transaction details on stderr.
type quiet struct{}

func (quiet) NewLogger(string) logging.LeveledLogger {
	return logging.NewDefaultLeveledLoggerForScope("", logging.LogLevelDisabled, discard{})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
