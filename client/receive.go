package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/expiryxml"
)

// Receiving (docs/envelope.md, "Transport" and section 9).
//
// Each envelope relayed from a user's address at the component goes
// through these steps, the cheapest first, and the first that fails drops
// it; nothing is spent on a step before the ones before it passed:
//
//  1. throttle: the peer (the user whose address relayed it) is not
//     throttled for failures (throttle.go); else it is dropped unread;
//  2. parse and validate the envelope (section 3);
//  3. author: the envelope's from fits the conversation (checkAuthor);
//  4. time: not expired by the device's clock (with ClockSkew), within
//     the replay window, not accepted before (replay.go);
//  5. key: the author's key from the cache, or one lookup shared by all
//     envelopes that need it (keycache.go);
//  6. signature, then decryption and content (envelope.Open); a bad
//     signature asks the directory again, at most every 10 s, in case the
//     author has a new key;
//  7. record the (from, id) in the replay cache, synced, then show it (or
//     store a key share, within the share throttle).
//
// Envelopes that fail at 2, 3, 5 (no key) or 6 spend a token of the
// peer's failure bucket. A directory that does not answer, or refuses for
// its rate limit, or answers with a checkpoint older than the one pinned
// (ErrStaleCheckpoint), says nothing about the envelope: it is kept, with
// the envelopes of the same peer after it (so their order holds), and
// tried again with backoff. Only a definite failure drops an envelope, and
// every drop is a *DropError from NextEvent and a count in Stats, but for
// those of a throttled peer and of its shares past the share throttle,
// which are counted and reported once per run.

// Waiting for the directory: the first retry after parkFirst, doubling
// up to parkMaxWait, for at most parkGiveUp; at most parkPerPeer
// envelopes per peer and parkMax in all wait (more are dropped as
// "backlog full": a peer flooding while the directory is down cannot
// crowd the others out).
const (
	parkFirst   = 2 * time.Second
	parkMaxWait = time.Minute
	parkGiveUp  = 30 * time.Minute
	parkPerPeer = 64
	parkMax     = 1024
)

// Errors of receiving, beside those of envelope.Open and replay.go.
var (
	// ErrThrottled: the envelope's sender had too many envelopes fail
	// lately; it was dropped unread.
	ErrThrottled = errors.New("client: sender throttled: too many of its envelopes failed")
	// ErrShareThrottled: the sender shared more contact keys lately than
	// the device stores.
	ErrShareThrottled = errors.New("client: too many key shares from this sender")
	// ErrDirectoryUnavailable: the envelope waited parkGiveUp for the key
	// directory to answer.
	ErrDirectoryUnavailable = errors.New("client: the key directory did not answer in time")
	// ErrBacklogFull: too many envelopes were already waiting for the key
	// directory.
	ErrBacklogFull = errors.New("client: too many envelopes waiting for the key directory")
)

// A DropError is an envelope the device refused: it is not shown, and no
// receipt goes out for it. NextEvent returns it as an event (it is also
// an error, to match its reason). Err is the reason, matched with
// errors.Is against the envelope's sentinel errors
// (envelope.ErrBadSignature, …), ErrWrongAuthor, ErrNoKey, ErrReplay,
// ErrExpired, ErrTooOld, ErrFromFuture, ErrThrottled and the others above;
// a *KeyChangeError is matched with errors.As.
type DropError struct {
	ID     string  // the envelope's id; for one dropped unread, the stanza's (clinkd makes it the envelope's)
	From   string  // the author the envelope claims; "" if it was dropped unread
	Peer   jid.JID // the conversation it came in
	Reason string  // a short name of Err: the key of ReceiveStats.Dropped
	Err    error
}

func (e *DropError) Error() string {
	who := e.From
	if who == "" {
		who = e.Peer.String()
	}
	return fmt.Sprintf("client: message %q from %s dropped (%s): %v", e.ID, who, e.Reason, e.Err)
}

// Unwrap returns the reason.
func (e *DropError) Unwrap() error { return e.Err }

