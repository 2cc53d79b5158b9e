package client

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// Gossip (docs/envelope.md, section 12): every envelope a device sends
// carries its latest verified checkpoint of the key directory log, signed
// with the envelope; a device that opens one proves that checkpoint
// consistent with its own pin, asking the directory for the proof. A
// server that shows one device a log of its own (a split view) cannot
// prove the two views consistent: the device raises an *Alarm of kind
// AlarmFork with both signed checkpoints as evidence.

// AlarmKind says what an Alarm is about: AlarmOwnKey, AlarmFork,
// AlarmRollback (the key store's kinds, which keep them).
type AlarmKind = keystore.AlarmKind

// The kinds of alarm.
const (
	AlarmOwnKey   = keystore.AlarmOwnKey
	AlarmFork     = keystore.AlarmFork
	AlarmRollback = keystore.AlarmRollback
)

// An Alarm is something the device found that says the key directory's
// server, or someone with its keys, is not honest with this user:
//
//   - AlarmOwnKey: the directory holds an entry for the user's own JID
//     that this device did not make (a reset, a delete, another key):
//     Entries lists them. Found at login and every MonitorEvery.
//   - AlarmFork: a contact's envelope carried a checkpoint that the
//     directory could not prove consistent with this device's (JID is
//     that contact): two views of one log. Evidence holds this device's
//     signed checkpoint and the contact's.
//   - AlarmRollback: the directory kept answering with a checkpoint
//     older than the one this device accepted. Evidence holds both.
//
// The key store keeps every alarm (Device.Alarms); NextEvent returns
// each once as it happens. The app must show it loudly.
type Alarm struct {
	Kind     AlarmKind
	JID      string
	Text     string
	Time     time.Time
	Evidence [2][]byte      // signed checkpoints (fork, rollback): this device's, then the other
	Entries  []HistoryEntry // own key: the entries this device did not make
}

func (*Alarm) event() {}

func (a *Alarm) String() string { return fmt.Sprintf("%s alarm: %s", a.Kind, a.Text) }

// A StaleCheckpointError is the answer of a directory whose checkpoint
// is older than the one this device accepted: it matches
// ErrStaleCheckpoint and holds both signed checkpoints. The device asks
// again once (two answers can cross); a second one is an AlarmRollback.
type StaleCheckpointError struct {
	Pinned, Served *VerifiedCheckpoint
}

func (e *StaleCheckpointError) Error() string {
	return fmt.Sprintf("%v: the directory served a log of %d entries, after this device accepted one of %d: it hides newer entries (a rollback) unless two answers crossed",
		ErrStaleCheckpoint, e.Served.Size, e.Pinned.Size)
}

// Is matches ErrStaleCheckpoint.
func (e *StaleCheckpointError) Is(target error) bool { return target == ErrStaleCheckpoint }

// gossipNote returns what an envelope carries of the pinned checkpoint
// signed: the note as accepted, or, when it is larger than an envelope
// takes, the note with the log's signature alone (cosignatures dropped:
// the log's signature is the evidence). nil when it cannot be carried.
func gossipNote(signed []byte, origin string) []byte {
	if len(signed) == 0 {
		return nil
	}
	if len(signed) <= envelopexml.MaxCheckpointSize {
		return signed
	}
	text, sigs, ok := strings.Cut(string(signed), "\n\n")
	if !ok {
		return nil
	}
	for _, line := range strings.Split(sigs, "\n") {
		if strings.HasPrefix(line, "— "+origin+" ") {
			out := []byte(text + "\n\n" + line + "\n")
			if len(out) <= envelopexml.MaxCheckpointSize {
				return out
			}
		}
	}
	return nil
}

// outgoingCheckpoint is the checkpoint this device's envelopes carry
// (nil before it accepted one: it sends version 0 then).
func (d *Device) outgoingCheckpoint() []byte {
	origin := d.keys.verifier.Name()
	cp, err := d.keys.pins.Checkpoint(origin)
	if err != nil {
		return nil
	}
	return gossipNote(cp, origin)
}

// GossipResult is what a device made of a checkpoint a contact's
// envelope carried.
type GossipResult int

// The outcomes of CheckGossip (docs/envelope.md, section 12.3).
const (
	GossipConsistent GossipResult = iota // proven one log with this device's pin (or it extends it: pinned)
	GossipIgnored                        // not a checkpoint of this device's log (another log, or a bad signature): no evidence of anything
	GossipFork                           // proven two logs, or the directory could not prove one: an alarm
	GossipLater                          // the directory did not answer now: nothing learnt
)

func (r GossipResult) String() string {
	return [...]string{"consistent", "ignored", "fork", "later"}[r]
}

