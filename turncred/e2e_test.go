package turncred_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/extdisco"
	"github.com/clinkme/clinkd/internal/turnprobe"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
	"github.com/clinkme/clinkd/turncred"
)

const lifetime = 10 * time.Minute

func services(c *lab.Coturn) []string {
	return []string{
		"stun:" + c.UDPAddr,
		"turn:" + c.UDPAddr + "?transport=udp",
		"turn:" + c.TCPAddr + "?transport=tcp",
		"turns:" + c.TLSAddr + "?transport=tcp",
	}
}

// startClinkd runs clinkd on srv with the shared coturn's services and
// secret; tune adjusts the config further.
func startClinkd(t *testing.T, srv *lab.XMPPServer, tune func(*daemon.Config)) *daemon.Daemon {
	t.Helper()
	turn := labtest.Coturn(t)
	return clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.TURN.Services = services(turn)
		c.TURN.Secret = turn.Secret
		c.TURN.Lifetime = lifetime
		if tune != nil {
			tune(c)
		}
	})
}

// byType returns the answer's service of typ and transport.
func byType(t *testing.T, svcs []extdisco.Service, typ, transport string) extdisco.Service {
	t.Helper()
	for _, s := range svcs {
		if s.Type == typ && s.Transport == transport {
			return s
		}
	}
	t.Fatalf("no %s/%s service in %+v", typ, transport, svcs)
	return extdisco.Service{}
}

func addr(s extdisco.Service) string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// TestCredentialsAllocate proves, on each real server, that the TURN REST
// credentials in clinkd's XEP-0215 answer to a real device have the issued
// form (username EXPIRY:bare-jid, EXPIRY the answer's expires, the
// configured lifetime ahead) and that coturn grants them a relay that
// carries datagrams both ways, over UDP, TCP and TLS with pion's TURN
// client, and over UDP and TCP with coturn's own turnutils_uclient.
func TestCredentialsAllocate(t *testing.T) {
	t.Parallel()
	turn := labtest.Coturn(t)
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d := startClinkd(t, srv, nil)
			dev := clinkdtest.NewDevice(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			before := time.Now()
			svcs, err := dev.ExternalServices(ctx, d.Component().Domain())
			if err != nil {
				t.Fatalf("XEP-0215 services: %v", err)
			}
			if len(svcs) != 4 {
				t.Fatalf("services = %+v, want stun, turn/udp, turn/tcp, turns", svcs)
			}
			stunSvc := byType(t, svcs, "stun", "udp")
			if stunSvc.Username != "" || stunSvc.Password != "" || stunSvc.Expires != nil {
				t.Errorf("stun service carries credentials: %+v", stunSvc)
			}
			if _, err := turnprobe.Binding(ctx, addr(stunSvc)); err != nil {
				t.Errorf("STUN binding: %v", err)
			}
			bare := dev.JID().Bare().String()
			for _, s := range svcs[1:] {
				expiry, user, ok := strings.Cut(s.Username, ":")
				exp, err := strconv.ParseInt(expiry, 10, 64)
				if !ok || err != nil || user != bare {
					t.Errorf("%s username %q, want EXPIRY:%s", s.Type, s.Username, bare)
				}
				if s.Expires == nil || s.Expires.Unix() != exp || !s.Restricted {
					t.Errorf("%s: expires %v, restricted %v; want %d and true", s.Type, s.Expires, s.Restricted, exp)
				} else if ahead := s.Expires.Sub(before); ahead < lifetime-time.Minute || ahead > lifetime+time.Minute {
					t.Errorf("%s: expires %v ahead, want about %v", s.Type, ahead, lifetime)
				}
				if s.Password == "" {
					t.Errorf("%s: no password", s.Type)
				}
			}
			tlsCfg := &tls.Config{RootCAs: labtest.CA(t).Pool, ServerName: turn.Realm}
			for _, tc := range []struct{ typ, transport, via string }{
				{"turn", "udp", "udp"}, {"turn", "tcp", "tcp"}, {"turns", "tcp", "tls"},
			} {
				s := byType(t, svcs, tc.typ, tc.transport)
				if err := relayBothWays(ctx, tc.via, addr(s), tlsCfg, s.Username, s.Password); err != nil {
					t.Errorf("pion TURN over %s with XEP-0215 credentials: %v", tc.via, err)
				}
			}
			udp := byType(t, svcs, "turn", "udp")
			for _, extra := range [][]string{nil, {"-t"}} {
				if out, err := uclient(ctx, udp.Port, udp.Username, udp.Password, extra...); err != nil {
					t.Errorf("turnutils_uclient %v -u %s -w (password): %v\n%s\n%s", extra, udp.Username, err, out, turn.LogTail())
				}
			}
		})
	}
}