// ReceiveStats counts what the device did with what it received.
type ReceiveStats struct {
	Shown        uint64            // messages NextEvent returned
	KeyLookups   uint64            // lookups sent to the key directory, sending included
	KeyCacheHits uint64            // sender keys found in the cache
	Waiting      int               // envelopes waiting for the key directory now
	Retries      uint64            // lookups tried again for waiting envelopes
	Dropped      map[string]uint64 // envelopes refused, by DropError.Reason
	InboxDropped uint64            // stanzas the session's inbox dropped unread (Client.InboxDropped)
	Refused      uint64            // refusals of sent messages reported as events (after Send stopped waiting)
	Gossip       map[string]uint64 // contacts' checkpoints checked (gossip.go), by outcome: consistent, ignored, fork, later
}

// Stats returns the device's counters.
func (d *Device) Stats() ReceiveStats {
	d.rx.mu.Lock()
	defer d.rx.mu.Unlock()
	return ReceiveStats{
		Shown:        d.rx.shown,
		KeyLookups:   d.keys.Lookups(),
		KeyCacheHits: d.keys.hits.Load(),
		Waiting:      d.rx.waiting,
		Retries:      d.rx.retries,
		Dropped:      maps.Clone(d.rx.dropped),
		InboxDropped: d.c.InboxDropped(),
		Refused:      d.rx.refused,
		Gossip:       maps.Clone(d.rx.gossip),
	}
}

// receiver is the state of receiving: what is ready for NextEvent, what
// waits for the directory, and the counters.
type receiver struct {
	mu       sync.Mutex
	out      []outcome             // for NextEvent, in order
	parked   map[string]*waitQueue // by peer
	waiting  int                   // envelopes in parked
	shown    uint64
	retries  uint64
	refused  uint64
	dropped  map[string]uint64
	overflow uint64            // inbox drops reported
	gossip   map[string]uint64 // contacts' checkpoints checked, by GossipResult
	kicked   chan struct{}     // closed and replaced when an event is pushed from outside NextEvent
}

func (r *receiver) init() { r.kicked = make(chan struct{}) }

// kick wakes the NextEvent calls that wait.
func (r *receiver) kick() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.kicked)
	r.kicked = make(chan struct{})
}

func (r *receiver) kickChan() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.kicked
}

type outcome struct {
	ev  Event
	err error
}

// waitQueue holds a peer's envelopes that wait for the directory, in
// order.
type waitQueue struct {
	peer    string
	queue   []*inbound
	attempt int
	due     time.Time // wall clock
	since   time.Time // wall clock, when the first was kept
	lastErr error
}

// inbound is an envelope on its way through the steps.
type inbound struct {
	s      *Stanza
	peer   jid.JID
	sent   bool                  // a copy of this user's own message (Message.Outgoing)
	device jid.JID               // the device that sent a copy
	env    *envelopexml.Envelope // once parsed
}

// NextEvent returns the next event of the device: a message, a receipt,
// an expiry (clinkd's notice or the device's own timer), a key change, an
// envelope the device refused (*DropError), a refusal of a message it
// sent that Send no longer waited for (*RefusedError), a change of the
// connection, or an overflow of the inbox. Key shares are stored on the
// way. Every envelope the device refuses is reported (those of a
// throttled sender once per run, and counted in Stats). Envelopes that
// wait for the key directory are tried again by later calls.
//
// It returns an error only when ctx ends, or when the session ended for
// good (an error matching ErrClosed, after the drops of what still
// waited): the session reconnects by itself meanwhile.
//
// Only messages from a user's address at the component are read
// (docs/envelope.md, "Transport"); an envelope that arrives any other way
// is never opened. NextEvent may be called from several goroutines.
func (d *Device) NextEvent(ctx context.Context) (Event, error) {
	return d.next(ctx, nil)
}

