package call

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/pion/webrtc/v4"
	"mellium.im/xmpp/jid"
)

// Diagnostics is what the call screen shows: how the call is protected
// and which way its packets go.
type Diagnostics struct {
	Peer      jid.JID
	Connected bool // ICE and DTLS completed and the call has not ended

	// Media security, from the DTLS handshake of this call.
	SRTPProfile string // e.g. SRTP_AEAD_AES_256_GCM; empty before DTLS completes
	DTLSVersion string // DTLS 1.2
	DTLSCipher  string // the DTLS cipher suite that derived the SRTP keys
	// Encrypted is true when media is protected by an SRTP profile that
	// encrypts (never a NULL one) with keys from this call's DTLS.
	Encrypted bool
	// LocalFingerprint and PeerFingerprint are the SHA-256 fingerprints of
	// the two DTLS certificates, as signalled; the peer's certificate was
	// checked against PeerFingerprint.
	LocalFingerprint, PeerFingerprint string
	// Code is a short code derived from both fingerprints. It is the same
	// on both devices unless something between them (the XMPP servers
	// included) replaced a fingerprint: users who want certainty compare
	// it aloud.
	Code string

	// Route.
	Relayed    bool      // some hop goes through a TURN relay
	Local      Candidate // this device's end of the selected pair
	Remote     Candidate // the peer's end
	TURNServer string    // the TURN server this device relays through (a turn: or turns: URI); empty when it does not
	// PeerRelayed is true when the peer relays through its own TURN server.
	PeerRelayed bool

	// SignallingTLS is the TLS version of this device's link to its XMPP
	// server, which carried the signalling (fingerprints included).
	SignallingTLS string

	BytesSent, BytesReceived uint64 // on the selected candidate pair

	// Verdict is the one-line summary, for people.
	Verdict string
}

// Candidate is one end of the selected candidate pair.
type Candidate struct {
	Type    string // host, srflx, prflx or relay
	Address string // IP:port
	// RelayProtocol is how this device reaches its TURN server (udp, tcp
	// or tls) for a local relay candidate.
	RelayProtocol string
}

func (c Candidate) String() string {
	if c.Type == "" {
		return "none"
	}
	return c.Type + " " + c.Address
}

// Diagnostics reports the call's security and route now.
func (c *Call) Diagnostics() (Diagnostics, error) {
	d := Diagnostics{Peer: c.peer}
	d.SignallingTLS = tlsVersion(c.p.dev.TLSState().Version)
	c.mu.Lock()
	pc := c.pc
	d.LocalFingerprint, d.PeerFingerprint = c.localFingerprint, c.remoteFingerprint
	c.mu.Unlock()
	if pc == nil {
		return d, errors.New("call: not answered yet")
	}
	select {
	case <-c.connected:
		d.Connected = c.Err() == nil && pc.ConnectionState() == webrtc.PeerConnectionStateConnected
	default:
	}
	d.Code = code(d.LocalFingerprint, d.PeerFingerprint)

	c.closeMu.Lock()
	report := pc.GetStats()
	c.closeMu.Unlock()
	for _, s := range report {
		if ts, ok := s.(webrtc.TransportStats); ok && ts.SRTPCipher != "" {
			d.SRTPProfile = ts.SRTPCipher
			d.DTLSCipher = ts.DTLSCipher
			if ts.TLSVersion == "FEFD" {
				d.DTLSVersion = "DTLS 1.2"
			} else if ts.TLSVersion != "" {
				d.DTLSVersion = "DTLS version 0x" + ts.TLSVersion
			}
		}
	}
	d.Encrypted = d.Connected && slices.Contains(encryptingProfileNames, d.SRTPProfile)

	senders := pc.GetSenders()
	if len(senders) > 0 && senders[0].Transport() != nil {
		it := senders[0].Transport().ICETransport()
		if pair, err := it.GetSelectedCandidatePair(); err == nil && pair != nil {
			d.Local = Candidate{Type: pair.Local.Typ.String(), Address: net.JoinHostPort(pair.Local.Address, fmt.Sprint(pair.Local.Port))}
			d.Remote = Candidate{Type: pair.Remote.Typ.String(), Address: net.JoinHostPort(pair.Remote.Address, fmt.Sprint(pair.Remote.Port))}
			// How this device reaches its relay is only in the stats of
			// its local candidates; the relayed address identifies ours.
			for _, s := range report {
				if cs, ok := s.(webrtc.ICECandidateStats); ok && cs.Type == webrtc.StatsTypeLocalCandidate &&
					cs.IP == pair.Local.Address && cs.Port == int32(pair.Local.Port) && cs.CandidateType == pair.Local.Typ {
					d.Local.RelayProtocol = cs.RelayProtocol
				}
			}
		}
		if ps, ok := it.GetSelectedCandidatePairStats(); ok {
			d.BytesSent, d.BytesReceived = ps.BytesSent, ps.BytesReceived
		}
	}
	d.PeerRelayed = d.Remote.Type == "relay"
	d.Relayed = d.Local.Type == "relay" || d.PeerRelayed
	if d.Local.Type == "relay" {
		d.TURNServer = turnServer(c.servers, d.Local)
	}
	d.Verdict = d.verdict()
	return d, nil
}