// relayBothWays allocates a relay and checks that a datagram goes from the
// relay to a peer on loopback and back.
func relayBothWays(ctx context.Context, via, server string, tlsCfg *tls.Config, user, pass string) error {
	a, err := turnprobe.Allocate(ctx, via, server, tlsCfg, user, pass)
	if err != nil {
		return err
	}
	defer a.Close()
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer peer.Close()
	dl, _ := ctx.Deadline()
	peer.SetDeadline(dl)
	a.Relay.SetDeadline(dl)
	if _, err := a.Relay.WriteTo([]byte("to the peer"), peer.LocalAddr()); err != nil {
		return fmt.Errorf("relay to peer: %w", err)
	}
	buf := make([]byte, 100)
	n, from, err := peer.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "to the peer" {
		return fmt.Errorf("peer read = %q, %v", buf[:n], err)
	}
	if from.String() != a.RelayedAddr().String() {
		return fmt.Errorf("peer got it from %s, want the relayed address %s", from, a.RelayedAddr())
	}
	// More than 4 bytes: pion's stream framing (turn/v5 STUNConn) waits for
	// a ninth byte before it parses a frame, so an 8-byte ChannelData frame
	// over TCP or TLS would sit unread. Media packets are never that small.
	if _, err := peer.WriteTo([]byte("back from the peer"), from); err != nil {
		return err
	}
	n, _, err = a.Relay.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "back from the peer" {
		return fmt.Errorf("relay read = %q, %v", buf[:n], err)
	}
	return nil
}

// uclient runs coturn's own client: one allocation, one message to a
// second client through the relay (-y), with a long-term username and
// password instead of the shared secret; -v shows the exchange.
func uclient(ctx context.Context, port int, user, pass string, extra ...string) ([]byte, error) {
	args := append([]string{"-v", "-y", "-n", "1", "-m", "1", "-l", "100", "-p", strconv.Itoa(port), "-u", user, "-w", pass}, extra...)
	args = append(args, "127.0.0.1")
	return exec.CommandContext(ctx, "turnutils_uclient", args...).CombinedOutput()
}