// next is NextEvent for the events that want accepts (all if nil); the
// others stay queued, in order, for later calls.
func (d *Device) next(ctx context.Context, want func(outcome) bool) (Event, error) {
	for {
		if o, ok := d.rx.popIf(want); ok {
			return o.ev, o.err
		}
		if n := d.c.InboxDropped(); n > d.rx.reportedOverflow(n) {
			continue // queued
		}
		if e, ok := d.expires.due(d.now()); ok {
			d.rx.push(outcome{ev: e})
			continue
		}
		if q := d.rx.takeDue(time.Now()); q != nil {
			d.retry(ctx, q)
			continue
		}
		wait, cancel := context.WithCancel(ctx)
		var deadline time.Time
		if due, ok := d.rx.nextDue(); ok {
			deadline = due
		}
		if at, ok := d.expires.next(); ok {
			if due := time.Now().Add(at.Sub(d.now())); deadline.IsZero() || due.Before(deadline) {
				deadline = due
			}
		}
		if !deadline.IsZero() {
			cancel()
			wait, cancel = context.WithDeadline(ctx, deadline)
		}
		kicked := d.rx.kickChan()
		go func() {
			select {
			case <-kicked:
				cancel()
			case <-wait.Done():
			}
		}()
		s, err := d.c.Next(wait, func(s *Stanza) bool {
			return s.Kind == "message" && s.From.Domainpart() == d.component.Domainpart()
		})
		cancel()
		switch {
		case err == nil:
			d.handle(ctx, s)
		case ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
			// Something is due, or an event was pushed.
		case errors.Is(err, ErrClosed) && d.dropAllWaiting(ErrClosed, "session ended"):
			// Their drops first, then ErrClosed.
		case errors.Is(err, ErrClosed):
			if o, ok := d.rx.popIf(want); ok {
				return o.ev, o.err
			}
			return nil, err
		default:
			return nil, err
		}
	}
}

// reportedOverflow queues an *InboxOverflow for the inbox drops up to n
// not reported yet, and returns what was reported before.
func (r *receiver) reportedOverflow(n uint64) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.overflow
	if n > before {
		r.out = append(r.out, outcome{ev: &InboxOverflow{Dropped: n - before}})
		r.overflow = n
	}
	return before
}

// Receive returns the next text message, in any conversation. An envelope
// the device refused is returned as its *DropError. Other events stay
// queued, in order, for NextEvent, within the same bounds as all of them.
//
// Deprecated: use NextEvent, which also reports receipts, expiries, key
// changes and connection changes; an app that only calls Receive never
// learns of them.
func (d *Device) Receive(ctx context.Context) (*Message, error) {
	ev, err := d.next(ctx, func(o outcome) bool {
		switch e := o.ev.(type) {
		case *Message:
			return true
		case *KeyChanged:
			return e.Message != nil
		case *DropError:
			return true
		}
		return o.err != nil
	})
	if err != nil {
		return nil, err
	}
	switch e := ev.(type) {
	case *Message:
		return e, nil
	case *KeyChanged:
		return e.Message, nil
	case *DropError:
		return nil, e
	}
	return nil, fmt.Errorf("client: unexpected event %T", ev)
}

// Acknowledge sends the sender of m a delivery receipt or a read marker.
// It does nothing for an Outgoing message.
func (d *Device) Acknowledge(ctx context.Context, m *Message, kind ReceiptKind) error {
	if m.Outgoing {
		return nil // our own message, seen on another device
	}
	return d.c.SendReceipt(ctx, d.component, m.From, m.ID, kind, !m.Expires.IsZero())
}

// handle takes one message relayed by clinkd.
func (d *Device) handle(ctx context.Context, s *Stanza) {
	if s.Type == "error" {
		// A refusal of a message this device sent, that Send no longer
		// waited for (or that a raw SendEnvelope sent).
		peer, _ := address.User(s.From)
		d.rx.mu.Lock()
		d.rx.refused++
		d.rx.mu.Unlock()
		d.rx.push(outcome{ev: refusal(s, s.ID, peer)})
		return
	}
	peer, ok := relayPeer(s, d.component)
	if !ok {
		return // from the component itself: nothing for the app
	}
	if id, kind, ok := s.ReceiptFor(); ok {
		if d.sent.seen(id, kind) {
			d.rx.push(outcome{ev: &Receipt{ID: id, From: peer, Kind: kind, Device: s.ReceiptDevice()}})
		}
		return
	}
	if id, ok := s.ExpiredID(); ok {
		if d.expires.notice(id) {
			d.rx.push(outcome{ev: &Expiry{ID: id, Peer: peer}})
		}
		return
	}
	if !s.Has(EnvelopeName) && !s.Has(EnvelopeName1) {
		return
	}
	in := &inbound{s: s, peer: peer}
	if ok, first := d.fails.allow(peer.String(), d.now()); !ok {
		d.drop(in, "throttled", ErrThrottled, false, first)
		return
	}
	var sent expiryxml.Sent
	if s.Decode(SentName, &sent) == nil {
		in.sent = true
		in.device, _ = jid.Parse(sent.By)
	}
	if d.rx.hasWaiting(peer.String()) {
		d.keep(in, nil) // behind its peer's earlier envelopes, in order
		return
	}
	if err := d.process(ctx, in); err != nil {
		d.keep(in, err)
	}
}

