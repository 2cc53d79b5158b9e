// Package dispatch routes what devices send to user addresses at the
// component (package address) to the one feature that owns it. It is the
// envelope router of docs/DEVELOPING.md:
//
//		link ─▶ component (router) ─▶ dispatch ─▶ Timed (expiry) | Ordinary (receipts)
//
//	  - An end-to-end envelope (docs/envelope.md) is checked here, once, for
//	    what every feature relies on: it is sent to a user's address at the
//	    component, carries no plaintext body beside it, is well formed and
//	    within bounds, was written by the sender the server stamped, and is
//	    addressed to the user it was sent to. Then it goes to Timed when it
//	    carries a validity period (expires), else to Ordinary.
//	  - A copy of a timed message, which a sibling clinkd instance sends to
//	    the sender's address (docs/expiry.md, scale-out), goes to Timed.
//	  - A delivery receipt (XEP-0184) or read marker (XEP-0333) goes to Timed
//	    when Timed holds the message it acknowledges, else to Ordinary.
//	  - A device's announcement (directed presence to its own user's address)
//	    updates the registry of online devices (Devices) and is then handed to
//	    every Watcher; an unavailable presence, or a bounce of anything clinkd
//	    sent to a device, forgets that device.
//
// No feature routes for another or calls another: each receives only what
// this package hands it, and reads the Devices registry to know where to
// deliver. Features never call back into the router, so data flows one way.
package dispatch

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
	"github.com/clinkme/clinkd/internal/ratelimit"
)

// An Envelope is an end-to-end envelope a device sent to a user's address
// at the component, after the checks every feature relies on.
type Envelope struct {
	// Stanza is the message as received, for the checks that depend on
	// how it was sent (its type, its hints).
	Stanza *component.Stanza
	// Device is the sending device: the full JID the server stamped.
	Device jid.JID
	// Sender is Device's bare JID, which is the envelope's author (from).
	Sender jid.JID
	// Recipient is the bare JID of the user the envelope was sent to; the
	// envelope lists it among its recipients.
	Recipient jid.JID
	// Body is the decoded, validated envelope and Raw its canonical XML,
	// which is what features relay. Both are the router's memory, valid
	// until the handler returns: then the router zeroes them and decodes
	// the next envelope into them. A feature that keeps either past its
	// handler copies it (expiry copies Raw into its slab).
	Body *envelopexml.Envelope
	Raw  []byte
}

// A Copy is a timed message that a sibling clinkd instance accepted from
// Owner, sent on for Owner's other devices.
type Copy struct {
	Owner jid.JID // the sender of the message, whose devices get the copy
	Peer  jid.JID // the recipient of the message
	By    jid.JID // Owner's device that sent it
	// Body and Raw are as in Envelope, and as briefly the feature's.
	Body *envelopexml.Envelope
	Raw  []byte
}

// ReceiptKind says what a receipt acknowledges.
type ReceiptKind string

// The kinds of receipt.
const (
	Delivered ReceiptKind = "received"  // XEP-0184 <received/>
	Displayed ReceiptKind = "displayed" // XEP-0333 <displayed/>
)

// A Receipt is a delivery receipt or read marker that a recipient's device
// sent to the sender's address at the component.
type Receipt struct {
	Kind   ReceiptKind
	ID     string  // the acknowledged message's id
	Device jid.JID // the reader's device (full JID)
	// DeviceID is the stable id Device announced (expiryxml.Device), or
	// "": forwarded with the receipt, so that the owner's devices can
	// tell which of the reader's devices it came from.
	DeviceID string
	Reader   jid.JID // Device's bare JID, the message's recipient
	Owner    jid.JID // the message's sender, whose devices get the receipt
}

// Forwarded returns what the receipt's forward to the owner's devices
// carries: the receipt or marker, and the reader's device when it
// announced an id.
func (r *Receipt) Forwarded() []any {
	if r.DeviceID == "" {
		return []any{r.Payload()}
	}
	return []any{r.Payload(), expiryxml.Device{ID: r.DeviceID}}
}

// Payload returns the receipt's XML payload, as forwarded to the owner's
// devices.
func (r *Receipt) Payload() any {
	if r.Kind == Displayed {
		return markers.Displayed{ID: r.ID}
	}
	return receiptsxml.Received{ID: r.ID}
}

// Timed is the feature that owns messages with a validity period (package
// expiry).
type Timed interface {
	HandleTimed(ctx context.Context, e *Envelope) error
	HandleCopy(ctx context.Context, c *Copy) error
	// HandleTimedReceipt handles r and reports true if r acknowledges a
	// timed message held here; otherwise it does nothing and reports false.
	HandleTimedReceipt(ctx context.Context, r *Receipt) (bool, error)
}

