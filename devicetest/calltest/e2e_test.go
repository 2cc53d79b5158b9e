package calltest

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/call"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// turnServices is what clinkd announces for the shared coturn: STUN, TURN
// over UDP and TCP, and TURN over TLS.
func turnServices(c *lab.Coturn) []string {
	return []string{
		"stun:" + c.UDPAddr,
		"turn:" + c.UDPAddr + "?transport=udp",
		"turn:" + c.TCPAddr + "?transport=tcp",
		"turns:" + c.TLSAddr + "?transport=tcp",
	}
}

// startClinkd runs clinkd on srv handing out credentials for the shared
// coturn.
func startClinkd(t *testing.T, srv *lab.XMPPServer) *daemon.Daemon {
	t.Helper()
	turn := labtest.Coturn(t)
	return clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.TURN.Services = turnServices(turn)
		c.TURN.Secret = turn.Secret
	})
}

// TestCall holds calls between two SDK devices on each real server, with
// STUN and TURN from clinkd's XEP-0215 answer and the real coturn:
//
//   - direct: ICE picks the direct loopback path; the diagnostics say
//     direct, and the media datagrams go straight to the peer.
//   - relay-only: both devices use ICETransportPolicyRelay; the
//     diagnostics say relayed and name the TURN server, and every media
//     datagram goes to coturn.
//   - fallback: ICE may use anything, but the network drops whatever does
//     not go to coturn (a firewall between the devices); ICE falls back to
//     the relay by itself.
//
// Each time audio flows both ways, the probe marker in every packet's
// plaintext payload never appears on the wire (the media is SRTP), and
// both devices show the same call code.
func TestCall(t *testing.T) {
	t.Parallel()
	turn := labtest.Coturn(t)
	toCoturn := func(dst net.Addr) bool { return dst.String() == turn.UDPAddr }
	tests := []struct {
		name        string
		relayOnly   bool
		allow       func(net.Addr) bool
		wantRelayed bool
	}{
		{"direct", false, nil, false},
		{"relay-only", true, nil, true},
		{"fallback", false, toCoturn, true},
	}
	for _, srv := range labtest.Servers(t) {
		for _, tt := range tests {
			t.Run(string(srv.Kind)+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				d := startClinkd(t, srv)
				alice := clinkdtest.NewDevice(t, srv)
				bob := clinkdtest.NewDevice(t, srv)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()

				taps := map[string]*tap{"alice": newTap(tt.allow), "bob": newTap(tt.allow)}
				opts := func(name string) call.Options {
					return call.Options{
						Services:  d.Component().Domain(),
						RelayOnly: tt.relayOnly,
						Loopback:  true,
						Configure: func(se *webrtc.SettingEngine) { se.SetNet(taps[name]) },
						Logger:    clinkdtest.Logger(t).With("device", name),
					}
				}
				pa := call.NewPhone(alice, opts("alice"))
				pb := call.NewPhone(bob, opts("bob"))
				t.Cleanup(func() { pa.Close(); pb.Close() })

				answered := make(chan *call.Call, 1)
				go func() {
					in, err := pb.Incoming(ctx)
					if err != nil {
						t.Errorf("bob: incoming: %v", err)
						answered <- nil
						return
					}
					if !in.Peer.Equal(alice.JID()) || len(in.Media) != 1 || in.Media[0] != "audio" {
						t.Errorf("incoming = %+v, want an audio call from %s", in, alice.JID())
					}
					c, err := in.Accept(ctx)
					if err != nil {
						t.Errorf("bob: accept: %v", err)
					}
					answered <- c
				}()
				ca, err := pa.Call(ctx, bob.JID())
				if err != nil {
					t.Fatalf("alice calls bob: %v", err)
				}
				cb := <-answered
				if cb == nil {
					t.FailNow()
				}

				// Media both ways.
				probes := make(chan call.ProbeResult, 1)
				go func() {
					r, err := cb.Probe(ctx, 30, 20*time.Millisecond)
					if err != nil {
						t.Errorf("bob probe: %v", err)
					}
					probes <- r
				}()
				ra, err := ca.Probe(ctx, 30, 20*time.Millisecond)
				if err != nil {
					t.Errorf("alice probe: %v", err)
				}
				rb := <-probes
				if ra.Sent != 30 || ra.Received == 0 || rb.Sent != 30 || rb.Received == 0 {
					t.Errorf("probe: alice %+v, bob %+v; want 30 sent and some received each way", ra, rb)
				}

				da, err := ca.Diagnostics()
				if err != nil {
					t.Fatal(err)
				}
				db, err := cb.Diagnostics()
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("alice: %s", da.Verdict)
				t.Logf("bob:   %s", db.Verdict)
				for who, dg := range map[string]call.Diagnostics{"alice": da, "bob": db} {
					checkDiagnostics(t, who, dg, tt.wantRelayed, turnServices(turn))
				}
				if da.Code == "" || da.Code != db.Code {
					t.Errorf("call codes: alice %q, bob %q; want equal", da.Code, db.Code)
				}
				if da.LocalFingerprint != db.PeerFingerprint || db.LocalFingerprint != da.PeerFingerprint {
					t.Errorf("fingerprints: alice %s/%s, bob %s/%s", da.LocalFingerprint, da.PeerFingerprint, db.LocalFingerprint, db.PeerFingerprint)
				}

				for who, tp := range taps {
					checkWire(t, who, tp, tt.wantRelayed, turn)
				}

				// Alice hangs up: Bob's call ends.
				if err := ca.Hangup(ctx); err != nil {
					t.Errorf("hang up: %v", err)
				}
				select {
				case <-cb.Done():
					if !errors.Is(cb.Err(), call.ErrEnded) {
						t.Errorf("bob's call ended with %v, want ErrEnded", cb.Err())
					}
				case <-ctx.Done():
					t.Error("bob's call did not end after alice hung up")
				}
			})
		}
	}
}

