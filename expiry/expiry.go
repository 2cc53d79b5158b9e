// Package expiry is clinkd's relay for timed messages: end-to-end
// envelopes with a validity period, which it keeps only in memory until
// they expire and delivers so that the XMPP server keeps no copy.
//
// The protocol is specified in docs/expiry.md. In short: a device sends
// the envelope (whose signed expires attribute is the validity period) to
// the recipient's address at the component (package address), as a
// headline with no-store hints so the sender's own server archives
// nothing. The relay delivers it to every online device of the recipient,
// and a copy to the sender's other devices (held here when they announced
// themselves here, else sent through the sender's address to the instance
// that owns the sender),
// each time as a type="headline" message with no-store, no-permanent-store
// and no-copy hints (neither Prosody nor ejabberd stores or archives a
// headline, and both drop one for a resource that is offline). A device
// that announces itself later gets whatever is still valid. At expiry the
// relay drops the message and tells every device that got it to delete it.
// Delivery and read receipts of a timed message are held the same way, in
// memory only and only until the message expires.
//
// Everything reaches the relay through the envelope router (package
// dispatch), which has already checked each envelope's form, author and
// recipient: HandleTimed, HandleCopy, HandleTimedReceipt and, when a device
// announces itself, DeviceOnline. The relay reads the router's registry of
// online devices and calls nothing else but the link (Send) and the
// entitlement check.
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
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/extensions/ephemeral"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
	"github.com/clinkme/clinkd/internal/slab"
)

// Sender sends stanzas to the XMPP server (a *component.Component).
type Sender interface {
	SendMessage(ctx context.Context, m stanza.Message, payload ...any) error
}

// Devices knows the online devices of each user (a *dispatch.Devices).
type Devices interface {
	Online(user jid.JID) []jid.JID
	// Key names a device for "delivered once": its stable id when it
	// announced one, else its full JID.
	Key(device jid.JID) string
	// Resolve finds where a Key of one of user's devices reaches it now.
	Resolve(user jid.JID, key string) (jid.JID, bool)
}

// Entitlements says whether an account may send timed messages (ClinkMe
// Secure): a *clinkid.Service, or NoEntitlementCheck.
type Entitlements interface {
	HasEntitlement(ctx context.Context, account, entitlement string) (bool, error)
}

// NoEntitlementCheck is the Entitlements of a clinkd without ClinkID
// accounts: every sender may send timed messages.
type NoEntitlementCheck struct{}

// HasEntitlement implements Entitlements.
func (NoEntitlementCheck) HasEntitlement(context.Context, string, string) (bool, error) {
	return true, nil
}

// Entitlement is the entitlement a timed message needs.
const Entitlement = "secure"

// Config is what a Relay needs. Component, Send, Devices and
// Entitlements are required; zero bounds take the defaults in the comments.
type Config struct {
	// Component is the component's domain, whose user addresses the relay
	// sends from.
	Component jid.JID
	Send      Sender
	Devices   Devices
	// Entitlements decides who may send timed messages.
	Entitlements Entitlements
	// Limits bound what is held; Reload replaces them while clinkd runs.
	Limits Limits
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
	// Registerer, if set, gets the relay's metrics.
	Registerer prometheus.Registerer
}

// Limits bound what the relay accepts and holds. Zero values take the
// defaults in the comments.
type Limits struct {
	// MinPeriod and MaxPeriod bound a message's validity period, counted
	// from when clinkd receives it (defaults 5s and 7 days).
	// UnseenMaxPeriod bounds it for a recipient none of whose devices has
	// announced itself since clinkd started (default 24h): an address
	// nobody uses cannot make clinkd hold a message for a week.
	MinPeriod, MaxPeriod, UnseenMaxPeriod time.Duration
	// PerUserMessages and PerUserBytes bound what is held for one user
	// (defaults 1000 messages and 16 MiB).
	PerUserMessages int
	PerUserBytes    int64
	// PerSenderMessages and PerSenderBytes bound what is held because of
	// one sender, for all recipients together and the sender's own copies
	// (defaults: the per-user bounds), so that quotas are spent by the
	// sender, never by someone else for them. PerPairMessages bounds what
	// one sender has held for one recipient (default a quarter of
	// PerUserMessages), so that no sender takes more than a share of
	// anyone's inbox.
	PerSenderMessages int
	PerSenderBytes    int64
	PerPairMessages   int
	// TotalBytes bounds everything held (default 256 MiB).
	TotalBytes int64
	// PerUserReceipts bounds the receipts of timed messages held for one
	// sender until their message expires (default 1000); past it the
	// oldest goes.
	PerUserReceipts int
}