// process takes an envelope through the steps. It returns an error only
// when the directory could not answer: the envelope is to be kept and
// tried again. Everything else ends here, as an event or a drop.
func (d *Device) process(ctx context.Context, in *inbound) error {
	if in.env == nil {
		env, err := in.s.Envelope()
		if err == nil {
			err = env.Validate()
		}
		if err != nil {
			reason := "invalid"
			if errors.Is(err, envelopexml.ErrUnsupportedVersion) {
				reason = "unsupported version"
			}
			d.drop(in, reason, err, true, true)
			return nil
		}
		in.env = env
	}
	env := in.env
	if err := checkAuthor(d.me, in.peer, in.sent, env); err != nil {
		d.drop(in, "wrong author", err, true, true)
		return nil
	}
	now := d.now()
	if !env.Expires.IsZero() && now.After(env.Expires.Add(ClockSkew)) {
		d.drop(in, "expired", fmt.Errorf("%w at %s, %v ago by this device's clock", ErrExpired, env.Expires.Format(time.RFC3339), now.Sub(env.Expires).Round(time.Second)), false, true)
		return nil
	}
	if err := d.replay.check(env.From, env.ID, env.Time, now); err != nil {
		d.drop(in, replayReason(err), err, false, true)
		return nil
	}

	key, err := d.keys.SenderKey(ctx, env.From)
	var change *KeyChange // when this envelope revealed a new key of its author
	if err != nil {
		var kc *KeyChangeError
		if !errors.As(err, &kc) || key == nil {
			return d.keyFailed(in, err)
		}
		change = changeFor(kc, env.From)
	}
	if key == nil {
		d.drop(in, "no key", fmt.Errorf("%w: %s", ErrNoKey, env.From), true, true)
		return nil
	}
	c, err := envelope.Open(env, d.store.Identity(), key.Key, d.store)
	if errors.Is(err, envelope.ErrBadSignature) && change == nil {
		// The author may have a new key: ask again (at most every 10 s).
		fetched, _ := d.keys.cache.fetchedAt(env.From)
		fresh, asked, rerr := d.keys.RefreshSenderKey(ctx, env.From)
		var kc *KeyChangeError
		switch {
		case rerr != nil && errors.As(rerr, &kc) && fresh != nil:
			// The directory binds another key now: the envelope is
			// judged by it, and the change goes with it.
			change, key = changeFor(kc, env.From), fresh
			c, err = envelope.Open(env, d.store.Identity(), key.Key, d.store)
		case rerr != nil && errors.As(rerr, &kc):
			d.drop(in, "key changed", rerr, true, true) // the binding ended
			return nil
		case rerr != nil:
			return d.keyFailed(in, rerr)
		case !asked && env.Time.After(fetched):
			// Signed after the key in hand was verified, which is too
			// recent to ask about again: the author may have published a
			// new key since. It waits until the directory may be asked.
			return errRefreshLater
		case asked && fresh == nil:
			d.drop(in, "no key", fmt.Errorf("%w: %s", ErrNoKey, env.From), true, true)
			return nil
		case asked && fresh.Fingerprint != key.Fingerprint:
			// Another key, that another lookup (a Send) found first and
			// reported: the envelope is judged by it.
			fp := fresh.Fingerprint
			change, key = &KeyChange{JID: env.From, Old: key.Fingerprint, New: &fp}, fresh
			c, err = envelope.Open(env, d.store.Identity(), key.Key, d.store)
		}
		// Otherwise the same key, verified just now: the signature is bad.
	}
	if err != nil {
		if change != nil {
			d.rx.push(outcome{ev: &KeyChanged{Change: *change}})
		}
		if errors.Is(err, envelope.ErrBadSignature) {
			// The directory's key for the author did not verify it: the
			// checkpoint it carries (signed by the log, whoever carried
			// it) may show that this device's directory is not the
			// author's (gossip.go).
			d.checkGossip(ctx, env.From, env.Checkpoint)
		}
		d.drop(in, openReason(err), err, true, true)
		return nil
	}

	if err := d.replay.record(env.From, env.ID, env.Time, now); err != nil {
		d.drop(in, replayReason(err), err, false, true)
		return nil
	}
	author, err := jid.Parse(env.From)
	if err != nil { // Validate checked it is canonical: cannot happen
		d.drop(in, "invalid", err, true, true)
		return nil
	}
	m := &Message{
		ID: env.ID, From: author, Peer: in.peer, Enhanced: env.Kind == envelopexml.Enhanced,
		Time: env.Time, Expires: env.Expires, Outgoing: in.sent, Device: in.device,
	}
	if env.From != d.me {
		// The author's key, as the user decided about it (trust.go): a
		// first contact is reported, a key not accepted is marked.
		t, first, err := d.observeKey(env.From, key, change)
		switch {
		case err != nil:
			d.drop(in, "key store", err, false, true)
			return nil
		case first:
			d.rx.push(outcome{ev: &NewContact{JID: env.From, Fingerprint: key.Fingerprint, Index: key.Index, Version: key.Version}})
		}
		m.Unaccepted = t.State == Changed
	}
	// Gossip (gossip.go): the author's checkpoint against this device's.
	d.checkGossip(ctx, env.From, env.Checkpoint)
	switch c.Kind {
	case envelope.KindKeyShare:
		if ok, first := d.shares.allow(in.peer.String(), now); !ok {
			d.drop(in, "share throttled", ErrShareThrottled, false, first)
			return nil
		}
		d.shares.spend(in.peer.String(), now)
		sk := keystore.SharedKey{Key: c.Key}
		if !in.sent {
			sk.PeerKey = key.Fingerprint // shared by the peer, with this key
		}
		if err := d.store.AddSharedKey(in.peer.String(), sk); err != nil {
			d.drop(in, "key store", err, false, true)
		}
		if change != nil {
			d.rx.push(outcome{ev: &KeyChanged{Change: *change}})
		}
	case envelope.KindText:
		m.Text = c.Text
		d.rx.mu.Lock()
		d.rx.shown++
		d.rx.mu.Unlock()
		if !m.Expires.IsZero() {
			d.expires.schedule(m.ID, in.peer, m.Expires)
		}
		if change != nil {
			d.rx.push(outcome{ev: &KeyChanged{Change: *change, Message: m}})
		} else {
			d.rx.push(outcome{ev: m})
		}
	}
	return nil
}