// connect has alice call bob and bob answer, and returns both calls.
func connect(t *testing.T, ctx context.Context, pa, pb *call.Phone, bob *client.Client) (ca, cb *call.Call) {
	t.Helper()
	answered := make(chan *call.Call, 1)
	go func() {
		in, err := pb.Incoming(ctx)
		if err != nil {
			t.Errorf("bob: incoming: %v", err)
			answered <- nil
			return
		}
		c, err := in.Accept(ctx)
		if err != nil {
			t.Errorf("bob: accept: %v", err)
		}
		answered <- c
	}()
	ca, err := pa.Call(ctx, bob.JID())
	if err != nil {
		t.Fatalf("alice calls bob: %v", err)
	}
	if cb = <-answered; cb == nil {
		t.FailNow()
	}
	return ca, cb
}

func checkDiagnostics(t *testing.T, who string, d call.Diagnostics, relayed bool, services []string) {
	t.Helper()
	if !d.Connected || !d.Encrypted {
		t.Errorf("%s: connected %v, encrypted %v; want both", who, d.Connected, d.Encrypted)
	}
	if !strings.HasPrefix(d.SRTPProfile, "SRTP_AEAD_AES_") && d.SRTPProfile != "SRTP_AES128_CM_HMAC_SHA1_80" {
		t.Errorf("%s: SRTP profile %q", who, d.SRTPProfile)
	}
	if d.DTLSVersion != "DTLS 1.2" || d.DTLSCipher == "" {
		t.Errorf("%s: DTLS %q %q", who, d.DTLSVersion, d.DTLSCipher)
	}
	if d.SignallingTLS != "TLS 1.3" && d.SignallingTLS != "TLS 1.2" {
		t.Errorf("%s: signalling TLS %q", who, d.SignallingTLS)
	}
	if !strings.HasPrefix(d.Verdict, "Encrypted end to end (DTLS-SRTP "+d.SRTPProfile) ||
		!strings.Contains(d.Verdict, "signalling over "+d.SignallingTLS) {
		t.Errorf("%s: verdict %q", who, d.Verdict)
	}
	if d.Relayed != relayed {
		t.Errorf("%s: relayed = %v (local %s, remote %s), want %v", who, d.Relayed, d.Local, d.Remote, relayed)
	}
	if relayed {
		if d.Local.Type != "relay" || d.TURNServer == "" {
			t.Errorf("%s: local %s via %q; want a relay candidate and its TURN server", who, d.Local, d.TURNServer)
		}
		found := false
		for _, s := range services {
			found = found || s == d.TURNServer
		}
		if !found {
			t.Errorf("%s: TURN server %q is not one clinkd announced (%v)", who, d.TURNServer, services)
		}
		if !strings.Contains(d.Verdict, "relayed via "+d.TURNServer) {
			t.Errorf("%s: verdict %q does not name the relay", who, d.Verdict)
		}
	} else {
		if d.Local.Type == "relay" || d.Remote.Type == "relay" || d.TURNServer != "" {
			t.Errorf("%s: local %s, remote %s, TURN %q; want a direct pair", who, d.Local, d.Remote, d.TURNServer)
		}
		if !strings.Contains(d.Verdict, "; direct;") {
			t.Errorf("%s: verdict %q does not say direct", who, d.Verdict)
		}
	}
}