func (c *Config) setDefaults() error {
	switch {
	case c.Component.Domainpart() == "":
		return errors.New("expiry: no component domain")
	case c.Send == nil || c.Devices == nil:
		return errors.New("expiry: Send and Devices are required")
	case c.Entitlements == nil:
		return errors.New("expiry: no Entitlements (NoEntitlementCheck lets every sender)")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c.Limits.setDefaults()
}

// Check reports whether l is a set of limits New and Reload accept.
func (l Limits) Check() error { return l.setDefaults() }

func (c *Limits) setDefaults() error {
	if c.MinPeriod <= 0 {
		c.MinPeriod = 5 * time.Second
	}
	if c.MaxPeriod <= 0 {
		c.MaxPeriod = 7 * 24 * time.Hour
	}
	if c.UnseenMaxPeriod <= 0 {
		c.UnseenMaxPeriod = min(24*time.Hour, c.MaxPeriod)
	}
	if c.MinPeriod > c.MaxPeriod || c.UnseenMaxPeriod < c.MinPeriod || c.UnseenMaxPeriod > c.MaxPeriod {
		return fmt.Errorf("expiry: periods out of order: want min %v ≤ unseen max %v ≤ max %v", c.MinPeriod, c.UnseenMaxPeriod, c.MaxPeriod)
	}
	if c.PerUserMessages <= 0 {
		c.PerUserMessages = 1000
	}
	if c.PerUserBytes <= 0 {
		c.PerUserBytes = 16 << 20
	}
	if c.PerSenderMessages <= 0 {
		c.PerSenderMessages = c.PerUserMessages
	}
	if c.PerSenderBytes <= 0 {
		c.PerSenderBytes = c.PerUserBytes
	}
	if c.PerPairMessages <= 0 {
		c.PerPairMessages = max(1, c.PerUserMessages/4)
	}
	if c.TotalBytes <= 0 {
		c.TotalBytes = 256 << 20
	}
	if c.PerUserReceipts <= 0 {
		c.PerUserReceipts = 1000
	}
	return nil
}

// held is one timed message held for one user: either a message sent to
// that user, or (sent) a copy of one that user sent, for their other
// devices.
//
// A relay may hold a million of them, so an entry is kept small: the users
// are pointers to the relay's one party per user, the expiry is an
// integer, and the envelope lies in the relay's slab. TestHeldSize keeps
// it within Go's 96-byte size class.
type held struct {
	// owner is whose devices get it, peer the other party of the
	// conversation. Until hold interns them they may be parties of their
	// own (newParty); from then on they are the relay's.
	owner, peer *party
	id          string
	// device, for a sent copy, is the device that sent it (by). For a
	// message to owner it is the sending device while the copy for the
	// sender's other devices has not gone out (copyBy, under Relay.mu): a
	// handoff carries it, and the next clinkd sends the copy. One field
	// serves both, as an entry is one or the other; nil for none.
	device *jid.JID
	// raw is the envelope, canonical XML. Once held it lies in the
	// relay's slab (hold moves it there), shared with twin, and is freed,
	// zeroed, when both are done with it (freeRaw).
	raw []byte
	// delivered holds the devices that got it, by Devices.Key; nil until
	// the first (markDelivered), since most held messages wait for a
	// device that is offline.
	delivered map[string]struct{}
	// twin, under Relay.mu, is the other held that shares raw with h: a
	// message and the copy for its sender's devices held in the same
	// instance keep the envelope once.
	twin   *held
	expiry int64 // when it expires, in Unix nanoseconds (expires)
	index  int32 // in the expiry heap
	// busy counts sends reading raw: at most one per handler goroutine
	// of each link and Run, and use refuses past math.MaxInt16;
	// dropped is set when the relay lets go of h. Whichever comes last
	// (the drop, or the last send) frees raw, so that no send reads an
	// envelope being overwritten. Both under Relay.mu.
	busy    int16
	sent    bool
	dropped bool
}

// party is one user that held messages name, as owner or peer. The relay
// keeps one per user (Relay.parties) while any held message names it, so
// that a held message costs two pointers rather than two JIDs and their
// bytes, and the user's quotas sit beside it.
type party struct {
	jid  jid.JID // bare
	name string  // jid.String(), its key in Relay.parties
	// addr is the user's address at the component (at), made once: it
	// is every delivery's from, and making one (escaping, PRECIS, IDNA)
	// cost more than the delivery's other work.
	addr atomic.Pointer[jid.JID]
	// refs counts the held messages that name it; at zero it leaves
	// Relay.parties, with every count below at zero. Under Relay.mu, as
	// is everything below.
	refs int
	// held is what is held for the user's devices (find, add, remove),
	// and bytes its size.
	held  heldSet
	bytes int64
	// sentMsgs and sentBytes are what is held because of the user as a
	// sender: their messages to others and the copies of them.
	sentMsgs  int
	sentBytes int64
}

// at returns the user's address at the component comp, made on first
// use. Two callers may make it at once; they make the same address.
func (p *party) at(comp jid.JID) (jid.JID, error) {
	if a := p.addr.Load(); a != nil {
		return *a, nil
	}
	a, err := address.AtComponent(p.jid, comp)
	if err != nil {
		return jid.JID{}, err
	}
	p.addr.Store(&a)
	return a, nil
}

// newParty returns a party for user that no relay holds yet: what a held
// message names until hold interns it.
func newParty(user jid.JID) *party { return &party{jid: user} }

// msgKey names a held message among its owner's: a message and the copy
// of it have the same peer and id.
type msgKey struct {
	peer *party
	id   string
	sent bool
}

func (h *held) key() msgKey { return msgKey{peer: h.peer, id: h.id, sent: h.sent} }

// heldSet is one user's held messages, by key. Up to smallHeldSet of them
// sit in a slice searched in order, a map beyond: most users have a few
// messages held, for whom a map's table would cost more than the rest of
// an entry (71 bytes per message at ten), while the map keeps a user with
// many (up to expiry.per_user_messages) from making each lookup long.
// docs/expiry.md, "What a held message costs in memory", has the figures.
type heldSet struct {
	list []*held
	m    map[msgKey]*held // when not nil, holds all and list is nil
}

const smallHeldSet = 32

func (s *heldSet) len() int {
	if s.m != nil {
		return len(s.m)
	}
	return len(s.list)
}

func (s *heldSet) find(k msgKey) *held {
	if s.m != nil {
		return s.m[k]
	}
	for _, h := range s.list {
		if h.peer == k.peer && h.sent == k.sent && h.id == k.id {
			return h
		}
	}
	return nil
}

// add adds h, whose key is not in s.
func (s *heldSet) add(h *held) {
	if s.m == nil && len(s.list) < smallHeldSet {
		s.list = append(s.list, h)
		return
	}
	if s.m == nil {
		s.m = make(map[msgKey]*held, 2*smallHeldSet)
		for _, x := range s.list {
			s.m[x.key()] = x
		}
		s.list = nil
	}
	s.m[h.key()] = h
}

// remove removes h and reports whether s held it.
func (s *heldSet) remove(h *held) bool {
	if s.m != nil {
		k := h.key()
		if s.m[k] != h {
			return false
		}
		delete(s.m, k)
		return true
	}
	i := slices.Index(s.list, h)
	if i < 0 {
		return false
	}
	last := len(s.list) - 1
	s.list[i], s.list[last] = s.list[last], nil
	s.list = s.list[:last]
	return true
}

// all returns what s holds, in no order.
func (s *heldSet) all() []*held {
	if s.m == nil {
		return slices.Clone(s.list)
	}
	hs := make([]*held, 0, len(s.m))
	for _, h := range s.m {
		hs = append(hs, h)
	}
	return hs
}

// pairKey names what one sender has held for one recipient.
type pairKey struct{ from, to *party }

// expires is when h expires.
func (h *held) expires() time.Time { return time.Unix(0, h.expiry).UTC() }

// deviceRef is d as held.device holds it: nil for the zero JID.
func deviceRef(d jid.JID) *jid.JID {
	if d.Domainpart() == "" {
		return nil
	}
	return &d
}

// by is the device that sent a sent copy; the zero JID for a message.
func (h *held) by() jid.JID {
	if h.sent && h.device != nil {
		return *h.device
	}
	return jid.JID{}
}

// copyBy is, for a message, the sending device while its copy for the
// sender's other devices is owed, else the zero JID. Called with Relay.mu
// held.
func (h *held) copyBy() jid.JID {
	if h.sent || h.device == nil {
		return jid.JID{}
	}
	return *h.device
}

// markDelivered records that the device of key got h. Called with
// Relay.mu held, or before h is shared.
func (h *held) markDelivered(key string) {
	if h.delivered == nil {
		h.delivered = make(map[string]struct{}, 1)
	}
	h.delivered[key] = struct{}{}
}

// doneWithRaw reports whether nothing reads h's envelope any more: h is
// dropped, no send reads it, nor its twin's. Called with Relay.mu held.
func (h *held) doneWithRaw() bool {
	done := func(x *held) bool { return x.dropped && x.busy == 0 }
	return done(h) && (h.twin == nil || done(h.twin))
}

// sender is the user because of whom h is held: the author of the
// message (for a copy, the owner, who sent it).
func (h *held) sender() *party {
	if h.sent {
		return h.owner
	}
	return h.peer
}

// pendingReceipt is a receipt for a timed message, held in memory until
// the message expires, for the sender's devices that come online later.
type pendingReceipt struct {
	reader  jid.JID // the recipient who sent the receipt
	payload any     // receiptsxml.Received or markers.Displayed
	device  string  // the stable id of the reader's device, or ""
	expires time.Time
	// unsent: the owner's online devices have not been sent it yet (it
	// came while the relay was quiet, before a handoff). Under Relay.mu.
	unsent bool
}

// Relay is the timed-message relay: the dispatch.Timed feature and a
// dispatch.Watcher.
type Relay struct {
	cfg    Config
	limits atomic.Pointer[Limits]
	log    *slog.Logger
	m      metrics
	procs  int // GOMAXPROCS, which scrubHeap lowers and restores
	// raw is cfg.Send when it writes bytes as they are, else nil; wire
	// is what it writes around each envelope.
	raw  RawSender
	wire wire

	mu       sync.Mutex
	parties  map[string]*party            // the users held messages name, by bare JID
	pairs    map[pairKey]int              // messages held, by sender and recipient
	receipts map[string][]*pendingReceipt // by sender (owner) bare JID
	seen     seenUsers                    // users with a device that announced itself
	// slab holds the envelopes of what is held, outside Go's heap
	// (internal/slab: what a held envelope costs in memory is its
	// length); Run compacts it as messages expire.
	slab        *slab.Slab
	compactions int // how often compact moved envelopes (tests read it)
	// lastSweep is the longest that dropping expired messages or
	// compacting the slab held mu at once, and how long the last
	// scrubHeap took (benchmarks read it).
	lastSweep struct{ locked, scrub time.Duration }
	queue     expiryHeap
	total     int64
	wake      chan struct{} // the earliest expiry changed
	// handoff, while not nil, is closed when a handoff's state has been
	// taken (AwaitHandoff, EndHandoff).
	handoff chan struct{}
	// quiet: a handoff is about to take the state (Quiesce); the relay
	// holds what it is handed and sends nothing, so that nothing goes out
	// on a link the server may have closed already.
	quiet bool
	// sending counts the sends decided while the relay was not quiet and
	// not finished yet (startSendLocked, sent): Quiesce waits for them, so
	// that nothing the relay chose to send is still being written when
	// the taker links and Prosody closes this link under it.
	sending sync.WaitGroup
}

// startSendLocked reports whether the relay may send (it is not quiet)
// and, if so, counts the send in flight until sent is called. Under r.mu.
func (r *Relay) startSendLocked() bool {
	if r.quiet {
		return false
	}
	r.sending.Add(1)
	return true
}

// sent ends a send that startSendLocked counted.
func (r *Relay) sent() { r.sending.Done() }

// seenUsers remembers, in bounded memory, which users had a device
// announce itself since clinkd started; past the bound the oldest are
// forgotten (which only shortens what may be held for them).
type seenUsers struct {
	set   map[string]struct{}
	order []string
}

const maxSeenUsers = 1 << 18

func (s *seenUsers) add(user string) {
	if _, ok := s.set[user]; ok {
		return
	}
	if len(s.order) >= maxSeenUsers {
		delete(s.set, s.order[0])
		s.order = s.order[1:]
	}
	s.set[user] = struct{}{}
	s.order = append(s.order, user)
}

func (s *seenUsers) has(user string) bool {
	_, ok := s.set[user]
	return ok
}

type metrics struct {
	heldMessages, heldBytes prometheus.Gauge
	totalLimit, slabBytes   prometheus.Gauge
	relayed, expired        prometheus.Counter
	compactions             prometheus.Counter
	refused                 *prometheus.CounterVec
	receipts                *prometheus.CounterVec
}

// New checks cfg and returns a relay.
func New(cfg Config) (*Relay, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	envelopes, err := slab.New(slab.Config{})
	if err != nil {
		return nil, fmt.Errorf("expiry: %w", err)
	}
	r := &Relay{
		cfg: cfg, log: cfg.Log, procs: runtime.GOMAXPROCS(0),
		slab:     envelopes,
		parties:  make(map[string]*party),
		pairs:    make(map[pairKey]int),
		receipts: make(map[string][]*pendingReceipt),
		seen:     seenUsers{set: make(map[string]struct{})},
		wake:     make(chan struct{}, 1),
		m: metrics{
			heldMessages: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinkd_expiry_held_messages", Help: "Timed messages (and sent copies) held in memory."}),
			heldBytes:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinkd_expiry_held_bytes", Help: "Envelope bytes held in memory, counted against the quotas."}),
			totalLimit:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinkd_expiry_held_bytes_limit", Help: "The bound on clinkd_expiry_held_bytes (expiry.total_bytes)."}),
			slabBytes:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "clinkd_expiry_slab_used_bytes", Help: "Memory outside Go's heap touched for held envelopes: what is held, and what expired and compaction has not reclaimed yet."}),
			relayed:      prometheus.NewCounter(prometheus.CounterOpts{Name: "clinkd_expiry_relayed_total", Help: "Timed messages accepted for relay."}),
			expired:      prometheus.NewCounter(prometheus.CounterOpts{Name: "clinkd_expiry_expired_total", Help: "Held messages dropped at expiry."}),
			compactions:  prometheus.NewCounter(prometheus.CounterOpts{Name: "clinkd_expiry_slab_compactions_total", Help: "Times the relay moved held envelopes out of the slab's sparsest chunks."}),
			refused:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clinkd_expiry_refused_total", Help: "Timed messages refused, by reason."}, []string{"reason"}),
			receipts: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "clinkd_expiry_receipts_forwarded_total",
				Help: "Receipts of timed messages forwarded to senders' devices, by kind (received, displayed).",
			}, []string{"kind"}),
		},
	}
	r.raw, _ = cfg.Send.(RawSender)
	r.wire = newWire()
	lim := cfg.Limits
	r.limits.Store(&lim)
	r.m.totalLimit.Set(float64(lim.TotalBytes))
	if reg := cfg.Registerer; reg != nil {
		reg.MustRegister(r.m.heldMessages, r.m.heldBytes, r.m.totalLimit, r.m.slabBytes, r.m.compactions, r.m.relayed, r.m.expired, r.m.refused, r.m.receipts)
	}
	// The slab's chunks are not Go memory: unmap them once nothing can
	// reach the relay (and so nothing its held messages), as a test that
	// makes many relays would otherwise keep them all.
	runtime.AddCleanup(r, func(s *slab.Slab) { s.Release() }, envelopes)
	return r, nil
}

