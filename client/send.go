package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// SendOptions choose how a message is protected and kept.
type SendOptions struct {
	// Enhanced seals with the per-contact key (docs/envelope.md, section
	// 5.3), sharing one first (section 5.4) when there is none yet or the
	// contact's key changed since it was shared. Without it the message
	// is sealed for the contact's identity key ("standard"). Both are
	// end-to-end encrypted.
	Enhanced bool
	// TTL, if set, makes a timed message: deleted on every device after
	// TTL and never stored by the server. clinkd accepts validity periods
	// within bounds of its own (5 s to 7 days by default); out of them,
	// Send returns a *RefusedError that names them.
	TTL time.Duration
}

// ErrNoKey is returned when the recipient has published no key.
var ErrNoKey = errors.New("client: the recipient has no key in the directory")

func newMessageID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Send seals text for to, sends it through clinkd and waits until clinkd
// accepted or refused it. It returns the message id, which receipts and
// expiry notices name, and:
//
//   - a *KeyChangeError when the directory binds another key to to than
//     the one this device saw before: nothing was sent. The change is
//     reported once (the device now knows the new key); the app shows it
//     and sends again when the user agrees.
//   - a *RefusedError (ErrRefused) when clinkd refused the message: a
//     validity period out of its bounds, no ClinkMe Secure entitlement
//     for timed messages, a quota. Nothing was relayed.
//   - an *UnconfirmedError (ErrUnconfirmed) when the message left but
//     clinkd's answer was lost (the connection dropped and the stream was
//     not resumed, or ctx ended).
//   - ErrNoKey when to has published no key, or the session's errors.
//
// How Send learns the outcome: clinkd answers a refused message with an
// error reply of the same id and says nothing on success, and it handles
// one sender's stanzas in order (docs/envelope.md, "Transport"). So after
// the message Send pings this user's own address at clinkd: once the
// ping is answered, clinkd has handled the message, and a refusal, if
// any, arrived before the answer.
func (d *Device) Send(ctx context.Context, to jid.JID, text string, o SendOptions) (string, error) {
	to = to.Bare()
	key, err := d.recipientKey(ctx, to)
	if err != nil {
		return "", err
	}
	now := d.now().UTC().Truncate(time.Second)
	h := envelope.Header{ID: newMessageID(), Time: now, Checkpoint: d.outgoingCheckpoint()}
	if o.TTL > 0 {
		h.Expires = now.Add(o.TTL).Truncate(time.Second)
		if !h.Expires.After(now) {
			h.Expires = now.Add(time.Second)
		}
	}
	content := envelope.Content{Kind: envelope.KindText, Text: text}
	var env *envelopexml.Envelope
	if o.Enhanced {
		ck, err := d.contactKey(ctx, to, key)
		if err != nil {
			return "", err
		}
		env, err = envelope.SealEnhanced(d.store.Identity(), to.String(), ck, h, content)
		if err != nil {
			return "", err
		}
	} else {
		env, err = envelope.SealStandard(d.store.Identity(), []envelope.Recipient{{JID: to.String(), Key: key.Key}}, h, content)
		if err != nil {
			return "", err
		}
	}
	if err := d.relay(ctx, to, env); err != nil {
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrUnconfirmed) {
			return env.ID, err
		}
		return "", err
	}
	if env.Expires.IsZero() {
		d.sent.track(env.ID, to)
	} else {
		d.expires.schedule(env.ID, to, env.Expires)
		d.rx.kick()
	}
	return env.ID, nil
}

// recipientKey looks the recipient's key up with proof (never from the
// cache). A key that differs from the one seen before is an error (a
// *KeyChangeError), never silently used. A lookup that the connection
// lost is asked again.
func (d *Device) recipientKey(ctx context.Context, to jid.JID) (*VerifiedKey, error) {
	res, err := d.lookup(ctx, to.String())
	var kc *KeyChangeError
	if err != nil && !errors.As(err, &kc) {
		return nil, err
	}
	if len(res) != 1 {
		return nil, fmt.Errorf("%w: %d results for one JID", ErrBadAnswer, len(res))
	}
	if res[0].Key == nil {
		if err := d.observeEnded(to.String(), res[0]); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %s", ErrNoKey, to)
	}
	// The user's decision, not the directory's pin, says whether the key
	// may be used: a change is refused until it is accepted, however
	// often Send is called (docs/trust.md).
	var prev *KeyChange
	if kc != nil {
		prev = changeFor(kc, to.String())
	}
	t, first, err := d.observeKey(to.String(), res[0].Key, prev)
	if err != nil {
		return nil, err
	}
	if t.State == Changed {
		return nil, &KeyChangeError{Changes: []KeyChange{*changeOf(to.String(), t)}, Unaccepted: true}
	}
	if first {
		k := res[0].Key
		d.rx.push(outcome{ev: &NewContact{JID: to.String(), Fingerprint: k.Fingerprint, Index: k.Index, Version: k.Version}})
	}
	return res[0].Key, nil
}