// Ordinary is the feature that owns envelopes without a validity period
// and their receipts (package receipts).
type Ordinary interface {
	HandleOrdinary(ctx context.Context, e *Envelope) error
	HandleReceipt(ctx context.Context, r *Receipt) error
}

// A Watcher is told when a device announces itself, after the registry has
// recorded it, so that it can deliver what it holds for the device's user.
type Watcher interface {
	DeviceOnline(ctx context.Context, user, device jid.JID)
}

// Unavailable is a Timed and an Ordinary for a feature that is switched
// off: it refuses every envelope with service-unavailable and Text, and
// claims no receipt.
type Unavailable struct{ Text string }

// HandleTimed implements Timed.
func (u Unavailable) HandleTimed(context.Context, *Envelope) error {
	return component.Error(stanza.ServiceUnavailable, u.Text)
}

// HandleCopy implements Timed.
func (u Unavailable) HandleCopy(context.Context, *Copy) error {
	return component.Error(stanza.ServiceUnavailable, u.Text)
}

// HandleTimedReceipt implements Timed.
func (u Unavailable) HandleTimedReceipt(context.Context, *Receipt) (bool, error) { return false, nil }

// HandleOrdinary implements Ordinary.
func (u Unavailable) HandleOrdinary(context.Context, *Envelope) error {
	return component.Error(stanza.ServiceUnavailable, u.Text)
}

// HandleReceipt implements Ordinary: there is nothing to pass a receipt on
// for, so it is dropped without an answer.
func (u Unavailable) HandleReceipt(context.Context, *Receipt) error { return nil }

// Config is what a Router needs. Every field but Watchers and Log is
// required.
type Config struct {
	// Component is the component's domain: copies are accepted only from
	// it.
	Component jid.JID
	// Devices is the registry the router keeps up to date.
	Devices *Devices
	// Timed and Ordinary own the two kinds of envelope. A feature that is
	// off is Unavailable{Text: why}.
	Timed    Timed
	Ordinary Ordinary
	// Watchers are told of every announcement.
	Watchers []Watcher
	// Access says whom the router serves and how much; Reload replaces it
	// while clinkd runs.
	Access Access
	Log    *slog.Logger
	// Registerer, if set, gets the router's metrics.
	Registerer prometheus.Registerer
}

// Access is whom the router serves and how much.
type Access struct {
	// Local is the XMPP server's own domain, whose users clinkd serves;
	// Federated lists other domains whose users it serves as well. Anyone
	// else is refused, as sender and as recipient: clinkd relays for its
	// own users only, so it cannot be used to send to, or from, addresses
	// nobody vouches for. Local is required.
	Local     string
	Federated []string
	// PerMinute and Burst bound the envelopes, receipts and announcements
	// one sender (bare JID) may hand the router (defaults 60 and 60);
	// beyond them it is refused with resource-constraint. A negative
	// PerMinute turns the bound off: for measuring what it costs, never
	// for a server users reach.
	PerMinute float64
	Burst     int
}

// Check reports whether a is an Access New and Reload accept.
func (a Access) Check() error {
	_, err := newAccess(a)
	return err
}

// access is what an Access makes.
type access struct {
	Access
	domains map[string]bool // whose users are served
	rate    *ratelimit.Limiter
}

func newAccess(a Access) (*access, error) {
	if a.Local == "" {
		return nil, errors.New("dispatch: no local domain (whose users are served)")
	}
	if a.PerMinute == 0 {
		a.PerMinute = 60
	}
	if a.Burst <= 0 {
		a.Burst = 60
	}
	domains := map[string]bool{}
	for _, d := range append([]string{a.Local}, a.Federated...) {
		j, err := jid.Parse(d)
		if err != nil || j.Localpart() != "" || j.Resourcepart() != "" {
			return nil, fmt.Errorf("dispatch: %q is not a domain", d)
		}
		domains[j.Domainpart()] = true
	}
	// Keys are senders; the bound on keys keeps memory bounded when many
	// senders come and go (an evicted sender starts full again).
	return &access{Access: a, domains: domains, rate: ratelimit.New(a.PerMinute/60, a.Burst, 100_000)}, nil
}

// A Router is the envelope router.
type Router struct {
	cfg     Config
	access  atomic.Pointer[access]
	refused *prometheus.CounterVec
	// decoded holds *decoded: the memory an envelope is decoded into,
	// reused from envelope to envelope (getDecoded, putDecoded).
	decoded sync.Pool
}