// Reload replaces the limits while the relay runs. What is held stays
// held; the new bounds apply to what arrives next.
func (r *Relay) Reload(l Limits) error {
	if err := l.setDefaults(); err != nil {
		return err
	}
	r.limits.Store(&l)
	r.m.totalLimit.Set(float64(l.TotalBytes))
	return nil
}

// Register advertises what the relay adds to the component: XEP-0466
// ephemeral messages. The envelopes themselves reach it through the
// envelope router (package dispatch).
func (r *Relay) Register(c *component.Component) {
	c.AddFeature(ephemeral.NS)
}

// refuse counts a refusal and returns the stanza error for it.
func (r *Relay) refuse(reason string, cond stanza.Condition, text string) error {
	r.m.refused.WithLabelValues(reason).Inc()
	return component.Error(cond, text)
}

// HandleTimed holds and delivers a timed message a device sent. A message
// it refuses is zeroed at once.
func (r *Relay) HandleTimed(ctx context.Context, e *dispatch.Envelope) error {
	if err := r.awaitHandoff(ctx); err != nil {
		wipe(e.Raw, e.Body)
		return err
	}
	if err := r.admitTimed(ctx, e); err != nil {
		wipe(e.Raw, e.Body)
		return err
	}
	return r.holdTimed(ctx, e)
}