// lookup looks jids up with proof, asking again after a lost connection
// and once after a checkpoint older than the pin (two answers can
// cross); a second stale answer raises an AlarmRollback.
func (d *Device) lookup(ctx context.Context, jids ...string) ([]KeyResult, error) {
	var res []KeyResult
	var err error
	stale := 0
	for range 4 {
		res, err = d.keys.LookupKeys(ctx, jids...)
		if errors.Is(err, ErrStaleCheckpoint) {
			stale++
			if stale < 2 {
				continue
			}
			d.staleAlarm(err)
			break
		}
		if !errors.Is(err, ErrConnectionLost) {
			break
		}
	}
	return res, err
}

// staleAlarm raises an AlarmRollback for a directory that answered twice
// in a row with a checkpoint older than the pin (once per pinned size).
func (d *Device) staleAlarm(err error) {
	var se *StaleCheckpointError
	if !errors.As(err, &se) {
		return // a head older than the device's max age: ErrStaleCheckpoint alone
	}
	if !d.keys.cache.gossip.firstAlarm(se.Pinned.Signed, se.Served.Signed) {
		return
	}
	d.raise(&Alarm{Kind: AlarmRollback, Time: d.now(),
		Text: fmt.Sprintf("the key directory answered twice with a log of %d entries after this device accepted one of %d: it hides newer entries from this device (a rollback); answers are refused until it serves the log again",
			se.Served.Size, se.Pinned.Size),
		Evidence: [2][]byte{se.Pinned.Signed, se.Served.Signed}})
}

// contactKey returns the per-contact key to seal with for to, whose
// identity key (verified just now) is key: the current one, if it was
// shared with that very key and its share was accepted; else a new one,
// stored (as not yet shared, so that a crash cannot lose a key the
// contact may have) and shared inside a standard envelope, then recorded
// as shared with key once clinkd accepted the share. So a contact's new
// key (a new device, a reset) gets a new contact key before anything is
// sealed for it, and a share clinkd refused is made again.
func (d *Device) contactKey(ctx context.Context, to jid.JID, key *VerifiedKey) (envelope.ContactKey, error) {
	if sk, ok := d.store.CurrentSharedKey(to.String()); ok && sk.PeerKey == key.Fingerprint {
		return sk.Key, nil
	}
	k := envelope.NewContactKey()
	if err := d.store.AddSharedKey(to.String(), keystore.SharedKey{Key: k}); err != nil {
		return envelope.ContactKey{}, err
	}
	share, err := envelope.SealStandard(d.store.Identity(), []envelope.Recipient{{JID: to.String(), Key: key.Key}},
		envelope.Header{ID: newMessageID(), Time: d.now().UTC().Truncate(time.Second), Checkpoint: d.outgoingCheckpoint()},
		envelope.Content{Kind: envelope.KindKeyShare, Key: k})
	if err != nil {
		return envelope.ContactKey{}, err
	}
	if err := d.relay(ctx, to, share); err != nil {
		return envelope.ContactKey{}, fmt.Errorf("client: share the contact key: %w", err)
	}
	if err := d.store.AddSharedKey(to.String(), keystore.SharedKey{Key: k, PeerKey: key.Fingerprint}); err != nil {
		return envelope.ContactKey{}, err
	}
	return k, nil
}

// relay sends env to to through clinkd and waits for clinkd's answer: nil
// when it accepted it, a *RefusedError, or an *UnconfirmedError.
func (d *Device) relay(ctx context.Context, to jid.JID, env *envelopexml.Envelope) error {
	refused, stop := d.c.awaitError(env.ID)
	defer stop()
	if err := d.c.SendEnvelope(ctx, d.component, to, env); err != nil {
		return err
	}
	own, err := address.AtComponent(d.c.JID(), d.component)
	if err != nil {
		return err
	}
	perr := d.c.Ping(ctx, own)
	select {
	case s := <-refused:
		return refusal(s, env.ID, to)
	default:
	}
	if perr != nil {
		return &UnconfirmedError{ID: env.ID, Err: perr}
	}
	return nil
}
