package call

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/clinkme/clinkd/extensions/extdisco"
)

// ICEServers turns an XEP-0215 answer into WebRTC ICE servers: stun, turn
// (UDP or TCP) and turns entries, TURN ones with their credentials. Entries
// it cannot use are left out, and the error says why: an unknown type, a
// host that is neither an IP address nor a DNS name, a bad port or
// transport, a TURN entry without credentials or with expired ones (now is
// the clock to compare expiries with).
func ICEServers(svcs []extdisco.Service, now time.Time) ([]webrtc.ICEServer, error) {
	var out []webrtc.ICEServer
	var errs []error
	for _, s := range svcs {
		srv, err := iceServer(s, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, srv)
	}
	return out, errors.Join(errs...)
}

func iceServer(s extdisco.Service, now time.Time) (webrtc.ICEServer, error) {
	var srv webrtc.ICEServer
	host, ok := hostLiteral(s.Host)
	if !ok {
		return srv, fmt.Errorf("call: %s service: host %q is neither an IP address nor a DNS name", s.Type, s.Host)
	}
	transport := strings.ToLower(s.Transport)
	port := s.Port
	switch s.Type {
	case "stun":
		if transport != "" && transport != "udp" {
			return srv, fmt.Errorf("call: stun service %s: only UDP is used", s.Host)
		}
		if port == 0 {
			port = 3478
		}
	case "turn":
		if transport == "" {
			transport = "udp"
		}
		if port == 0 {
			port = 3478
		}
	case "turns":
		if transport == "" {
			transport = "tcp"
		}
		if port == 0 {
			port = 5349
		}
		if transport != "tcp" {
			return srv, fmt.Errorf("call: turns service %s: transport %q, turns runs over TCP", s.Host, s.Transport)
		}
	default:
		return srv, fmt.Errorf("call: service type %q is neither stun, turn nor turns", s.Type)
	}
	if transport != "udp" && transport != "tcp" {
		return srv, fmt.Errorf("call: %s service %s: transport %q", s.Type, s.Host, s.Transport)
	}
	if port < 1 || port > 65535 {
		return srv, fmt.Errorf("call: %s service %s: port %d", s.Type, s.Host, s.Port)
	}
	url := s.Type + ":" + host + ":" + strconv.Itoa(port)
	if s.Type != "stun" {
		url += "?transport=" + transport
		if s.Username == "" || s.Password == "" {
			return srv, fmt.Errorf("call: %s: no credentials", url)
		}
		if s.Expires != nil && !s.Expires.After(now) {
			return srv, fmt.Errorf("call: %s: the credentials expired at %s", url, s.Expires.Format(time.RFC3339))
		}
		srv.Username, srv.Credential = s.Username, s.Password
	}
	srv.URLs = []string{url}
	return srv, nil
}

// hostLiteral returns host as it goes into a STUN or TURN URI: an IP
// address (IPv6 in brackets) or a DNS name of letters, digits, hyphens and
// dots. Anything else could smuggle URI syntax into the URL.
func hostLiteral(host string) (string, bool) {
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", false
		}
		if a.Is6() && !a.Is4In6() {
			return "[" + a.String() + "]", true
		}
		return a.Unmap().String(), true
	}
	if host == "" || len(host) > 253 {
		return "", false
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return "", false
			}
		}
	}
	return host, true
}