// admitTimed checks what HandleTimed checks before holding a message.
func (r *Relay) admitTimed(ctx context.Context, e *dispatch.Envelope) error {
	m := e.Stanza
	if m.Type != string(stanza.HeadlineMessage) || !m.Has(xml.Name{Space: hints.NS, Local: "no-store"}) || !m.Has(xml.Name{Space: hints.NS, Local: "no-permanent-store"}) {
		// Otherwise the sender's own server archives what it sends.
		return r.refuse("unsafe-send", stanza.NotAcceptable, `send timed messages as type="headline" with no-store and no-permanent-store hints, or your server keeps a copy`)
	}
	ok, err := r.cfg.Entitlements.HasEntitlement(ctx, e.Sender.String(), Entitlement)
	if err != nil {
		return fmt.Errorf("expiry: entitlement of %s: %w", e.Sender, err)
	}
	if !ok {
		return r.refuse("entitlement", stanza.Forbidden, "timed messages are part of ClinkMe Secure, which this account does not have")
	}
	lim := r.limits.Load()
	period := e.Body.Expires.Sub(r.cfg.Now())
	if period < lim.MinPeriod || period > lim.MaxPeriod {
		return r.refuse("period", stanza.NotAcceptable, fmt.Sprintf("the validity period must be between %v and %v from now", lim.MinPeriod, lim.MaxPeriod))
	}
	if period > lim.UnseenMaxPeriod && !r.seenUser(e.Recipient) {
		return r.refuse("unseen-period", stanza.NotAcceptable, fmt.Sprintf("%s has not been online at clinkd lately, so a validity period of at most %v is accepted for it", e.Recipient, lim.UnseenMaxPeriod))
	}
	return nil
}

// holdTimed holds and delivers a message admitTimed accepted.
func (r *Relay) holdTimed(ctx context.Context, e *dispatch.Envelope) error {
	h := &held{owner: newParty(e.Recipient), peer: newParty(e.Sender), id: e.Body.ID, expiry: e.Body.Expires.UnixNano(), raw: e.Raw, device: deviceRef(e.Device)}
	// Of the decoded envelope the relay needs nothing more: only raw is
	// held, and zeroed when it goes.
	wipe(nil, e.Body)
	added, err := r.hold(h)
	if err != nil || !added {
		wipe(e.Raw, nil)
		return err // !added: a repeat of a message already held, nothing to do
	}
	r.m.relayed.Inc()
	r.deliver(ctx, h, r.cfg.Devices.Online(e.Recipient), jid.JID{})
	r.sendCopy(ctx, h)
	return nil
}

// sendCopy passes on the copy of h, a message to its owner, for the
// sender's other devices, to the instance that owns the sender. When that
// is this one (the sender's devices announced themselves here: always with
// Prosody, which links one clinkd, and with ejabberd's bare_destination
// balancing whenever the sender's address hashes here), the copy is held
// at once: sending it through the server to the sender's address would
// only bring it back into this process, at the cost of a server
// traversal and a second decode. Otherwise it goes through the server to
// the sender's address, where the instance that owns the sender gets it
// (HandleCopy).
func (r *Relay) sendCopy(ctx context.Context, h *held) {
	r.mu.Lock()
	by := h.copyBy()
	if by.Resourcepart() == "" || !r.startSendLocked() {
		r.mu.Unlock()
		return // sent already, or left for the handoff
	}
	r.mu.Unlock()
	defer r.sent()
	if len(r.cfg.Devices.Online(h.peer.jid)) > 0 {
		r.copyLocally(ctx, h, by)
		return
	}
	from, err := h.owner.at(r.cfg.Component)
	if err != nil {
		return
	}
	to, err := h.peer.at(r.cfg.Component)
	if err != nil {
		return
	}
	if !r.use(h) {
		return // expired already
	}
	defer r.release(h)
	m := stanza.Message{To: to, From: from, Type: stanza.HeadlineMessage}
	if r.raw != nil {
		err = r.raw.SendMessageRaw(ctx, m, appendBy(nil, "copy", by.String()), h.raw, r.wire.copyHints)
	} else {
		err = r.cfg.Send.SendMessage(ctx, m, expiryxml.Copy{By: by.String()}, decoder(h.raw), hints.NoStore{}, hints.NoPermanentStore{})
	}
	if err != nil {
		r.log.Warn("expiry: copy for the sender's devices not sent", "err", err)
		return
	}
	r.mu.Lock()
	h.device = nil
	r.mu.Unlock()
}

