// Package expiry is clinkd's relay for timed messages: end-to-end
// envelopes with a validity period, which it keeps only in memory until
// they expire and delivers so that the XMPP server keeps no copy.
//
// The protocol is specified in docs/expiry.md. In short: a device sends
// the envelope (whose signed expires attribute is the validity period) to
// the recipient's address at the component (package address), as a
// headline with no-store hints so the sender's own server archives
// nothing. The relay delivers it to every online device of the recipient,
// and through the sender's address a copy to the sender's other devices,
// each time as a type="headline" message with no-store, no-permanent-store
// and no-copy hints (neither Prosody nor ejabberd stores or archives a
// headline, and both drop one for a resource that is offline). A device
// that announces itself later gets whatever is still valid. At expiry the
// relay drops the message and tells every device that got it to delete it.
//
// Invariants:
//   - a held message exists only in this process's memory: never in the
//     database, a log line or a file (docs/expiry.md says what protects
//     against swap and core dumps);
//   - memory is bounded by per-user and global quotas; past them a message
//     is refused with resource-constraint;
//   - nothing is logged that names a message or its content.
package expiry

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/ephemeral"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
)

// Sender sends stanzas to the XMPP server (a *component.Component).
type Sender interface {
	SendMessage(ctx context.Context, m stanza.Message, payload ...any) error
}

// Devices knows the online devices of each user (a *devices.Registry).
type Devices interface {
	Online(user jid.JID) []jid.JID
	Gone(device jid.JID)
}

// Entitlements says whether an account may send timed messages (ClinkMe
// Secure). Nil means everyone may.
type Entitlements interface {
	HasEntitlement(ctx context.Context, account, entitlement string) (bool, error)
}

// Ordinary relays envelopes without a validity period, for tracked
// receipts (package receipts). Nil refuses them.
type Ordinary interface {
	RelayOrdinary(ctx context.Context, from, to jid.JID, env *envelopexml.Envelope) error
}

// Entitlement is the entitlement a timed message needs.
const Entitlement = "secure"