// changeFor returns the change of kc about bare.
func changeFor(kc *KeyChangeError, bare string) *KeyChange {
	for _, c := range kc.Changes {
		if c.JID == bare {
			return &c
		}
	}
	return &KeyChange{JID: bare}
}

// errRefreshLater keeps an envelope until the directory may be asked
// again for its author's key.
var errRefreshLater = errors.New("client: the author's key may be asked again only later")

// keyFailed handles an error of the directory while looking the author
// of in up: one that may pass is returned, to keep the envelope; a change
// of key and anything definite drop it.
func (d *Device) keyFailed(in *inbound, err error) error {
	var kc *KeyChangeError
	switch {
	case transient(err):
		return err
	case errors.As(err, &kc):
		d.drop(in, "key changed", err, false, true)
	case errors.Is(err, ErrClosed):
		d.drop(in, "session ended", err, false, true)
	default:
		d.drop(in, "directory", err, false, true)
	}
	return nil
}

// transient reports whether a lookup's error may pass: the directory's
// rate limit, a timeout, clinkd unreachable for now, a checkpoint older
// than the pinned one (answers out of order), or the caller giving up.
func transient(err error) bool {
	var se stanza.Error
	if errors.As(err, &se) {
		switch se.Condition {
		case stanza.ResourceConstraint, stanza.RemoteServerTimeout, stanza.RemoteServerNotFound,
			stanza.ServiceUnavailable, stanza.InternalServerError:
			return true
		}
		return se.Type == stanza.Wait
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, ErrStaleCheckpoint)
}