// copyLocally holds the copy of h for the sender's other devices in this
// instance, as HandleCopy would once it came back through the server. The
// two share the envelope's bytes (held.twin): it is held once.
func (r *Relay) copyLocally(ctx context.Context, h *held, by jid.JID) {
	// The use keeps h's envelope from being zeroed until the copy is its
	// twin, whatever happens to h meanwhile.
	if !r.use(h) {
		return // expired already
	}
	defer r.release(h)
	c := &held{owner: h.peer, peer: h.owner, id: h.id, sent: true, device: deviceRef(by), expiry: h.expiry, raw: h.raw, twin: h}
	added, err := r.hold(c)
	if err != nil {
		// The message was admitted with room for its copy, so a limit
		// was lowered meanwhile: the copy is lost, as when the sender's
		// instance refuses one that came through the server.
		r.log.Debug("expiry: copy for the sender's devices not held", "err", err)
		return
	}
	// copyBy is cleared once the copy is held, not before: a handoff in
	// between carries both, and the taker's copy is a repeat it ignores.
	r.mu.Lock()
	h.device = nil
	if added {
		h.twin = c
	}
	r.mu.Unlock()
	if added {
		r.deliver(ctx, c, r.cfg.Devices.Online(c.owner.jid), by)
	}
}

// HandleCopy holds a copy of a timed message that its owner sent, for the
// owner's other devices.
func (r *Relay) HandleCopy(ctx context.Context, c *dispatch.Copy) error {
	defer wipe(nil, c.Body)
	if err := r.awaitHandoff(ctx); err != nil {
		wipe(c.Raw, nil)
		return err
	}
	return r.holdCopy(ctx, &held{owner: newParty(c.Owner), peer: newParty(c.Peer), id: c.Body.ID, sent: true, device: deviceRef(c.By), expiry: c.Body.Expires.UnixNano(), raw: c.Raw})
}

// holdCopy holds h, a copy, and delivers it to its owner's online devices
// but the one that sent it. A copy it does not hold is zeroed at once.
func (r *Relay) holdCopy(ctx context.Context, h *held) error {
	if !h.expires().After(r.cfg.Now()) {
		wipe(h.raw, nil)
		return nil // expired on the way
	}
	if added, err := r.hold(h); err != nil || !added {
		wipe(h.raw, nil)
		return err
	}
	r.deliver(ctx, h, r.cfg.Devices.Online(h.owner.jid), h.by())
	return nil
}

// HandleTimedReceipt forwards a receipt for a timed message that its
// owner sent and this instance holds a copy of, and holds the receipt
// until the message expires for the owner's devices that come online
// later. It reports false, doing nothing, for any other receipt.
func (r *Relay) HandleTimedReceipt(ctx context.Context, rc *dispatch.Receipt) (bool, error) {
	if err := r.awaitHandoff(ctx); err != nil {
		return false, err
	}
	expires, ok := r.sentExpiry(rc.Owner, rc.Reader, rc.ID)
	if !ok {
		return false, nil
	}
	p := &pendingReceipt{reader: rc.Reader, payload: rc.Payload(), device: rc.DeviceID, expires: expires}
	if quiet := r.holdReceipt(rc.Owner, p); !quiet {
		r.forwardReceipt(ctx, rc.Owner, p, r.cfg.Devices.Online(rc.Owner))
	}
	r.m.receipts.WithLabelValues(string(rc.Kind)).Inc()
	return true, nil
}

// seenUser reports whether a device of user announced itself since
// clinkd started (or is online now).
func (r *Relay) seenUser(user jid.JID) bool {
	r.mu.Lock()
	seen := r.seen.has(user.String())
	r.mu.Unlock()
	return seen || len(r.cfg.Devices.Online(user)) > 0
}

// sentExpiry reports whether owner sent peer the timed message id that is
// held here, and when it expires: either as owner's copy for its other
// devices, or as the message held for peer itself. The second matters when
// peer's receipt arrives before owner's copy has come back through the
// server: the receipt is still a timed message's, and must not be taken
// for an ordinary one's (which would drop it).
func (r *Relay) sentExpiry(owner, peer jid.JID, id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, p := r.parties[owner.Bare().String()], r.parties[peer.Bare().String()]
	if o == nil || p == nil {
		return time.Time{}, false // nothing held names both
	}
	if got := o.held.find(msgKey{peer: p, id: id, sent: true}); got != nil {
		return got.expires(), true
	}
	if got := p.held.find(msgKey{peer: o, id: id}); got != nil {
		return got.expires(), true
	}
	return time.Time{}, false
}

// holdReceipt holds p for owner's devices, and reports whether the relay
// is quiet (then p is left for the handoff to send).
func (r *Relay) holdReceipt(owner jid.JID, p *pendingReceipt) (quiet bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.unsent = p.unsent || r.quiet
	k := owner.String()
	list := r.pruneReceiptsLocked(k)
	if len(list) >= r.limits.Load().PerUserReceipts {
		list = list[1:] // the oldest goes; memory stays bounded
	}
	r.receipts[k] = append(list, p)
	return r.quiet
}

// pruneReceiptsLocked drops expired receipts of one owner and returns the
// rest.
func (r *Relay) pruneReceiptsLocked(k string) []*pendingReceipt {
	now := r.cfg.Now()
	list := r.receipts[k][:0]
	for _, p := range r.receipts[k] {
		if p.expires.After(now) {
			list = append(list, p)
		}
	}
	if len(list) == 0 {
		delete(r.receipts, k)
		return nil
	}
	r.receipts[k] = list
	return list
}