// decoded is an envelope as the router decodes it: Body's binary fields
// lie in fields, its canonical XML in raw. Reusing it leaves a relayed
// envelope with no allocation of its own size but the stanza's (issue 15:
// these were two of the three copies a relayed envelope cost).
type decoded struct {
	body   envelopexml.Envelope
	fields []byte
	raw    []byte
}

// DecodeTokens decodes the envelope into d's memory: the stanza's tokens
// stay as they are, so its text is decoded where it lies
// (component.TokenDecoder).
func (d *decoded) DecodeTokens(r xml.TokenReader, start xml.StartElement) error {
	var err error
	d.fields, err = d.body.DecodeTokensInto(d.fields[:0], r, start)
	return err
}

// maxPooled is the largest buffer putDecoded keeps: an envelope near the
// stanza limit is rare, and its buffers are better left to the collector
// than held by the pool.
const maxPooled = 64 << 10

func (r *Router) getDecoded() *decoded {
	if d, ok := r.decoded.Get().(*decoded); ok {
		return d
	}
	return new(decoded)
}

// putDecoded zeroes what d held, once its handler returned, and keeps it
// for the next envelope. It zeroes the buffers' spare capacity too: a
// decode that failed halfway left bytes there.
func (r *Router) putDecoded(d *decoded) {
	clear(d.fields[:cap(d.fields)])
	clear(d.raw[:cap(d.raw)])
	d.body = envelopexml.Envelope{}
	if cap(d.fields) > maxPooled || cap(d.raw) > maxPooled {
		return
	}
	d.fields, d.raw = d.fields[:0], d.raw[:0]
	r.decoded.Put(d)
}

// New checks cfg and returns a router.
func New(cfg Config) (*Router, error) {
	switch {
	case cfg.Component.Domainpart() == "":
		return nil, errors.New("dispatch: no component domain")
	case cfg.Devices == nil:
		return nil, errors.New("dispatch: no device registry")
	case cfg.Timed == nil || cfg.Ordinary == nil:
		return nil, errors.New("dispatch: Timed and Ordinary are required (use Unavailable for a feature that is off)")
	}
	a, err := newAccess(cfg.Access)
	if err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	r := &Router{
		cfg: cfg,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_dispatch_refused_total",
			Help: "Envelopes refused before any feature saw them, by reason.",
		}, []string{"reason"}),
	}
	r.access.Store(a)
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(r.refused)
	}
	return r, nil
}

// Reload replaces whom the router serves and how much, while it runs. The
// senders' buckets start over only when the rate or burst changed.
func (r *Router) Reload(a Access) error {
	next, err := newAccess(a)
	if err != nil {
		return err
	}
	if cur := r.access.Load(); cur.PerMinute == next.PerMinute && cur.Burst == next.Burst {
		next.rate = cur.rate
	}
	r.access.Store(next)
	return nil
}

// Register routes envelopes, copies, receipts, markers and presence on c.
func (r *Router) Register(c *component.Component) {
	h := component.MessageHandlerFunc(r.HandleMessage)
	c.HandleMessage(envelopexml.NS, h)
	c.HandleMessage(envelopexml.NS1, h)
	c.HandleMessage(expiryxml.NS, h)
	c.HandleMessage(receiptsxml.NS, h)
	c.HandleMessage(markers.NS, h)
	c.HandlePresence(component.PresenceHandlerFunc(r.HandlePresence))
}

var (
	envelopeName  = xml.Name{Space: envelopexml.NS, Local: "envelope"}
	envelopeName1 = xml.Name{Space: envelopexml.NS1, Local: "envelope"} // version 1: the same, with the sender's checkpoint
	copyName      = xml.Name{Space: expiryxml.NS, Local: "copy"}
	receivedName  = xml.Name{Space: receiptsxml.NS, Local: "received"}
	displayedName = xml.Name{Space: markers.NS, Local: "displayed"}
	bodyNames     = []xml.Name{{Space: "jabber:component:accept", Local: "body"}, {Space: "jabber:client", Local: "body"}}
)

// served reports whether clinkd serves the user j (local or federated).
func (r *Router) served(j jid.JID) bool { return r.access.Load().domains[j.Domainpart()] }

// admit checks that sender may use the relay and has tokens left.
func (r *Router) admit(sender jid.JID) error {
	a := r.access.Load()
	if !a.domains[sender.Domainpart()] || sender.Localpart() == "" {
		return r.refuse("not-served", stanza.Forbidden, "clinkd serves users of "+a.Local+" (and the federated domains its operator lists) only")
	}
	if !a.rate.Allow(sender.String()) {
		return r.refuse("rate", stanza.ResourceConstraint, fmt.Sprintf("you send faster than clinkd relays for one user (%g a minute, bursts of %d); slow down", a.PerMinute, a.Burst))
	}
	return nil
}