// drop refuses in: it counts it, reports it to NextEvent when report, and
// spends a token of its peer's failure bucket when failed.
func (d *Device) drop(in *inbound, reason string, err error, failed, report bool) {
	if failed {
		d.fails.spend(in.peer.String(), d.now())
	}
	e := &DropError{ID: in.s.ID, Peer: in.peer, Reason: reason, Err: err}
	if in.env != nil {
		e.ID, e.From = in.env.ID, in.env.From
	}
	d.rx.mu.Lock()
	defer d.rx.mu.Unlock()
	if d.rx.dropped == nil {
		d.rx.dropped = map[string]uint64{}
	}
	d.rx.dropped[reason]++
	if report {
		d.rx.out = append(d.rx.out, outcome{ev: e})
	}
}

func replayReason(err error) string {
	switch {
	case errors.Is(err, ErrReplay):
		return "replay"
	case errors.Is(err, ErrTooOld):
		return "too old"
	case errors.Is(err, ErrFromFuture):
		return "from the future"
	}
	return "replay cache"
}

// openReason names an error of envelope.Open by the outcomes of
// docs/envelope.md, section 7.
func openReason(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{envelope.ErrUnsupportedVersion, "unsupported version"},
		{envelope.ErrInvalid, "invalid"},
		{envelope.ErrKeySize, "key size"},
		{envelope.ErrBadSignature, "bad signature"},
		{envelope.ErrNotForMe, "not for me"},
		{envelope.ErrNoContactKey, "no contact key"},
		{envelope.ErrTampered, "tampered"},
		{envelope.ErrUnsupportedContent, "unsupported content"},
		{envelope.ErrBadContent, "bad content"},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// keep makes in wait for the directory (err says why, if in was tried):
// behind its peer's waiting envelopes, or in a new queue due after
// parkFirst.
func (d *Device) keep(in *inbound, err error) {
	now := time.Now()
	d.rx.mu.Lock()
	q := d.rx.parked[in.peer.String()]
	if q == nil {
		if d.rx.parked == nil {
			d.rx.parked = map[string]*waitQueue{}
		}
		q = &waitQueue{peer: in.peer.String(), due: now.Add(backoff(0)), since: now}
		d.rx.parked[q.peer] = q
	}
	if err != nil {
		q.lastErr = err
	}
	full := len(q.queue) >= parkPerPeer || d.rx.waiting >= parkMax
	if !full {
		q.queue = append(q.queue, in)
		d.rx.waiting++
	}
	if len(q.queue) == 0 {
		delete(d.rx.parked, q.peer)
	}
	d.rx.mu.Unlock()
	if full {
		d.drop(in, "backlog full", fmt.Errorf("%w (%v)", ErrBacklogFull, err), false, true)
	}
}

// retry tries q's envelopes again, in order, until one must wait again:
// it and those after it go back, due after the next backoff.
func (d *Device) retry(ctx context.Context, q *waitQueue) {
	d.rx.mu.Lock()
	d.rx.retries++
	d.rx.mu.Unlock()
	for i, in := range q.queue {
		if time.Since(q.since) > parkGiveUp {
			for _, in := range q.queue[i:] {
				d.drop(in, "directory unavailable", fmt.Errorf("%w: %v", ErrDirectoryUnavailable, q.lastErr), false, true)
			}
			return
		}
		if err := d.process(ctx, in); err != nil {
			q.queue, q.lastErr = q.queue[i:], err
			q.attempt++
			q.due = time.Now().Add(backoff(q.attempt))
			d.rx.putBack(q)
			return
		}
	}
}

// backoff is the wait before the attempt-th retry: parkFirst doubling up
// to parkMaxWait, less up to a quarter at random so that the retries of
// several peers spread out.
func backoff(attempt int) time.Duration {
	w := parkMaxWait
	if attempt < 10 {
		w = min(parkFirst<<attempt, parkMaxWait)
	}
	return w - time.Duration(rand.Int64N(int64(w/4)))
}

// push queues an event and wakes the NextEvent calls that wait.
func (r *receiver) push(o outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out = append(r.out, o)
	close(r.kicked)
	r.kicked = make(chan struct{})
}

// popIf takes the first queued event that want accepts (any if nil).
func (r *receiver) popIf(want func(outcome) bool) (outcome, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, o := range r.out {
		if want != nil && !want(o) {
			continue
		}
		copy(r.out[i:], r.out[i+1:])
		r.out[len(r.out)-1] = outcome{}
		r.out = r.out[:len(r.out)-1]
		return o, true
	}
	return outcome{}, false
}

// hasWaiting reports whether envelopes of peer wait for the directory.
func (r *receiver) hasWaiting(peer string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.parked[peer] != nil
}

// takeDue removes and returns the queue due first, if one is due at now.
func (r *receiver) takeDue(now time.Time) *waitQueue {
	r.mu.Lock()
	defer r.mu.Unlock()
	var first *waitQueue
	for _, q := range r.parked {
		if !q.due.After(now) && (first == nil || q.due.Before(first.due)) {
			first = q
		}
	}
	if first != nil {
		delete(r.parked, first.peer)
		r.waiting -= len(first.queue)
	}
	return first
}

// nextDue returns when the first waiting queue is due.
func (r *receiver) nextDue() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var due time.Time
	for _, q := range r.parked {
		if due.IsZero() || q.due.Before(due) {
			due = q.due
		}
	}
	return due, !due.IsZero()
}