// forwardReceipt sends a receipt to the owner's devices, from the
// reader's address, as a headline the server keeps no copy of.
func (r *Relay) forwardReceipt(ctx context.Context, owner jid.JID, p *pendingReceipt, devices []jid.JID) {
	from, err := address.AtComponent(p.reader, r.cfg.Component)
	if err != nil {
		return
	}
	r.mu.Lock()
	if !r.startSendLocked() {
		p.unsent = true // the handoff sends it
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	defer r.sent()
	payload := []any{p.payload, hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{}}
	if p.device != "" {
		payload = append(payload, expiryxml.Device{ID: p.device})
	}
	for _, d := range devices {
		if err := r.cfg.Send.SendMessage(ctx, stanza.Message{To: d, From: from, Type: stanza.HeadlineMessage},
			payload...); err != nil {
			r.log.Debug("expiry: receipt forward failed", "err", err)
		}
	}
}

// hold adds h under the quotas. It reports false, without error, for a
// message already held. Once held, h names the relay's parties.
func (r *Relay) hold(h *held) (bool, error) {
	size := int64(len(h.raw))
	lim := r.limits.Load()
	ownerName, peerName := h.owner.jid.String(), h.peer.jid.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	// The relay's party for each user, or h's own while the relay has
	// none: it becomes the relay's if h is held. (h's own may be one the
	// relay let go of, named already: a name never changes once set, as
	// a handoff reads names without the lock.)
	owner := r.parties[ownerName]
	if owner == nil {
		owner = h.owner
		if owner.name == "" {
			owner.name = ownerName
		}
	}
	peer := r.parties[peerName]
	if peer == nil {
		peer = h.peer
		if peer.name == "" {
			peer.name = peerName
		}
	}
	if peerName == ownerName {
		peer = owner
	}
	if owner.held.find(msgKey{peer: peer, id: h.id, sent: h.sent}) != nil {
		return false, nil
	}
	sender, pair := peer, pairKey{from: peer, to: owner}
	if h.sent {
		sender = owner
	}
	// A message a sender sends also makes its instance hold a copy for the
	// sender's other devices: the sender must have room for both, or a
	// sender over its quota could still make clinkd hold more.
	need, needBytes := 1, size
	if !h.sent {
		need, needBytes = 2, 2*size
	}
	switch {
	case sender.sentMsgs+need > lim.PerSenderMessages, sender.sentBytes+needBytes > lim.PerSenderBytes:
		r.m.refused.WithLabelValues("sender-quota").Inc()
		return false, component.Errorf(stanza.ResourceConstraint, "clinkd holds as many of your timed messages as it may (%d messages, %d bytes); send more as they expire", lim.PerSenderMessages, lim.PerSenderBytes)
	case !h.sent && r.pairs[pair] >= lim.PerPairMessages:
		r.m.refused.WithLabelValues("pair-quota").Inc()
		return false, component.Errorf(stanza.ResourceConstraint, "clinkd holds as many of your timed messages for %s as it may (%d); send more as they expire", ownerName, lim.PerPairMessages)
	case owner.held.len() >= lim.PerUserMessages, owner.bytes+size > lim.PerUserBytes:
		r.m.refused.WithLabelValues("user-quota").Inc()
		return false, component.Errorf(stanza.ResourceConstraint, "clinkd holds as many timed messages for %s as it may; try again later", ownerName)
	case r.total+size > lim.TotalBytes:
		r.m.refused.WithLabelValues("total-quota").Inc()
		return false, component.Error(stanza.ResourceConstraint, "clinkd holds as many timed messages as it may; try again later")
	}
	if h.twin == nil {
		// The envelope came as a heap buffer of its own (the
		// router's canonical bytes, a handoff's frame): it moves into the
		// slab, and the buffer is zeroed at once. A twin shares its
		// message's bytes, which are there already.
		moved, err := r.slab.Copy(h.raw)
		if err != nil {
			r.m.refused.WithLabelValues("memory").Inc()
			r.log.Warn("expiry: no memory for a timed message", "err", err)
			return false, component.Error(stanza.ResourceConstraint, "clinkd cannot hold more timed messages now; try again later")
		}
		wipe(h.raw, nil)
		h.raw = moved
		r.m.slabBytes.Set(float64(r.slab.Stats().Used))
	}
	h.owner, h.peer = owner, peer
	r.parties[ownerName], r.parties[peerName] = owner, peer
	owner.refs++
	peer.refs++
	owner.held.add(h)
	owner.bytes += size
	sender.sentMsgs++
	sender.sentBytes += size
	if !h.sent {
		r.pairs[pair]++
	}
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
	owner, peer := h.owner, h.peer
	if r.parties[owner.name] != owner || !owner.held.remove(h) {
		return
	}
	size := int64(len(h.raw))
	owner.bytes -= size
	r.total -= size
	sender := h.sender()
	sender.sentMsgs--
	sender.sentBytes -= size
	if !h.sent {
		pair := pairKey{from: peer, to: owner}
		if r.pairs[pair]--; r.pairs[pair] <= 0 {
			delete(r.pairs, pair)
		}
	}
	for _, p := range []*party{owner, peer} {
		if p.refs--; p.refs == 0 {
			delete(r.parties, p.name)
			p.held = heldSet{} // empty: let its table go
		}
	}
	heap.Remove(&r.queue, int(h.index))
	r.m.heldMessages.Dec()
	r.m.heldBytes.Sub(float64(size))
	h.dropped = true
	if h.doneWithRaw() {
		r.freeRaw(h)
	}
}

// freeRaw gives the envelope h and its twin shared back to the slab,
// zeroed. Called with mu held, once doneWithRaw.
func (r *Relay) freeRaw(h *held) {
	if h.raw == nil {
		return
	}
	r.slab.Free(h.raw)
	h.raw = nil
	if h.twin != nil {
		h.twin.raw = nil
	}
}

// compact moves held envelopes out of the slab's sparsest chunks when
// expired ones have left more holes than it allows (internal/slab), so
// that the memory the relay keeps stays near what it holds whatever the
// order in which messages expire. It takes the lock for sweepBatch
// envelopes at a time, so that deliveries go on while it works, and
// unmaps the chunks it emptied after letting go of it. An envelope being
// read (busy, its own or its twin's) stays where it is until a later
// compaction. Not while quiet: a handoff reads the envelopes without the
// lock; a handoff that begins meanwhile stops it, and a later compaction
// moves what is left.
func (r *Relay) compact() {
	r.mu.Lock()
	if r.quiet || !r.slab.NeedsCompaction() {
		r.mu.Unlock()
		return
	}
	locked := time.Now()
	r.slab.Plan()
	r.compactions++
	r.m.compactions.Inc()
	var todo []*held
	for _, h := range r.queue {
		if r.slab.Evacuating(h.raw) {
			todo = append(todo, h)
		}
	}
	r.lastSweep.locked = max(r.lastSweep.locked, time.Since(locked))
	r.mu.Unlock()
	for len(todo) > 0 {
		r.mu.Lock()
		if r.quiet {
			r.mu.Unlock()
			return
		}
		locked := time.Now()
		r.slab.DeferUnmaps()
		batch := todo[:min(len(todo), sweepBatch)]
		todo = todo[len(batch):]
		var err error
		for _, h := range batch {
			// Dropped, or moved already as a twin's: Evacuating
			// no longer names its bytes.
			if h.dropped || h.busy != 0 || h.twin != nil && h.twin.busy != 0 || !r.slab.Evacuating(h.raw) {
				continue
			}
			var moved []byte
			if moved, err = r.slab.Move(h.raw); err != nil {
				break
			}
			h.raw = moved
			if h.twin != nil {
				h.twin.raw = moved
			}
		}
		retired := r.slab.TakeRetired()
		r.m.slabBytes.Set(float64(r.slab.Stats().Used))
		r.lastSweep.locked = max(r.lastSweep.locked, time.Since(locked))
		r.mu.Unlock()
		slab.Unmap(retired)
		if err != nil {
			r.log.Warn("expiry: slab compaction stopped", "err", err)
			return
		}
	}
}

// use reports whether h is still held and, if so, keeps its envelope from
// being freed or moved until release. It reports false too in the case
// that cannot come (32,767 sends of h at once), rather than let the count
// wrap: the device gets h when it announces itself again.
func (r *Relay) use(h *held) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.dropped || h.busy == math.MaxInt16 {
		return false
	}
	h.busy++
	return true
}