// refuse counts a refusal and returns the stanza error for it.
func (r *Router) refuse(reason string, cond stanza.Condition, text string) error {
	r.refused.WithLabelValues(reason).Inc()
	return component.Error(cond, text)
}

// HandleMessage routes one message sent to the component.
func (r *Router) HandleMessage(ctx context.Context, m *component.Stanza) error {
	switch {
	case m.Type == string(stanza.ErrorMessage):
		// A delivery of ours bounced: the device is gone.
		if m.From.Resourcepart() != "" {
			r.cfg.Devices.gone(m.From)
		}
		return nil
	case m.Has(copyName):
		return r.handleCopy(ctx, m)
	case m.Has(envelopeName), m.Has(envelopeName1):
		return r.handleEnvelope(ctx, m)
	case m.Has(receivedName), m.Has(displayedName):
		return r.handleReceipt(ctx, m)
	case m.HasNS(envelopexml.NS), m.HasNS(envelopexml.NS1), m.HasNS(expiryxml.NS):
		return r.refuse("no-envelope", stanza.BadRequest, "no end-to-end envelope")
	}
	// A receipt request or a markable alone asks nothing of clinkd.
	return nil
}

// decode reads and checks the envelope of m into d: well formed, within
// bounds, written by author. d.raw is its canonical XML.
func (r *Router) decode(m *component.Stanza, author jid.JID, d *decoded) error {
	name := envelopeName
	if !m.Has(envelopeName) && m.Has(envelopeName1) {
		name = envelopeName1
	}
	if err := m.Decode(name, d); err != nil {
		if errors.Is(err, component.ErrNoPayload) {
			return r.refuse("no-envelope", stanza.BadRequest, "no end-to-end envelope")
		}
		return r.refuse("malformed", stanza.BadRequest, "malformed envelope: "+err.Error())
	}
	env := &d.body
	if err := env.Validate(); err != nil {
		return r.refuse("invalid", stanza.BadRequest, err.Error())
	}
	if !sameJID(env.From, author) {
		return r.refuse("not-author", stanza.NotAcceptable, "the envelope was not written by the sender")
	}
	// The canonical bytes, written once here and relayed as they are;
	// AppendXML writes what xml.Marshal would, without an encoder.
	d.raw = env.AppendXML(d.raw[:0])
	return nil
}

func (r *Router) handleEnvelope(ctx context.Context, m *component.Stanza) error {
	recipient, err := address.User(m.To)
	if err != nil {
		return r.refuse("address", stanza.BadRequest, "send messages to the recipient's address at this component")
	}
	for _, b := range bodyNames {
		if m.Has(b) {
			return r.refuse("plaintext", stanza.NotAcceptable, "clinkd relays only end-to-end envelopes; a plaintext <body> is refused")
		}
	}
	sender := m.From.Bare()
	if err := r.admit(sender); err != nil {
		return err
	}
	if !r.served(recipient) {
		return r.refuse("not-served", stanza.Forbidden, "clinkd relays only to users of "+r.access.Load().Local+" (and the federated domains its operator lists)")
	}
	d := r.getDecoded()
	defer r.putDecoded(d)
	if err := r.decode(m, sender, d); err != nil {
		return err
	}
	env, raw := &d.body, d.raw
	if !slices.ContainsFunc(env.To, func(to string) bool { return sameJID(to, recipient) }) {
		return r.refuse("not-recipient", stanza.NotAcceptable, "the envelope is not addressed to "+recipient.String())
	}
	e := &Envelope{Stanza: m, Device: m.From, Sender: sender, Recipient: recipient, Body: env, Raw: raw}
	if env.Expires.IsZero() {
		return r.cfg.Ordinary.HandleOrdinary(ctx, e)
	}
	return r.cfg.Timed.HandleTimed(ctx, e)
}