// putBack returns a queue taken by takeDue; envelopes of its peer that
// arrived meanwhile go after it.
func (r *receiver) putBack(q *waitQueue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.parked == nil {
		r.parked = map[string]*waitQueue{}
	}
	if later := r.parked[q.peer]; later != nil {
		q.queue = append(q.queue, later.queue...)
	}
	r.parked[q.peer] = q
	r.waiting += len(q.queue)
}

// dropAllWaiting drops every waiting envelope with err, reported, and
// says whether there was any.
func (d *Device) dropAllWaiting(err error, reason string) bool {
	d.rx.mu.Lock()
	var all []*inbound
	for peer, q := range d.rx.parked {
		all = append(all, q.queue...)
		delete(d.rx.parked, peer)
	}
	d.rx.waiting = 0
	d.rx.mu.Unlock()
	for _, in := range all {
		d.drop(in, reason, err, false, true)
	}
	return len(all) > 0
}

// relayPeer returns the user whose address at the component sent s, the
// other party of the conversation, if s is a message clinkd relayed:
// not an error, from a user's address at component (docs/envelope.md,
// "Transport"). Anything else carries nothing for the device.
func relayPeer(s *Stanza, component jid.JID) (jid.JID, bool) {
	if s.Kind != "message" || s.Type == "error" || s.From.Domainpart() != component.Domainpart() {
		return jid.JID{}, false
	}
	peer, err := address.User(s.From)
	if err != nil {
		return jid.JID{}, false
	}
	return peer, true
}

// ErrWrongAuthor is returned for an envelope whose signed from does not
// fit the conversation it was relayed in: someone writing through another
// user's address. The message is dropped.
var ErrWrongAuthor = errors.New("client: the envelope's author does not fit the conversation it came in")

// checkAuthor applies the receiving rule of docs/envelope.md, "Transport",
// to a valid envelope relayed from peer's address: its author is the peer;
// or, in a copy marked sent, this user (me), writing to the peer. JIDs are
// canonical on both sides (Validate, jid), so they compare byte for byte.
func checkAuthor(me string, peer jid.JID, sent bool, env *envelopexml.Envelope) error {
	p := peer.String()
	switch {
	case !sent && env.From != p:
		return fmt.Errorf("%w: message %s in the conversation with %s claims to be from %s", ErrWrongAuthor, env.ID, p, env.From)
	case sent && env.From != me:
		return fmt.Errorf("%w: copy %s of a message sent to %s claims to be from %s, not this user", ErrWrongAuthor, env.ID, p, env.From)
	case sent && !slices.Contains(env.To, p):
		return fmt.Errorf("%w: copy %s of a message sent to %s does not name %s as a recipient", ErrWrongAuthor, env.ID, p, p)
	}
	return nil
}