// checkWire looks at everything a device sent: DTLS handshakes and SRTP
// packets (RFC 7983 first bytes) must be there, the probe marker, which
// every audio packet's plaintext starts with, must not. Relayed, every
// media packet goes to coturn (in ChannelData or a Send indication);
// direct, media goes straight to the peer.
func checkWire(t *testing.T, who string, tp *tap, relayed bool, turn *lab.Coturn) {
	t.Helper()
	var dtlsSeen, srtpToPeer, srtpToTURN, dropped int
	for _, p := range tp.packets() {
		if bytes.Contains(p.data, []byte(call.ProbeMarker)) {
			t.Fatalf("%s sent the probe marker in clear to %s: media is not encrypted", who, p.dst)
		}
		if p.dropped {
			dropped++
			continue
		}
		b := p.data
		toTURN := p.dst == turn.UDPAddr || p.dst == turn.TCPAddr || p.dst == turn.TLSAddr
		if toTURN {
			b = turnPayload(b)
		}
		if len(b) == 0 {
			continue
		}
		switch {
		case b[0] >= 20 && b[0] <= 63:
			dtlsSeen++
		case b[0] >= 128 && b[0] <= 191 && len(b) > 12:
			if toTURN {
				srtpToTURN++
			} else {
				srtpToPeer++
			}
		}
	}
	t.Logf("%s on the wire: %d DTLS, %d SRTP direct, %d SRTP via TURN ChannelData, %d dropped by the firewall", who, dtlsSeen, srtpToPeer, srtpToTURN, dropped)
	if dtlsSeen == 0 {
		t.Errorf("%s: no DTLS record on the wire", who)
	}
	if relayed && (srtpToPeer != 0 || srtpToTURN == 0) {
		t.Errorf("%s: relayed call sent %d SRTP packets directly and %d via coturn; want none and some", who, srtpToPeer, srtpToTURN)
	}
	if !relayed && srtpToPeer == 0 {
		t.Errorf("%s: direct call sent no SRTP packet directly", who)
	}
}

// turnPayload returns the datagram a TURN message to the server carries for
// the peer: the payload of ChannelData (RFC 8656 §12.4) or the DATA
// attribute of a Send indication (§11.4); else the message itself.
func turnPayload(b []byte) []byte {
	if len(b) > 4 && b[0] >= 0x40 && b[0] <= 0x4f {
		return b[4:]
	}
	if len(b) < 20 || b[0] != 0x00 || b[1] != 0x16 {
		return b
	}
	for a := b[20:]; len(a) >= 4; {
		typ, n := int(a[0])<<8|int(a[1]), int(a[2])<<8|int(a[3])
		if len(a) < 4+n {
			break
		}
		if typ == 0x0013 {
			return a[4 : 4+n]
		}
		a = a[4+(n+3)/4*4:]
	}
	return b
}