// gossipCache remembers the checkpoints already proven consistent with
// an earlier pin of no smaller size: pins only grow by proof, so they
// stay consistent with every later one, and the next envelope from the
// same contact costs no request. Bounded; cleared when full.
type gossipCache struct {
	mu      sync.Mutex
	proven  map[[32]byte]bool
	alarmed map[[32]byte]bool // forks already raised, by both notes
}

const gossipCacheMax = 1024

func (c *gossipCache) has(k [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proven[k]
}

func (c *gossipCache) add(k [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proven == nil || len(c.proven) >= gossipCacheMax {
		c.proven = map[[32]byte]bool{}
	}
	c.proven[k] = true
}

// firstAlarm reports whether the fork of these two notes is new.
func (c *gossipCache) firstAlarm(a, b []byte) bool {
	k := sha256.Sum256(append(append([]byte{}, a...), b...))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.alarmed == nil {
		c.alarmed = map[[32]byte]bool{}
	}
	if c.alarmed[k] {
		return false
	}
	c.alarmed[k] = true
	return true
}

// CheckGossip proves theirs, a signed checkpoint a contact's envelope
// carried, consistent with this directory client's pin (docs/envelope.md,
// section 12.3). GossipFork comes with a *ForkError holding both signed
// checkpoints; GossipLater with the directory's error.
func (d *KeyDirectory) CheckGossip(ctx context.Context, theirs []byte) (GossipResult, error) {
	cp, err := openCheckpoint(theirs, d.verifier)
	if err != nil {
		return GossipIgnored, nil // another log's, or junk: evidence of nothing
	}
	key := sha256.Sum256(theirs)
	if d.cache.gossip.has(key) {
		return GossipConsistent, nil
	}
	d.mu.Lock()
	pinned, err := d.pins.Checkpoint(cp.Origin)
	d.mu.Unlock()
	if err != nil {
		return GossipLater, err
	}
	if pinned == nil {
		return GossipIgnored, nil // nothing to compare with yet
	}
	mine, err := openCheckpoint(pinned, d.verifier)
	if err != nil {
		return GossipLater, fmt.Errorf("client: keydir pinned checkpoint: %w", err)
	}
	fork := func(why string) (GossipResult, error) {
		return GossipFork, &ForkError{Mine: mine, Theirs: cp, Reason: why}
	}
	switch {
	case cp.Size == mine.Size && cp.Hash == mine.Hash:
		d.cache.gossip.add(key)
		return GossipConsistent, nil
	case cp.Size == mine.Size:
		return fork(fmt.Sprintf("two different trees of %d entries", cp.Size))
	case cp.Size > mine.Size:
		// Newer than the pin: the pin moves there if the directory
		// proves it extends it (as for any answer).
		_, err := d.acceptCheckpoint(ctx, theirs)
		switch {
		case err == nil:
			return GossipConsistent, nil
		case errors.Is(err, ErrLogInconsistent):
			return fork(fmt.Sprintf("the directory's proof from %d to %d entries does not verify", mine.Size, cp.Size))
		case cannotProve(err):
			return fork(fmt.Sprintf("the directory cannot prove %d entries extend %d (%v)", cp.Size, mine.Size, err))
		case transient(err) || errors.Is(err, ErrConnectionLost) || errors.Is(err, ErrClosed):
			return GossipLater, err
		}
		return GossipIgnored, nil // not evidence (e.g. the checkpoint misses what this device's policy needs)
	}
	// Older than the pin: the directory proves the pin extends it.
	var res keydirxml.Consistency1
	if err := d.c.IQ(ctx, stanza.GetIQ, d.service, keydirxml.Consistency1{Old: cp.Size, New: mine.Size}, &res); err != nil {
		if cannotProve(err) {
			return fork(fmt.Sprintf("the directory cannot prove %d entries extend %d (%v)", mine.Size, cp.Size, err))
		}
		return GossipLater, fmt.Errorf("client: keydir consistency %d→%d: %w", cp.Size, mine.Size, err)
	}
	hs, err := keydirxml.DecodeHashBlob(res.Proof)
	if err != nil || res.Old != cp.Size || res.New != mine.Size {
		return fork(fmt.Sprintf("the directory's proof from %d to %d entries is malformed", cp.Size, mine.Size))
	}
	if err := verifyConsistency(cp, mine, hs); err != nil {
		return fork(fmt.Sprintf("the directory's proof from %d to %d entries does not verify", cp.Size, mine.Size))
	}
	d.cache.gossip.add(key)
	return GossipConsistent, nil
}

// verifyConsistency checks an RFC 6962 consistency proof from older to
// newer.
func verifyConsistency(older, newer *VerifiedCheckpoint, hs [][32]byte) error {
	if older.Size == 0 {
		return nil
	}
	return proof.VerifyConsistency(rfc6962.DefaultHasher, uint64(older.Size), uint64(newer.Size), toSlices(hs), older.Hash[:], newer.Hash[:])
}

// cannotProve reports whether the directory's answer to a consistency
// request says it will not prove it: a definite error condition, not one
// that may pass. An honest directory proves any two checkpoints it
// signed consistent, so this is evidence too.
func cannotProve(err error) bool {
	var se stanza.Error
	if !errors.As(err, &se) || transient(err) {
		return false
	}
	switch se.Condition {
	case stanza.ItemNotFound, stanza.BadRequest, stanza.Conflict, stanza.NotAcceptable, stanza.UndefinedCondition:
		return true
	}
	return false
}

// A ForkError says that two signed checkpoints of one log cannot be
// proven one log: the directory showed this device and a contact
// different logs. It matches ErrLogInconsistent.
type ForkError struct {
	Mine, Theirs *VerifiedCheckpoint
	Reason       string
}

func (e *ForkError) Error() string {
	return fmt.Sprintf("%v: a contact's checkpoint (%d entries) and this device's (%d entries) are not one log: %s",
		ErrLogInconsistent, e.Theirs.Size, e.Mine.Size, e.Reason)
}

// Is matches ErrLogInconsistent.
func (e *ForkError) Is(target error) bool { return target == ErrLogInconsistent }

// checkGossip is CheckGossip for an envelope from author that opened:
// a fork becomes an alarm (kept and reported once per pair of notes); a
// directory that did not answer is asked again with the contact's next
// envelope.
func (d *Device) checkGossip(ctx context.Context, author string, theirs []byte) {
	if len(theirs) == 0 {
		return
	}
	r, err := d.keys.CheckGossip(ctx, theirs)
	d.rx.mu.Lock()
	if d.rx.gossip == nil {
		d.rx.gossip = map[string]uint64{}
	}
	d.rx.gossip[r.String()]++
	d.rx.mu.Unlock()
	var fe *ForkError
	if r != GossipFork || !errors.As(err, &fe) {
		return
	}
	if !d.keys.cache.gossip.firstAlarm(fe.Mine.Signed, fe.Theirs.Signed) {
		return
	}
	d.raise(&Alarm{Kind: AlarmFork, JID: author, Time: d.now(),
		Text:     fmt.Sprintf("the checkpoint in %s's envelope and this device's are not one log: %s; the server shows devices two views of the log (a split view)", author, fe.Reason),
		Evidence: [2][]byte{fe.Mine.Signed, fe.Theirs.Signed}})
}

// raise keeps a in the key store and reports it (NextEvent).
func (d *Device) raise(a *Alarm) {
	ka := keystore.Alarm{Kind: a.Kind, Time: a.Time.Unix(), JID: a.JID, Text: a.Text, Evidence: a.Evidence}
	if len(ka.Text) > 4096 {
		ka.Text = ka.Text[:4096]
	}
	if err := d.store.AddAlarm(ka); err != nil {
		a.Text += fmt.Sprintf(" (not kept in the key store: %v)", err)
	}
	d.rx.push(outcome{ev: a})
}

// Notices returns and removes the queued events that are notices to the
// user rather than traffic: *NewContact and *Alarm, in order. Other
// events stay queued for NextEvent. (clinkctl prints them after a send.)
func (d *Device) Notices() []Event {
	var out []Event
	for {
		o, ok := d.rx.popIf(func(o outcome) bool {
			switch o.ev.(type) {
			case *NewContact, *Alarm:
				return true
			}
			return false
		})
		if !ok {
			return out
		}
		out = append(out, o.ev)
	}
}

// PinnedCheckpoint returns the checkpoint this directory client pinned
// (nil before its first answer).
func (d *KeyDirectory) PinnedCheckpoint() (*VerifiedCheckpoint, error) {
	signed, err := d.pins.Checkpoint(d.verifier.Name())
	if err != nil || signed == nil {
		return nil, err
	}
	return openCheckpoint(signed, d.verifier)
}

// Alarms returns the alarms the key store keeps, oldest first.
func (d *Device) Alarms() []keystore.Alarm { return d.store.Alarms() }

// verifyNote opens a signed note with the log's verifier (for fuzzing
// and tests of the gossip parser).
func verifyNote(signed []byte, v note.Verifier) (*VerifiedCheckpoint, error) {
	return openCheckpoint(signed, v)
}
