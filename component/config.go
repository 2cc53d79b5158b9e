package component

import (
	"crypto/tls"
	"errors"
	"fmt"
	"runtime"
	"time"

	"mellium.im/xmpp/jid"
)

// Config is what a Component needs to link. The zero values of the tuning
// fields take the defaults given in their comments.
type Config struct {
	// Addr is the host:port of the XMPP server's component listener.
	Addr string
	// TLS, if not nil, wraps the link in TLS from the first byte
	// (ejabberd's ejabberd_service listener with `tls: true`); XEP-0114
	// itself is plaintext. The server is always verified: a config with
	// InsecureSkipVerify is refused, MinVersion is raised to TLS 1.2 and
	// an empty ServerName becomes Addr's host. RootCAs nil means the
	// system's roots.
	TLS *tls.Config
	// Domain is the component's domain, as the server's config names it.
	Domain jid.JID
	// Secret is the shared secret of the XEP-0114 handshake.
	Secret []byte
	// ServerDomain is the XMPP server's own domain; keepalive pings go there.
	// Empty disables application-level pings (TCP keepalive still runs).
	ServerDomain jid.JID
	// Balanced says that the server shares this domain's stanzas among
	// several links by the destination's bare JID (ejabberd's
	// domain_balancing with type bare_destination), each link holding a
	// slot of its own. A reply addressed to the component's own domain
	// then reaches whichever link holds that address's slot, possibly
	// another clinkd's, so the link learns an address of its own (one the
	// server routes to it) and sends its keepalive and Sync pings from
	// there; otherwise a quiet link whose pings are answered elsewhere
	// would be declared dead every PingInterval+PingTimeout.
	Balanced bool

	// Identity is announced in disco#info. Default: category "component",
	// type "generic", name "clinkd".
	Identity Identity

	// Workers is the number of handler goroutines (default 4×GOMAXPROCS,
	// at least 8). QueueDepth is how many stanzas of one sender may wait
	// (default 64); MaxQueued and MaxQueuedBytes bound what waits in all
	// (defaults 64×QueueDepth stanzas and 64 MiB), so that many senders
	// together cannot exhaust memory while one alone cannot fill the
	// pool. Past any bound a stanza is refused with resource-constraint at
	// once: the read loop never waits for one sender.
	Workers        int
	QueueDepth     int
	MaxQueued      int
	MaxQueuedBytes int
	// HandlerTimeout bounds one handler call (default 10s), so a stuck
	// store cannot hold a worker for ever.
	HandlerTimeout time.Duration
	// MaxStanzaBytes is the largest stanza handled (default 256 KiB); a
	// larger one is consumed and answered with policy-violation.
	MaxStanzaBytes int

	// BackoffMin and BackoffMax bound the jittered exponential wait between
	// link attempts (defaults 100ms and 5s: a restarted server is back in
	// seconds, and a capped wait keeps the outage short without hammering
	// a server that is down).
	BackoffMin, BackoffMax time.Duration
	// DialTimeout bounds the TCP connect and the handshake (default 10s).
	DialTimeout time.Duration
	// PingInterval is how long the link may be silent before clinkd pings
	// ServerDomain (default 5s); PingTimeout how long it then waits for
	// any input before it declares the link dead and re-links (default
	// 5s). They catch a peer that vanished without closing TCP within ten
	// seconds, at the cost of one ping every 5 s on an idle link.
	PingInterval, PingTimeout time.Duration
	// SendTimeout bounds one write to the server (default 10s).
	SendTimeout time.Duration

	// Transient, if set, says whether a handler's error is a passing
	// outage of something clinkd depends on (its database unreachable or
	// slow): such errors are answered with type "wait" rather than
	// "cancel". The component itself knows no store, so whoever wires one
	// in classifies its errors.
	Transient func(error) bool
}

func (c *Config) setDefaults() error {
	if c.Addr == "" {
		return errors.New("component: no server address")
	}
	if c.Domain.Domainpart() == "" || c.Domain.Localpart() != "" || c.Domain.Resourcepart() != "" {
		return fmt.Errorf("component: domain %q is not a bare domain", c.Domain)
	}
	if len(c.Secret) == 0 {
		return errors.New("component: empty secret")
	}
	if err := c.checkTLS(); err != nil {
		return err
	}
	if c.Identity.Category == "" {
		c.Identity = Identity{Category: "component", Type: "generic", Name: "clinkd"}
	}
	if c.Workers <= 0 {
		c.Workers = max(8, 4*runtime.GOMAXPROCS(0))
	}
	if c.QueueDepth <= 0 {
		c.QueueDepth = 64
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 64 * c.QueueDepth
	}
	if c.MaxQueuedBytes <= 0 {
		c.MaxQueuedBytes = 64 << 20
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HandlerTimeout, 10*time.Second)
	def(&c.BackoffMin, 100*time.Millisecond)
	def(&c.BackoffMax, 5*time.Second)
	def(&c.DialTimeout, 10*time.Second)
	def(&c.PingInterval, 5*time.Second)
	def(&c.PingTimeout, 5*time.Second)
	def(&c.SendTimeout, 10*time.Second)
	if c.MaxStanzaBytes <= 0 {
		c.MaxStanzaBytes = 256 << 10
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	return nil
}