// handleCopy checks a copy's origin and addresses and hands it to Timed.
func (r *Router) handleCopy(ctx context.Context, m *component.Stanza) error {
	if m.From.Domainpart() != r.cfg.Component.Domainpart() {
		return r.refuse("copy-origin", stanza.Forbidden, "only clinkd sends copies")
	}
	owner, err := address.User(m.To)
	if err != nil {
		return r.refuse("address", stanza.BadRequest, "a copy goes to its sender's address")
	}
	peer, err := address.User(m.From)
	if err != nil {
		return r.refuse("address", stanza.BadRequest, "a copy comes from its recipient's address")
	}
	var c expiryxml.Copy
	if err := m.Decode(copyName, &c); err != nil {
		return err
	}
	by, err := jid.Parse(c.By)
	if err != nil || !by.Bare().Equal(owner) {
		return r.refuse("copy-origin", stanza.BadRequest, "copy from a device of another user")
	}
	d := r.getDecoded()
	defer r.putDecoded(d)
	if err := r.decode(m, owner, d); err != nil {
		return err
	}
	env, raw := &d.body, d.raw
	if env.Expires.IsZero() {
		return r.refuse("invalid", stanza.BadRequest, "a copy carries a timed message")
	}
	return r.cfg.Timed.HandleCopy(ctx, &Copy{Owner: owner, Peer: peer, By: by, Body: env, Raw: raw})
}

// handleReceipt hands a receipt to the feature that holds its message.
func (r *Router) handleReceipt(ctx context.Context, m *component.Stanza) error {
	owner, err := address.User(m.To)
	if err != nil {
		return component.BadRequest("send receipts to the sender's address at this component")
	}
	if err := r.admit(m.From.Bare()); err != nil {
		return err
	}
	if !r.served(owner) {
		return r.refuse("not-served", stanza.Forbidden, "clinkd relays only to users of "+r.access.Load().Local+" (and the federated domains its operator lists)")
	}
	rc := &Receipt{Device: m.From, DeviceID: r.cfg.Devices.ID(m.From), Reader: m.From.Bare(), Owner: owner}
	if m.Has(receivedName) {
		var v receiptsxml.Received
		if err := m.Decode(receivedName, &v); err != nil {
			return err
		}
		rc.Kind, rc.ID = Delivered, v.ID
	} else {
		var v markers.Displayed
		if err := m.Decode(displayedName, &v); err != nil {
			return err
		}
		rc.Kind, rc.ID = Displayed, v.ID
	}
	if rc.ID == "" || len(rc.ID) > envelopexml.MaxIDLen {
		return component.BadRequest("a receipt names the message id it is for")
	}
	handled, err := r.cfg.Timed.HandleTimedReceipt(ctx, rc)
	if err != nil || handled {
		return err
	}
	return r.cfg.Ordinary.HandleReceipt(ctx, rc)
}

// HandlePresence records available and unavailable presence that a
// user's device sends to that user's own address at the component, and
// tells the watchers of an announcement. A device may announce itself only
// at its own user's address.
func (r *Router) HandlePresence(ctx context.Context, p *component.Stanza) error {
	user, err := address.User(p.To)
	if err != nil {
		return nil // presence to the component itself: nothing to track
	}
	switch p.Type {
	case "", string(stanza.UnavailablePresence):
	default:
		return nil // subscriptions, probes and errors are not announcements
	}
	if !p.From.Bare().Equal(user) || p.From.Resourcepart() == "" {
		if p.Type == "" {
			return component.Error(stanza.Forbidden, "a device announces itself only at its own user's address")
		}
		return nil
	}
	if p.Type == string(stanza.UnavailablePresence) {
		r.cfg.Devices.gone(p.From)
		return nil
	}
	// The device's stable id, if it gave one (docs/expiry.md, step 1).
	var dev expiryxml.Device
	if p.Has(deviceName) {
		if err := p.Decode(deviceName, &dev); err != nil || expiryxml.CheckDeviceID(dev.ID) != nil {
			return component.Error(stanza.BadRequest, fmt.Sprintf("<device/> needs an id of 1 to %d bytes of A-Z, a-z, 0-9, '.', '_' and '-'", expiryxml.MaxDeviceIDLen))
		}
	}
	// An announcement makes clinkd deliver what it holds: it is bounded
	// like what a sender hands the relay.
	if err := r.admit(user); err != nil {
		return err
	}
	r.cfg.Devices.add(user, p.From, dev.ID)
	for _, w := range r.cfg.Watchers {
		w.DeviceOnline(ctx, user, p.From)
	}
	return nil
}

var deviceName = xml.Name{Space: expiryxml.NS, Local: "device"}

// sameJID compares a bare JID written in a validated envelope with one
// the server stamped. Validate requires the envelope's JIDs in canonical
// form, which is what parsing (PRECIS, IDNA) makes of any JID, so the two
// are the same JID exactly when s is j's canonical form, byte for byte:
// compared part by part, without parsing s again or building j's string.
func sameJID(s string, j jid.JID) bool {
	local, domain, found := strings.Cut(s, "@")
	if !found {
		local, domain = "", s
	}
	return j.Localpart() == local && j.Domainpart() == domain && j.Resourcepart() == ""
}