var encryptingProfileNames = []string{
	"SRTP_AEAD_AES_256_GCM", "SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_HMAC_SHA1_80",
}

// verdict is the plain summary the call screen shows.
func (d Diagnostics) verdict() string {
	var b strings.Builder
	switch {
	case !d.Connected:
		b.WriteString("Not connected: no media flows")
	case !d.Encrypted:
		fmt.Fprintf(&b, "NOT ENCRYPTED: media protection %q", d.SRTPProfile)
	default:
		fmt.Fprintf(&b, "Encrypted end to end (DTLS-SRTP %s, keys unique to this call)", d.SRTPProfile)
	}
	if d.Connected {
		switch {
		case d.Local.Type == "relay" && d.TURNServer != "":
			fmt.Fprintf(&b, "; relayed via %s", d.TURNServer)
		case d.Local.Type == "relay":
			fmt.Fprintf(&b, "; relayed via a TURN server over %s", d.Local.RelayProtocol)
		case d.PeerRelayed:
			b.WriteString("; relayed via the peer's TURN server")
		default:
			b.WriteString("; direct")
		}
		if d.Relayed {
			b.WriteString(" (the relay sees only encrypted packets)")
		}
	}
	if d.SignallingTLS != "" {
		fmt.Fprintf(&b, "; signalling over %s", d.SignallingTLS)
	} else {
		b.WriteString("; signalling NOT over TLS")
	}
	if d.Code != "" {
		fmt.Fprintf(&b, "; call code %s", d.Code)
	}
	return b.String()
}

// code derives the comparison code from the two fingerprints, in an order
// both devices agree on.
func code(a, b string) string {
	if a == "" || b == "" {
		return ""
	}
	a, b = strings.ToUpper(a), strings.ToUpper(b)
	if a > b {
		a, b = b, a
	}
	h := sha256.Sum256([]byte("clinkme call code v0\n" + a + "\n" + b))
	// Four groups of four digits: about 53 bits, enough to make a
	// substituted fingerprint show.
	var out []string
	for i := 0; i < 4; i++ {
		n := (uint32(h[3*i])<<16 | uint32(h[3*i+1])<<8 | uint32(h[3*i+2])) % 10000
		out = append(out, fmt.Sprintf("%04d", n))
	}
	return strings.Join(out, " ")
}

// turnServer names the configured TURN server that made the local relay
// candidate: the one whose transport matches how the candidate reaches its
// relay, preferring one whose address is the relayed address's IP.
func turnServer(servers []webrtc.ICEServer, local Candidate) string {
	relayIP, _, _ := net.SplitHostPort(local.Address)
	var match, sameIP []string
	for _, s := range servers {
		for _, u := range s.URLs {
			scheme, rest, ok := strings.Cut(u, ":")
			if !ok || scheme != "turn" && scheme != "turns" {
				continue
			}
			hostport, query, _ := strings.Cut(rest, "?")
			transport := "udp"
			if q, err := url.ParseQuery(query); err == nil && q.Get("transport") != "" {
				transport = q.Get("transport")
			}
			proto := transport
			if scheme == "turns" {
				proto = "tls"
			}
			if local.RelayProtocol != "" && proto != local.RelayProtocol {
				continue
			}
			match = append(match, u)
			host, _, err := net.SplitHostPort(hostport)
			if err != nil {
				host = hostport
			}
			if strings.Trim(host, "[]") == relayIP {
				sameIP = append(sameIP, u)
			}
		}
	}
	switch {
	case len(sameIP) == 1:
		return sameIP[0]
	case len(match) == 1:
		return match[0]
	case len(match) > 1:
		return "one of " + strings.Join(match, ", ")
	}
	return ""
}

func tlsVersion(v uint16) string {
	if v == 0 {
		return ""
	}
	return tls.VersionName(v)
}