// Config bounds the relay. Zero values take the defaults in the comments.
type Config struct {
	// MinPeriod and MaxPeriod bound a message's validity period, counted
	// from when clinkd receives it (defaults 5s and 7 days).
	MinPeriod, MaxPeriod time.Duration
	// PerUserMessages and PerUserBytes bound what is held for one user
	// (defaults 1000 messages and 16 MiB); TotalBytes bounds everything
	// held (default 256 MiB).
	PerUserMessages int
	PerUserBytes    int64
	TotalBytes      int64
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.MinPeriod <= 0 {
		c.MinPeriod = 5 * time.Second
	}
	if c.MaxPeriod <= 0 {
		c.MaxPeriod = 7 * 24 * time.Hour
	}
	if c.PerUserMessages <= 0 {
		c.PerUserMessages = 1000
	}
	if c.PerUserBytes <= 0 {
		c.PerUserBytes = 16 << 20
	}
	if c.TotalBytes <= 0 {
		c.TotalBytes = 256 << 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// held is one timed message held for one user: either a message sent to
// that user, or (sent) a copy of one that user sent, for their other
// devices.
type held struct {
	owner, peer jid.JID // whose devices get it; the other party of the conversation
	id          string
	sent        bool
	by          jid.JID // for a sent copy: the device that sent it
	expires     time.Time
	raw         []byte              // the envelope, canonical XML
	delivered   map[string]struct{} // devices that got it
	index       int                 // in the expiry heap
}

func (h *held) key() string {
	k := h.peer.String() + "\x00" + h.id
	if h.sent {
		k += "\x00sent"
	}
	return k
}

type ownerState struct {
	msgs  map[string]*held
	bytes int64
}

// Relay is the timed-message relay.
type Relay struct {
	cfg       Config
	component jid.JID
	send      Sender
	devices   Devices
	ents      Entitlements
	ordinary  Ordinary
	log       *slog.Logger
	m         metrics

	mu     sync.Mutex
	owners map[string]*ownerState
	queue  expiryHeap
	total  int64
	wake   chan struct{} // the earliest expiry changed
}

type metrics struct {
	heldMessages, heldBytes prometheus.Gauge
	relayed, expired        prometheus.Counter
	refused                 *prometheus.CounterVec
}

// New returns a relay for the component at domain.
func New(cfg Config, domain jid.JID, send Sender, devs Devices, ents Entitlements, ordinary Ordinary, log *slog.Logger, reg prometheus.Registerer) *Relay {
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{
		cfg: cfg, component: domain, send: send, devices: devs, ents: ents, ordinary: ordinary, log: log,
		owners: make(map[string]*ownerState),
		wake:   make(chan struct{}, 1),
		m: metrics{
			heldMessages: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinkd_expiry_held_messages", Help: "Timed messages (and sent copies) held in memory."}),
			heldBytes:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinkd_expiry_held_bytes", Help: "Envelope bytes held in memory, counted against the quotas."}),
			relayed:      prometheus.NewCounter(prometheus.CounterOpts{Name: "clinkd_expiry_relayed_total", Help: "Timed messages accepted for relay."}),
			expired:      prometheus.NewCounter(prometheus.CounterOpts{Name: "clinkd_expiry_expired_total", Help: "Held messages dropped at expiry."}),
			refused:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clinkd_expiry_refused_total", Help: "Timed messages refused, by reason."}, []string{"reason"}),
		},
	}
	if reg != nil {
		reg.MustRegister(r.m.heldMessages, r.m.heldBytes, r.m.relayed, r.m.expired, r.m.refused)
	}
	return r
}

var (
	envelopeName = xml.Name{Space: envelopexml.NS, Local: "envelope"}
	copyName     = xml.Name{Space: expiryxml.NS, Local: "copy"}
	bodyNames    = []xml.Name{{Space: "jabber:component:accept", Local: "body"}, {Space: "jabber:client", Local: "body"}}
)

// Register routes envelopes and the relay's own payloads to r. Devices
// must call r.OnOnline when a device announces itself.
func (r *Relay) Register(c *component.Component) {
	c.HandleMessage(envelopexml.NS, component.MessageHandlerFunc(r.HandleMessage))
	c.HandleMessage(expiryxml.NS, component.MessageHandlerFunc(r.HandleMessage))
	c.AddFeature(ephemeral.NS)
}

// refuse counts a refusal and returns the stanza error for it.
func (r *Relay) refuse(reason string, cond stanza.Condition, text string) error {
	r.m.refused.WithLabelValues(reason).Inc()
	return component.Error(cond, text)
}

// HandleMessage handles a timed message from a device, or a copy from
// another clinkd instance.
func (r *Relay) HandleMessage(ctx context.Context, m *component.Stanza) error {
	if m.Type == string(stanza.ErrorMessage) {
		// A delivery of ours bounced: the device is gone.
		if m.From.Resourcepart() != "" {
			r.devices.Gone(m.From)
		}
		return nil
	}
	if m.Has(copyName) {
		return r.handleCopy(ctx, m)
	}
	return r.handleEnvelope(ctx, m)
}

// decodeEnvelope reads and checks the envelope of m: well formed, within
// bounds, written by from.
func (r *Relay) decodeEnvelope(m *component.Stanza, from jid.JID) (*envelopexml.Envelope, []byte, error) {
	var env envelopexml.Envelope
	if err := m.Decode(envelopeName, &env); err != nil {
		if errors.Is(err, component.ErrNoPayload) {
			return nil, nil, r.refuse("no-envelope", stanza.BadRequest, "no end-to-end envelope")
		}
		return nil, nil, r.refuse("malformed", stanza.BadRequest, "malformed envelope: "+err.Error())
	}
	if err := env.Validate(); err != nil {
		return nil, nil, r.refuse("invalid", stanza.BadRequest, err.Error())
	}
	if !sameJID(env.From, from) {
		return nil, nil, r.refuse("not-author", stanza.NotAcceptable, "the envelope was not written by the sender")
	}
	raw, err := xml.Marshal(env)
	if err != nil {
		return nil, nil, fmt.Errorf("expiry: re-encode envelope: %w", err)
	}
	return &env, raw, nil
}

func (r *Relay) handleEnvelope(ctx context.Context, m *component.Stanza) error {
	recipient, err := address.User(m.To)
	if err != nil {
		return r.refuse("address", stanza.BadRequest, "send messages to the recipient's address at this component")
	}
	sender := m.From.Bare()
	for _, b := range bodyNames {
		if m.Has(b) {
			return r.refuse("plaintext", stanza.NotAcceptable, "clinkd relays only end-to-end envelopes; a plaintext <body> is refused")
		}
	}
	env, raw, err := r.decodeEnvelope(m, sender)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(env.To, func(to string) bool { return sameJID(to, recipient) }) {
		return r.refuse("not-recipient", stanza.NotAcceptable, "the envelope is not addressed to "+recipient.String())
	}
	if env.Expires.IsZero() {
		if r.ordinary == nil {
			return r.refuse("ordinary", stanza.ServiceUnavailable, "this clinkd relays only timed messages")
		}
		return r.ordinary.RelayOrdinary(ctx, m.From, recipient, env)
	}
	if m.Type != string(stanza.HeadlineMessage) || !m.Has(xml.Name{Space: hints.NS, Local: "no-store"}) || !m.Has(xml.Name{Space: hints.NS, Local: "no-permanent-store"}) {
		// Otherwise the sender's own server archives what it sends.
		return r.refuse("unsafe-send", stanza.NotAcceptable, `send timed messages as type="headline" with no-store and no-permanent-store hints, or your server keeps a copy`)
	}
	if r.ents != nil {
		ok, err := r.ents.HasEntitlement(ctx, sender.String(), Entitlement)
		if err != nil {
			return fmt.Errorf("expiry: entitlement of %s: %w", sender, err)
		}
		if !ok {
			return r.refuse("entitlement", stanza.Forbidden, "timed messages are part of ClinkMe Secure, which this account does not have")
		}
	}
	now := r.cfg.Now()
	if period := env.Expires.Sub(now); period < r.cfg.MinPeriod || period > r.cfg.MaxPeriod {
		return r.refuse("period", stanza.NotAcceptable, fmt.Sprintf("the validity period must be between %v and %v from now", r.cfg.MinPeriod, r.cfg.MaxPeriod))
	}
	h := &held{owner: recipient, peer: sender, id: env.ID, expires: env.Expires, raw: raw, delivered: map[string]struct{}{}}
	added, err := r.hold(h)
	if err != nil || !added {
		return err // !added: a repeat of a message already held, nothing to do
	}
	r.m.relayed.Inc()
	r.deliver(ctx, h, r.devices.Online(recipient), jid.JID{})

	// The sender's other devices get their copy from the instance that
	// owns the sender: it goes through the sender's address.
	from, err := address.AtComponent(recipient, r.component)
	if err != nil {
		return nil
	}
	to, err := address.AtComponent(sender, r.component)
	if err != nil {
		return nil
	}
	if err := r.send.SendMessage(ctx, stanza.Message{To: to, From: from, Type: stanza.HeadlineMessage},
		expiryxml.Copy{By: m.From.String()}, decoder(raw), hints.NoStore{}, hints.NoPermanentStore{}); err != nil {
		r.log.Warn("expiry: copy for the sender's devices not sent", "err", err)
	}
	return nil
}

// handleCopy holds a copy of a timed message that the owner of this
// address sent, for the owner's other devices.
func (r *Relay) handleCopy(ctx context.Context, m *component.Stanza) error {
	if m.From.Domainpart() != r.component.Domainpart() {
		return r.refuse("copy-origin", stanza.Forbidden, "only clinkd sends copies")
	}
	owner, err := address.User(m.To)
	if err != nil {
		return nil
	}
	peer, err := address.User(m.From)
	if err != nil {
		return nil
	}
	var c expiryxml.Copy
	if err := m.Decode(copyName, &c); err != nil {
		return err
	}
	by, err := jid.Parse(c.By)
	if err != nil || !by.Bare().Equal(owner) {
		return r.refuse("copy-origin", stanza.BadRequest, "copy from a device of another user")
	}
	env, raw, err := r.decodeEnvelope(m, owner)
	if err != nil {
		return err
	}
	if !env.Expires.After(r.cfg.Now()) {
		return nil // expired on the way
	}
	h := &held{owner: owner, peer: peer, id: env.ID, sent: true, by: by, expires: env.Expires, raw: raw, delivered: map[string]struct{}{}}
	if added, err := r.hold(h); err != nil || !added {
		return err
	}
	r.deliver(ctx, h, r.devices.Online(owner), by)
	return nil
}

// hold adds h under the quotas. It reports false, without error, for a
// message already held.
func (r *Relay) hold(h *held) (bool, error) {
	size := int64(len(h.raw))
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.owners[h.owner.String()]
	if o == nil {
		o = &ownerState{msgs: make(map[string]*held)}
	}
	if _, dup := o.msgs[h.key()]; dup {
		return false, nil
	}
	switch {
	case len(o.msgs) >= r.cfg.PerUserMessages, o.bytes+size > r.cfg.PerUserBytes:
		r.m.refused.WithLabelValues("user-quota").Inc()
		return false, component.Errorf(stanza.ResourceConstraint, "clinkd holds as many timed messages for %s as it may; try again later", h.owner)
	case r.total+size > r.cfg.TotalBytes:
		r.m.refused.WithLabelValues("total-quota").Inc()
		return false, component.Error(stanza.ResourceConstraint, "clinkd holds as many timed messages as it may; try again later")
	}
	r.owners[h.owner.String()] = o
	o.msgs[h.key()] = h
	o.bytes += size
	r.total += size
	heap.Push(&r.queue, h)
	r.m.heldMessages.Inc()
	r.m.heldBytes.Add(float64(size))
	if r.queue[0] == h {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	return true, nil
}

// drop removes h. Called with mu held.
func (r *Relay) drop(h *held) {
	o := r.owners[h.owner.String()]
	if o == nil || o.msgs[h.key()] != h {
		return
	}
	delete(o.msgs, h.key())
	size := int64(len(h.raw))
	o.bytes -= size
	r.total -= size
	if len(o.msgs) == 0 {
		delete(r.owners, h.owner.String())
	}
	heap.Remove(&r.queue, h.index)
	r.m.heldMessages.Dec()
	r.m.heldBytes.Sub(float64(size))
}

// decoder returns the envelope's tokens for sending.
func decoder(raw []byte) xml.TokenReader { return xml.NewDecoder(bytes.NewReader(raw)) }

// deliver sends h to each device except skip, and records who got it.
func (r *Relay) deliver(ctx context.Context, h *held, devices []jid.JID, skip jid.JID) {
	from, err := address.AtComponent(h.peer, r.component)
	if err != nil {
		return
	}
	for _, d := range devices {
		if d.Equal(skip) {
			continue
		}
		remaining := h.expires.Sub(r.cfg.Now())
		if remaining <= 0 {
			return
		}
		payload := []any{decoder(h.raw), expiryxml.Timed{Expires: h.expires.UTC()}, ephemeral.Ephemeral{Timer: uint32(min(math.Ceil(remaining.Seconds()), math.MaxUint32))}}
		if h.sent {
			payload = append([]any{expiryxml.Sent{By: h.by.String()}}, payload...)
		} else {
			payload = append(payload, receiptsxml.Request{}, markers.Markable{})
		}
		payload = append(payload, hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{})
		if err := r.send.SendMessage(ctx, stanza.Message{ID: h.id, To: d, From: from, Type: stanza.HeadlineMessage}, payload...); err != nil {
			// Still held: the device gets it when it announces itself again.
			r.log.Debug("expiry: delivery failed; kept for later", "err", err)
			continue
		}
		r.mu.Lock()
		h.delivered[d.String()] = struct{}{}
		r.mu.Unlock()
	}
}

// OnOnline delivers to a device that just announced itself whatever is
// held for its user, except the copies of what it sent itself.
func (r *Relay) OnOnline(ctx context.Context, user, device jid.JID) {
	r.mu.Lock()
	var hs []*held
	if o := r.owners[user.String()]; o != nil {
		for _, h := range o.msgs {
			hs = append(hs, h)
		}
	}
	r.mu.Unlock()
	for _, h := range hs {
		r.deliver(ctx, h, []jid.JID{device}, h.by)
	}
}

// SentExpiry reports whether owner sent peer the timed message id that is
// held here as a copy, and when it expires. Receipts use it to know how
// long a receipt for it may be held.
func (r *Relay) SentExpiry(owner, peer jid.JID, id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.owners[owner.Bare().String()]
	if o == nil {
		return time.Time{}, false
	}
	h := &held{peer: peer.Bare(), id: id, sent: true}
	got, ok := o.msgs[h.key()]
	if !ok {
		return time.Time{}, false
	}
	return got.expires, true
}

// Held returns how many messages and bytes are held.
func (r *Relay) Held() (messages int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queue.Len(), r.total
}

// Run drops messages as they expire and tells the devices that got each
// one to delete it, until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		r.mu.Lock()
		var due []*held
		now := r.cfg.Now()
		for r.queue.Len() > 0 && !r.queue[0].expires.After(now) {
			h := r.queue[0]
			r.drop(h)
			due = append(due, h)
		}
		next := time.Hour
		if r.queue.Len() > 0 {
			next = r.queue[0].expires.Sub(now)
		}
		r.mu.Unlock()
		for _, h := range due {
			r.m.expired.Inc()
			r.notifyExpired(ctx, h)
		}
		t.Reset(next)
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-t.C:
		}
	}
}