// release ends a use, zeroing the envelope if h was dropped meanwhile.
func (r *Relay) release(h *held) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.busy--; h.doneWithRaw() {
		r.freeRaw(h)
	}
}

// decoder returns the envelope's tokens for sending.
func decoder(raw []byte) xml.TokenReader { return xml.NewDecoder(bytes.NewReader(raw)) }

// deliver sends h to each device except skip, and records who got it.
func (r *Relay) deliver(ctx context.Context, h *held, devices []jid.JID, skip jid.JID) {
	from, err := h.peer.at(r.cfg.Component)
	if err != nil {
		return
	}
	for _, d := range devices {
		if d.Equal(skip) {
			continue
		}
		key := r.cfg.Devices.Key(d)
		r.mu.Lock()
		if _, done := h.delivered[key]; done {
			r.mu.Unlock()
			continue // a device that announces itself again gets each message once
		}
		if !r.startSendLocked() {
			r.mu.Unlock()
			return // left for the handoff
		}
		r.mu.Unlock()
		remaining := h.expires().Sub(r.cfg.Now())
		if remaining <= 0 || !r.use(h) {
			r.sent()
			return
		}
		timer := uint32(min(math.Ceil(remaining.Seconds()), math.MaxUint32))
		m := stanza.Message{ID: h.id, To: d, From: from, Type: stanza.HeadlineMessage}
		var err error
		if r.raw != nil {
			err = r.deliverRaw(ctx, m, h, timer)
		} else {
			payload := []any{decoder(h.raw), expiryxml.Timed{Expires: h.expires()}, ephemeral.Ephemeral{Timer: timer}}
			if h.sent {
				payload = append([]any{expiryxml.Sent{By: h.by().String()}}, payload...)
			} else {
				payload = append(payload, receiptsxml.Request{}, markers.Markable{})
			}
			payload = append(payload, hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{})
			err = r.cfg.Send.SendMessage(ctx, m, payload...)
		}
		r.release(h)
		if err != nil {
			r.sent()
			// Still held: the device gets it when it announces itself again.
			r.log.Debug("expiry: delivery failed; kept for later", "err", err)
			continue
		}
		r.mu.Lock()
		h.markDelivered(key)
		r.mu.Unlock()
		r.sent()
	}
}

// deliverRaw writes m with h's envelope as the bytes it holds, and the
// payloads deliver's other path marshals, as the same bytes
// (TestWireMatchesMarshal). The caller holds a use of h.
func (r *Relay) deliverRaw(ctx context.Context, m stanza.Message, h *held, timer uint32) error {
	var a [256]byte
	if !h.sent {
		timed := appendTimed(a[:0], h.expires(), timer)
		return r.raw.SendMessageRaw(ctx, m, h.raw, timed, r.wire.tail)
	}
	sent := appendBy(a[:0], "sent", h.by().String())
	timed := appendTimed(sent[len(sent):], h.expires(), timer)
	return r.raw.SendMessageRaw(ctx, m, sent, h.raw, timed, r.wire.hints)
}

// DeviceOnline delivers to a device that just announced itself whatever
// is held for its user (except the copies of what it sent itself), and the
// held receipts of what its user sent.
func (r *Relay) DeviceOnline(ctx context.Context, user, device jid.JID) {
	if r.awaitHandoff(ctx) != nil {
		return // the device gets what is held when it announces itself again
	}
	r.mu.Lock()
	r.seen.add(user.String())
	var hs []*held
	if o := r.parties[user.String()]; o != nil {
		hs = o.held.all()
	}
	rcs := append([]*pendingReceipt(nil), r.pruneReceiptsLocked(user.String())...)
	if r.quiet {
		// The handoff sends the new device what it has not got; the
		// user's receipts go to all their devices again (a receipt twice
		// is harmless, none is not).
		for _, p := range rcs {
			p.unsent = true
		}
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	for _, h := range hs {
		r.deliver(ctx, h, []jid.JID{device}, h.by())
	}
	for _, p := range rcs {
		r.forwardReceipt(ctx, user, p, []jid.JID{device})
	}
}

// AwaitHandoff makes the relay wait for the state of the clinkd it takes
// over from (docs/expiry.md, "Restart and upgrade"): until EndHandoff,
// every timed message, copy, receipt of a timed message and announcement
// it is handed waits (within its handler's deadline, then it is answered
// resource-constraint, type wait), so that none is answered from a state
// not yet complete.
func (r *Relay) AwaitHandoff() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handoff == nil {
		r.handoff = make(chan struct{})
	}
}

// EndHandoff lets the waiting stanzas through, then sends what the
// previous clinkd left unsent (see flush).
func (r *Relay) EndHandoff(ctx context.Context) {
	r.mu.Lock()
	if r.handoff != nil {
		close(r.handoff)
		r.handoff = nil
	}
	r.mu.Unlock()
	r.flush(ctx)
}

// Quiesce readies the relay to hand its state over: from now on it holds
// what it is handed (messages, copies, receipts, announcements) but sends
// nothing, neither deliveries, copies, receipts nor expiry notices, and
// drops nothing at expiry: the clinkd taking over sends all of it once it
// holds the link. Prosody closes the old link when the new one comes,
// without a word to the old one first, so whatever the old one wrote after
// that would be lost. It returns once the sends already under way have
// finished. Resume undoes it.
func (r *Relay) Quiesce() {
	r.mu.Lock()
	r.quiet = true
	r.mu.Unlock()
	// What was decided before goes out now, before the caller lets the
	// taker link: a stanza half written when Prosody closes this link
	// would be lost, and the state would say it went.
	r.sending.Wait()
}