// TestBadCredentialsRefused proves coturn refuses credentials that are
// expired (issued with a clock 10 minutes in the past and a 5-minute
// lifetime) or tampered with (one byte of the password flipped; the
// expiry pushed a day later, which a thief would do), with pion's client
// and with turnutils_uclient, and that the untampered credential of the
// same user works at the same time.
func TestBadCredentialsRefused(t *testing.T) {
	t.Parallel()
	turn := labtest.Coturn(t)
	secret := []byte(turn.Secret)
	const user = "mallory@lab.localhost"

	// Expired: a real turncred.Service whose clock is 10 minutes behind.
	svc, err := turncred.New(turncred.Config{
		Secret: secret, Lifetime: 5 * time.Minute, LocalDomain: "lab.localhost",
		Services: []string{"turn:" + turn.UDPAddr},
		Now:      func() time.Time { return time.Now().Add(-10 * time.Minute) },
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	expUser, expPass, _ := svc.Issue(user)
	goodUser, goodPass := turncred.Credential(secret, user, time.Now().Add(time.Hour))
	flipped := []byte(goodPass)
	flipped[3] ^= 0x01
	exp, _, _ := strings.Cut(goodUser, ":")
	n, _ := strconv.ParseInt(exp, 10, 64)
	later := strconv.FormatInt(n+86400, 10) + ":" + user

	_, port, _ := net.SplitHostPort(turn.UDPAddr)
	p, _ := strconv.Atoi(port)
	for _, tc := range []struct {
		name, user, pass string
		ok               bool
	}{
		{"good", goodUser, goodPass, true},
		{"expired", expUser, expPass, false},
		{"tampered-password", goodUser, string(flipped), false},
		{"tampered-expiry", later, goodPass, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			a, err := turnprobe.Allocate(ctx, "udp", turn.UDPAddr, nil, tc.user, tc.pass)
			if err == nil {
				a.Close()
			}
			// Refused means refused by coturn: 401, not a timeout.
			if tc.ok && err != nil || !tc.ok && (err == nil || !strings.Contains(err.Error(), "401")) {
				t.Errorf("pion Allocate(%s) = %v, want ok=%v (refusals with 401)", tc.name, err, tc.ok)
			}
			out, err := uclient(ctx, p, tc.user, tc.pass)
			if ctx.Err() != nil {
				t.Fatalf("turnutils_uclient %s: %v", tc.name, ctx.Err())
			}
			// uclient prints no error code; a refusal is an answered
			// Allocate it could not complete, not a silence.
			refused := err != nil && strings.Contains(string(out), "allocate response received") &&
				strings.Contains(string(out), "Cannot complete Allocation")
			if tc.ok && err != nil || !tc.ok && !refused {
				t.Errorf("turnutils_uclient %s = %v, want ok=%v\n%s", tc.name, err, tc.ok, out)
			}
		})
	}
}

// TestRelayRefusesPrivatePeers proves the denied-peer-ip lines work in the
// running coturn: with valid credentials, a permission for a private,
// link-local or other loopback address is refused, and only the lab's own
// allowance (127.0.0.1) is granted.
func TestRelayRefusesPrivatePeers(t *testing.T) {
	t.Parallel()
	turn := labtest.Coturn(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	user, pass := turn.Credentials("peers@lab.localhost", time.Hour)
	a, err := turnprobe.Allocate(ctx, "udp", turn.UDPAddr, nil, user, pass)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, tc := range []struct {
		ip string
		ok bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.2", false},
		{"10.0.0.1", false},
		{"172.16.5.4", false},
		{"192.168.1.1", false},
		{"169.254.169.254", false},
		{"100.64.0.1", false},
		{"0.0.0.1", false},
		{"224.0.0.1", false},
		{"::1", false},
		{"fd00::1", false},
		// Public addresses, where real peers are, must stay reachable
		// (an IPv6 peer is a family mismatch on this IPv4 relay).
		{"8.8.8.8", true},
		{"203.0.114.1", true},
	} {
		err := a.Permit(&net.UDPAddr{IP: net.ParseIP(tc.ip), Port: 9})
		if (err == nil) != tc.ok {
			t.Errorf("CreatePermission(%s) = %v, want ok=%v", tc.ip, err, tc.ok)
		}
	}
}

// TestOnlyLocalUsers proves that a device whose domain is not clinkd's
// local domain gets forbidden (clinkd here serves "elsewhere.localhost"),
// and that the rate limit answers resource-constraint past the burst.
func TestOnlyLocalUsers(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			other := startClinkd(t, srv, func(c *daemon.Config) { c.Link.ServerDomain = "elsewhere.localhost" })
			dev := clinkdtest.NewDevice(t, srv)
			_, err := dev.ExternalServices(ctx, other.Component().Domain())
			if !errors.Is(err, stanza.Error{Condition: stanza.Forbidden}) {
				t.Errorf("services for a user of another domain = %v, want forbidden", err)
			}
			err = dev.IQ(ctx, stanza.GetIQ, other.Component().Domain(), extdisco.Credentials{Services: []extdisco.Service{{Type: "turn", Host: "127.0.0.1"}}}, nil)
			if !errors.Is(err, stanza.Error{Condition: stanza.Forbidden}) {
				t.Errorf("credentials for a user of another domain = %v, want forbidden", err)
			}

			limited := startClinkd(t, srv, func(c *daemon.Config) { c.TURN.Burst = 2; c.TURN.PerMinute = 1 })
			var errs []error
			for range 3 {
				_, err := dev.ExternalServices(ctx, limited.Component().Domain())
				errs = append(errs, err)
			}
			if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], stanza.Error{Condition: stanza.ResourceConstraint}) {
				t.Errorf("three requests with burst 2 = %v, want ok, ok, resource-constraint", errs)
			}
		})
	}
}
