package clinkid

import (
	"encoding/hex"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clinkme/clinkd/internal/ratelimit"
)

// source is where a password attempt or a registration comes from, as far
// as clinkd can tell.
type source struct {
	// addr is the client's IP address in canonical form, net its network:
	// the /24 of an IPv4 address, the /64 of an IPv6 one. One subscriber
	// usually holds a whole IPv6 /64 (RFC 6177), so counting each /128
	// apart would give one attacker 2^64 budgets. Both are "" when the
	// address is unknown.
	addr, net string
	// anonymous marks a caller that should name the address but did not
	// (the Prosody bridge outside a session): it is counted against one
	// shared key instead of skipping the per-address limits.
	anonymous bool
	// token is set when a live app token authenticated the request
	// (password change, deletion): a prefix of its hash scopes the
	// failures of that request apart from strangers' guesses.
	token string
}

// anonymousKey is the rate-limit key of the bridge's calls that carry no
// client address.
const anonymousKey = "bridge:no-address"

// sourceOf reads a client address ("" when the caller cannot know one:
// ejabberd's extauth, the operator's CLI).
func sourceOf(addr string) source {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return source{}
	}
	ip = ip.Unmap().WithZone("")
	bits := 64
	if ip.Is4() {
		bits = 24
	}
	p, _ := ip.Prefix(bits) // cannot fail: bits fits both families
	return source{addr: ip.String(), net: p.String()}
}

// keys returns the rate-limit keys of the address and of its network, or
// false when neither applies.
func (s source) keys() (addr, network string, ok bool) {
	switch {
	case s.addr != "":
		return s.addr, s.net, true
	case s.anonymous:
		return anonymousKey, anonymousKey, true
	}
	return "", "", false
}

// tokenScope is the failure scope of a re-authentication with token.
func tokenScope(tok string) string { return "token:" + hex.EncodeToString(tokenHash(tok)[:8]) }

// limitPair is one per-address budget and one per-network budget.
type limitPair struct {
	addr, net         *ratelimit.Limiter
	addrName, netName string // metric labels
}

func newLimitPair(name string, addrPerSecond float64, addrBurst int, netPerSecond float64, netBurst int) limitPair {
	return limitPair{
		addr:     ratelimit.New(addrPerSecond, addrBurst, 100_000),
		net:      ratelimit.New(netPerSecond, netBurst, 100_000),
		addrName: name + "_address", netName: name + "_network",
	}
}

// allowAddr takes a token from the address's bucket; it returns the
// label of the limit that refused, or "".
func (l limitPair) allowAddr(s source) string {
	if a, _, ok := s.keys(); ok && !l.addr.Allow(a) {
		return l.addrName
	}
	return ""
}

// allowNet takes a token from the network's bucket.
func (l limitPair) allowNet(s source) string {
	if _, n, ok := s.keys(); ok && !l.net.Allow(n) {
		return l.netName
	}
	return ""
}

// peek reports, without taking anything, the limit that would refuse s.
func (l limitPair) peek(s source, now time.Time) string {
	a, n, ok := s.keys()
	if !ok {
		return ""
	}
	if !l.addr.Peek(a, now) {
		return l.addrName
	}
	if !l.net.Peek(n, now) {
		return l.netName
	}
	return ""
}

// fail records a failure against both buckets (wrong secrets are counted,
// not attempts).
func (l limitPair) fail(s source, now time.Time) {
	if a, n, ok := s.keys(); ok {
		l.addr.AllowN(a, now, 1)
		l.net.AllowN(n, now, 1)
	}
}

// refusals counts what each limit refused:
// clinkd_clinkid_refused_total{limit}.
type refusals struct{ c *prometheus.CounterVec }

func (r refusals) add(limit string) {
	if limit != "" {
		r.c.WithLabelValues(limit).Inc()
	}
}

// Limits lists the label values of clinkd_clinkid_refused_total, each a
// limit docs/operators.md documents.
func Limits() []string {
	return []string{
		"login_address", "login_network", "register_address", "register_network",
		"secret_address", "secret_network", "name_delay", "global_failures", "hash_queue",
		"registration_closed", "invalid_invite", "weak_password",
	}
}