// Resume ends Quiesce (the handoff did not happen) and sends what was
// left unsent meanwhile.
func (r *Relay) Resume(ctx context.Context) {
	r.mu.Lock()
	r.quiet = false
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	r.flush(ctx)
}

// flush sends what is held but unsent: each held message to its owner's
// online devices that have not got it, the copies for senders' other
// devices not sent yet, and receipts not yet sent to their owner's online
// devices. A device gets each message once, as always.
func (r *Relay) flush(ctx context.Context) {
	r.mu.Lock()
	hs := append([]*held(nil), r.queue...)
	type unsent struct {
		owner jid.JID
		p     *pendingReceipt
	}
	var rcs []unsent
	for k, list := range r.receipts {
		owner, err := jid.Parse(k)
		if err != nil {
			continue
		}
		for _, p := range list {
			if p.unsent {
				p.unsent = false
				rcs = append(rcs, unsent{owner, p})
			}
		}
	}
	r.mu.Unlock()
	for _, h := range hs {
		r.deliver(ctx, h, r.cfg.Devices.Online(h.owner.jid), h.by())
		if !h.sent {
			r.sendCopy(ctx, h)
		}
	}
	for _, u := range rcs {
		r.forwardReceipt(ctx, u.owner, u.p, r.cfg.Devices.Online(u.owner))
	}
}

// awaitHandoff waits while a handoff is awaited.
func (r *Relay) awaitHandoff(ctx context.Context) error {
	r.mu.Lock()
	wait := r.handoff
	r.mu.Unlock()
	if wait == nil {
		return nil
	}
	select {
	case <-wait:
		return nil
	case <-ctx.Done():
		return component.Error(stanza.ResourceConstraint, "clinkd is taking over from the previous one; try again in a moment")
	}
}

// Held returns how many messages and bytes are held.
func (r *Relay) Held() (messages int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queue.Len(), r.total
}

// SlabUsed is the memory outside Go's heap that the relay keeps touched
// for held envelopes: what it holds, and the holes expired ones left that
// compaction has not closed yet (clinkd_expiry_slab_used_bytes).
func (r *Relay) SlabUsed() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slab.Stats().Used
}

// sweepBatch is how many expired messages Run drops in one hold of the
// relay's lock. Dropping one costs about a microsecond, so when a hundred
// thousand expire in the same second (one sender's burst, all with the
// same validity) deliveries wait about a millisecond per batch rather than
// 0.1 s for all of them (BenchmarkSweepPause).
const sweepBatch = 1024

// Run drops messages as they expire and tells the devices that got each
// one to delete it, until ctx ends. Receipts held past their message's
// expiry are dropped on the way.
//
// At most every scrubEvery after messages expired, it overwrites the
// memory the process freed (scrubHeap), so that the copies of an expired
// message that libraries made and dropped are not left for a core dump or
// a swapped page to reveal.
func (r *Relay) Run(ctx context.Context) error {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var lastScrub time.Time
	scrubDue := false
	for {
		r.mu.Lock()
		locked := time.Now()
		r.slab.DeferUnmaps()
		var due []*held
		now := r.cfg.Now()
		for !r.quiet && r.queue.Len() > 0 && !r.queue[0].expires().After(now) && len(due) < sweepBatch {
			h := r.queue[0]
			r.drop(h)
			due = append(due, h)
		}
		// More due than one batch: the lock is let go after this one, so
		// that deliveries and holds go on between batches, and the next
		// batch follows at once. The slab is compacted after the last.
		more := len(due) == sweepBatch
		if len(due) > 0 {
			r.m.slabBytes.Set(float64(r.slab.Stats().Used))
		}
		retired := r.slab.TakeRetired()
		notifying := len(due) > 0 && r.startSendLocked()
		if !more {
			for k := range r.receipts {
				r.pruneReceiptsLocked(k)
			}
		}
		next := time.Hour
		if r.queue.Len() > 0 && !r.quiet {
			next = r.queue[0].expires().Sub(now)
		}
		if len(due) > 0 {
			r.lastSweep.locked = max(r.lastSweep.locked, time.Since(locked))
		}
		r.mu.Unlock()
		slab.Unmap(retired)
		if len(due) > 0 && !more {
			r.compact()
		}
		for _, h := range due {
			r.m.expired.Inc()
			r.notifyExpired(ctx, h)
		}
		if notifying {
			r.sent()
		}
		if len(due) > 0 {
			scrubDue = true
		}
		if more {
			select {
			case <-ctx.Done():
				return nil
			default:
				continue // the next batch, then the compaction and the scrub
			}
		}
		if scrubDue {
			if wait := lastScrub.Add(scrubEvery).Sub(time.Now()); wait > 0 {
				next = min(next, wait)
			} else {
				took := scrubHeap(r.procs)
				lastScrub, scrubDue = time.Now(), false
				r.mu.Lock()
				r.lastSweep.scrub = took
				r.mu.Unlock()
				r.log.Debug("expiry: freed memory overwritten", "took", took)
			}
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
	from, err := h.peer.at(r.cfg.Component)
	if err != nil {
		return
	}
	var byKey string
	if h.sent {
		byKey = r.cfg.Devices.Key(h.by())
	}
	r.mu.Lock()
	keys := make([]string, 0, len(h.delivered)+1)
	for k := range h.delivered {
		keys = append(keys, k)
	}
	if _, dup := h.delivered[byKey]; h.sent && !dup {
		keys = append(keys, byKey)
	}
	r.mu.Unlock()
	for _, k := range keys {
		to, ok := r.cfg.Devices.Resolve(h.owner.jid, k)
		if !ok {
			continue // a device known by its id, offline: its own timer deletes it
		}
		if err := r.cfg.Send.SendMessage(ctx, stanza.Message{To: to, From: from, Type: stanza.HeadlineMessage},
			expiryxml.Expired{ID: h.id}, hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{}); err != nil {
			r.log.Debug("expiry: expiry notice not sent", "err", err)
		}
	}
}

// expiryHeap orders held messages by expiry, earliest first.
type expiryHeap []*held

func (q expiryHeap) Len() int           { return len(q) }
func (q expiryHeap) Less(i, j int) bool { return q[i].expiry < q[j].expiry }
func (q expiryHeap) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = int32(i), int32(j)
}
func (q *expiryHeap) Push(x any) {
	h := x.(*held)
	h.index = int32(len(*q))
	*q = append(*q, h)
}
func (q *expiryHeap) Pop() any {
	old := *q
	h := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return h
}
