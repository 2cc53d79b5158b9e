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
	"github.com/clinkme/clinkd/extensions/envelopexml"
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
// receipt goes out for it. Err is the reason, matched with errors.Is
// against the envelope's sentinel errors (envelope.ErrBadSignature, …),
// ErrWrongAuthor, ErrNoKey, ErrReplay, ErrExpired, ErrTooOld,
// ErrFromFuture, ErrThrottled and the others above; a *KeyChangeError is
// matched with errors.As.
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
	}
}

// receiver is the state of receiving: what is ready for NextEvent, what
// waits for the directory, and the counters.
type receiver struct {
	mu      sync.Mutex
	out     []outcome             // for NextEvent, in order
	parked  map[string]*waitQueue // by peer
	waiting int                   // envelopes in parked
	shown   uint64
	retries uint64
	dropped map[string]uint64
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
	s    *Stanza
	peer jid.JID
	sent bool
	env  *envelopexml.Envelope // once parsed
}

// A Message is a decrypted message, whose signature was verified against
// the sender's key from the verified directory.
type Message struct {
	ID      string
	From    jid.JID // the author
	Peer    jid.JID // the other party of the conversation
	Text    string
	Secure  bool      // sealed with the per-contact key
	Expires time.Time // zero for an ordinary message
	Sent    bool      // a copy of a message one of this user's devices sent
}

// An Event is what a device receives from clinkd: a *Message, a *Receipt
// or an *Expiry.
type Event interface{ event() }

func (*Message) event() {}

// A Receipt says that the recipient's device got (Delivered) or showed
// (Displayed) a message this user sent.
type Receipt struct {
	ID   string
	From jid.JID // the recipient who sent it
	Kind ReceiptKind
}

func (*Receipt) event() {}

// An Expiry says that a timed message's validity ended: delete it.
type Expiry struct {
	ID   string
	Peer jid.JID // the conversation
}

func (*Expiry) event() {}

// NextEvent returns the next message, receipt or expiry notice from
// clinkd. Key shares are stored on the way. An envelope the device
// refuses is returned as a *DropError (and dropped), so the caller sees
// every forgery, replay and expired message; those of a throttled sender
// are counted (Stats) and reported once per run. Envelopes that wait for
// the key directory are tried again by later calls.
//
// Only messages from a user's address at the component are read
// (docs/envelope.md, "Transport"); an envelope that arrives any other way
// is never opened. NextEvent may be called from several goroutines.
func (d *Device) NextEvent(ctx context.Context) (Event, error) {
	for {
		if o, ok := d.rx.pop(); ok {
			return o.ev, o.err
		}
		if q := d.rx.takeDue(time.Now()); q != nil {
			d.retry(ctx, q)
			continue
		}
		wait, cancel := ctx, context.CancelFunc(func() {})
		if due, ok := d.rx.nextDue(); ok {
			wait, cancel = context.WithDeadline(ctx, due)
		}
		s, err := d.c.Next(wait, func(s *Stanza) bool {
			return s.Kind == "message" && s.Type != "error" && s.From.Domainpart() == d.component.Domainpart()
		})
		cancel()
		switch {
		case err == nil:
			d.handle(ctx, s)
		case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			// Envelopes waiting for the directory are due.
		case errors.Is(err, ErrClosed) && d.dropAllWaiting(ErrClosed, "session ended"):
			// Their drops first, then ErrClosed.
		default:
			return nil, err
		}
	}
}

// Receive returns the next text message, in any conversation, skipping
// receipts and expiry notices.
func (d *Device) Receive(ctx context.Context) (*Message, error) {
	for {
		e, err := d.NextEvent(ctx)
		if err != nil {
			return nil, err
		}
		if m, ok := e.(*Message); ok {
			return m, nil
		}
	}
}

// Acknowledge sends the sender of m a delivery receipt or a read marker.
func (d *Device) Acknowledge(ctx context.Context, m *Message, kind ReceiptKind) error {
	if m.Sent {
		return nil // our own message, seen on another device
	}
	return d.c.SendReceipt(ctx, d.component, m.From, m.ID, kind, !m.Expires.IsZero())
}

// handle takes one message relayed by clinkd.
func (d *Device) handle(ctx context.Context, s *Stanza) {
	peer, ok := relayPeer(s, d.component)
	if !ok {
		return // from the component itself: nothing for the app
	}
	if id, kind, ok := s.ReceiptFor(); ok {
		d.rx.push(outcome{ev: &Receipt{ID: id, From: peer, Kind: kind}})
		return
	}
	if id, ok := s.ExpiredID(); ok {
		d.rx.push(outcome{ev: &Expiry{ID: id, Peer: peer}})
		return
	}
	if !s.Has(EnvelopeName) {
		return
	}
	in := &inbound{s: s, peer: peer}
	if ok, first := d.fails.allow(peer.String(), d.now()); !ok {
		d.drop(in, "throttled", ErrThrottled, false, first)
		return
	}
	in.sent = s.Has(SentName)
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
	if err != nil {
		return d.keyFailed(in, err)
	}
	if key == nil {
		d.drop(in, "no key", fmt.Errorf("%w: %s", ErrNoKey, env.From), true, true)
		return nil
	}
	c, err := envelope.Open(env, d.store.Identity(), key.Key, d.store)
	if errors.Is(err, envelope.ErrBadSignature) {
		// The author may have a new key: ask again (at most every 10 s).
		fresh, asked, rerr := d.keys.RefreshSenderKey(ctx, env.From)
		var kc *KeyChangeError
		switch {
		case rerr != nil && errors.As(rerr, &kc):
			// The directory binds another key now. Whether or not this
			// envelope verifies with it, the change is what to report.
			failed := fresh == nil
			if fresh != nil {
				_, oerr := envelope.Open(env, d.store.Identity(), fresh.Key, d.store)
				failed = errors.Is(oerr, envelope.ErrBadSignature)
			}
			d.drop(in, "key changed", rerr, failed, true)
			return nil
		case rerr != nil:
			return d.keyFailed(in, rerr)
		case asked && fresh == nil:
			d.drop(in, "no key", fmt.Errorf("%w: %s", ErrNoKey, env.From), true, true)
			return nil
		}
		// The same key, verified just now: the signature is bad.
	}
	if err != nil {
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
	m := &Message{ID: env.ID, From: author, Peer: in.peer, Secure: env.Kind == envelopexml.Enhanced, Expires: env.Expires, Sent: in.sent}
	switch c.Kind {
	case envelope.KindKeyShare:
		if ok, first := d.shares.allow(in.peer.String(), now); !ok {
			d.drop(in, "share throttled", ErrShareThrottled, false, first)
			return nil
		}
		d.shares.spend(in.peer.String(), now)
		if err := d.store.AddContactKey(in.peer.String(), c.Key); err != nil {
			d.drop(in, "key store", err, false, true)
		}
	case envelope.KindText:
		m.Text = c.Text
		d.rx.mu.Lock()
		d.rx.shown++
		d.rx.mu.Unlock()
		d.rx.push(outcome{ev: m})
	}
	return nil
}

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
		d.rx.out = append(d.rx.out, outcome{err: e})
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

func (r *receiver) push(o outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out = append(r.out, o)
}

func (r *receiver) pop() (outcome, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.out) == 0 {
		return outcome{}, false
	}
	o := r.out[0]
	r.out[0] = outcome{}
	r.out = r.out[1:]
	return o, true
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