// notifyExpired tells every device that got h, and the device that sent
// it, to delete it.
func (r *Relay) notifyExpired(ctx context.Context, h *held) {
	from, err := address.AtComponent(h.peer, r.component)
	if err != nil {
		return
	}
	r.mu.Lock()
	targets := make([]string, 0, len(h.delivered)+1)
	for d := range h.delivered {
		targets = append(targets, d)
	}
	if _, dup := h.delivered[h.by.String()]; h.sent && !dup {
		targets = append(targets, h.by.String())
	}
	r.mu.Unlock()
	for _, d := range targets {
		to, err := jid.Parse(d)
		if err != nil {
			continue
		}
		if err := r.send.SendMessage(ctx, stanza.Message{To: to, From: from, Type: stanza.HeadlineMessage},
			expiryxml.Expired{ID: h.id}, hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{}); err != nil {
			r.log.Debug("expiry: expiry notice not sent", "err", err)
		}
	}
}

// sameJID compares a JID written in an envelope with one the server
// stamped, after normalising both (PRECIS), so case cannot make a
// difference.
func sameJID(s string, j jid.JID) bool {
	p, err := jid.Parse(s)
	return err == nil && p.Equal(j)
}

// expiryHeap orders held messages by expiry, earliest first.
type expiryHeap []*held

func (q expiryHeap) Len() int           { return len(q) }
func (q expiryHeap) Less(i, j int) bool { return q[i].expires.Before(q[j].expires) }
func (q expiryHeap) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *expiryHeap) Push(x any) {
	h := x.(*held)
	h.index = len(*q)
	*q = append(*q, h)
}
func (q *expiryHeap) Pop() any {
	old := *q
	h := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return h
}
