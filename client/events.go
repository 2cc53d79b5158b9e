package client

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// An Event is what Device.NextEvent returns: a *Message, a *Receipt, an
// *Expiry, a *KeyChanged, a *DropError (an envelope the device refused),
// a *RefusedError (a message of this device that clinkd refused after
// Send stopped waiting), a *Connection or an *InboxOverflow. docs/sdk.md
// says what an app does with each.
type Event interface{ event() }

// A Message is a decrypted message, whose signature was verified against
// the sender's key from the verified directory.
type Message struct {
	ID   string
	From jid.JID // the author
	Peer jid.JID // the other party of the conversation
	Text string
	// Enhanced: sealed with the per-contact key (docs/envelope.md,
	// section 5.3), not with the recipients' identity keys ("standard").
	// Both are end-to-end encrypted.
	Enhanced bool
	// Time is when the author's device sent it: the envelope's signed
	// time (docs/envelope.md, section 3), by the author's clock.
	Time time.Time
	// Expires is when a timed message must be deleted, zero for an
	// ordinary message. The device also reports it (an *Expiry) at that
	// time by its own clock.
	Expires time.Time
	// Outgoing: a message this user sent from another of their devices
	// (the copy clinkd passes to the user's other devices, docs/expiry.md
	// step 4): From is this user, Peer the recipient, and Device the
	// device that sent it.
	Outgoing bool
	Device   jid.JID // the sending device of an Outgoing message; else empty
	// Unaccepted: the author's key is not the one the user accepted
	// (the contact is in the changed state, docs/trust.md): the message
	// verified with the key the directory binds now, which the user has
	// not accepted yet (Device.AcceptKey).
	Unaccepted bool
}

func (*Message) event() {}

// ReceiptKind is a delivery receipt or a read (displayed) marker.
type ReceiptKind int

// The two receipts a recipient's device sends.
const (
	Delivered ReceiptKind = iota // XEP-0184 received
	Displayed                    // XEP-0333 displayed
)

func (k ReceiptKind) String() string {
	if k == Displayed {
		return "displayed"
	}
	return "delivered"
}

// A Receipt says that the recipient's device got (Delivered) or showed
// (Displayed) a message this user sent. clinkd passes receipts on without
// the recipient's device, so a Receipt names the recipient (From), not
// which of their devices.
type Receipt struct {
	ID   string
	From jid.JID // the recipient who sent it
	Kind ReceiptKind
	// Device is the stable id of the recipient's device that sent it
	// (DeviceConfig.DeviceID on theirs), so that two devices' receipts
	// for one message are told apart; "" when that device announced no
	// id, and for a receipt learnt by catching up (CatchUp), which clinkd
	// keeps per recipient, not per device.
	Device string
	// Time is when clinkd recorded it, for a receipt this device learnt by
	// asking clinkd after it reconnected (CatchUp); zero for one passed on
	// as it happened.
	Time    time.Time
	CatchUp bool
}

func (*Receipt) event() {}

// An Expiry says that a timed message's validity ended: delete it. Local
// says the device's own timer found it (by its clock, at the message's
// Expires); else it is clinkd's notice. Each message expires once: the
// later of the two is not reported.
type Expiry struct {
	ID    string
	Peer  jid.JID // the conversation
	Local bool
}

func (*Expiry) event() {}

// A KeyChanged event reports that the key the directory binds to a
// contact is not the one this device saw before: a new device of the
// contact, a reset, or someone else's key. The app must show it. When an
// envelope signed with the new key revealed the change, it was verified
// with the new key and, if it is a text, comes with it as Message (not
// also as a *Message event): the app decides whether to show it before
// the user accepted the change. Later envelopes with that key are
// ordinary *Message events.
type KeyChanged struct {
	Change  KeyChange
	Message *Message // nil when the envelope was a key share, or when no envelope came with the change
}

func (*KeyChanged) event() {}

// A Connection event reports a change of the session's link: down (Up
// false; Err says why, and a failed reconnection attempt is reported the
// same way), up again (Up; Resumed when the stream was resumed, so
// nothing was lost), or the end of the session (Final; Err says why:
// ErrClosed, or the server's refusal of the credentials).
type Connection struct {
	Up, Resumed, Final bool
	Err                error
}

func (*Connection) event() {}

// An InboxOverflow event reports that the session dropped received
// stanzas unread because its inbox was over its bounds
// (Config.MaxInbox): Dropped is how many since the last report. They may
// have been messages; a device that reads its events never gets there.
type InboxOverflow struct {
	Dropped uint64
}

func (*InboxOverflow) event() {}

func (*DropError) event()    {}
func (*RefusedError) event() {}

// ErrRefused is matched by every *RefusedError.
var ErrRefused = errors.New("client: clinkd refused the message")

// A RefusedError is clinkd's refusal of a message this device sent
// (docs/envelope.md, "Transport"; docs/expiry.md, "A device sends a timed
// message"): the message was not relayed. Send returns it; one that
// arrives after Send stopped waiting is a NextEvent event.
type RefusedError struct {
	ID string  // the message's id
	To jid.JID // the recipient
	// Condition is the stanza error condition (RFC 6120, section 8.3.3):
	// not-acceptable (a validity period out of bounds, a malformed or
	// misaddressed envelope), forbidden (no ClinkMe Secure entitlement for
	// timed messages, a domain clinkd does not serve),
	// resource-constraint (a quota: try again later),
	// service-unavailable (the feature is off, or clinkd is down), …
	Condition string
	// Type is the error type: cancel, modify, wait (retry later) or auth.
	Type string
	// Text is clinkd's explanation, for people.
	Text string
	// MinValidity and MaxValidity are the bounds of the validity period
	// that clinkd accepts now, when its refusal names them (a timed
	// message whose validity is out of bounds, or longer than clinkd
	// accepts for a recipient it has not seen lately); zero otherwise.
	MinValidity, MaxValidity time.Duration
}

func (e *RefusedError) Error() string {
	s := fmt.Sprintf("client: clinkd refused message %s to %s: %s", e.ID, e.To, e.Condition)
	if e.Text != "" {
		s += ": " + e.Text
	}
	return s
}

// Is matches ErrRefused.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Temporary reports whether sending again later may succeed: clinkd
// refused for a quota or a load it may no longer have.
func (e *RefusedError) Temporary() bool {
	return e.Type == string(stanza.Wait) || e.Condition == string(stanza.ResourceConstraint)
}

// The texts of clinkd's refusals of a validity period (expiry/expiry.go);
// the periods are Go durations.
var (
	periodBounds = regexp.MustCompile(`between (\S+) and (\S+) from now`)
	unseenBound  = regexp.MustCompile(`a validity period of at most (\S+) is accepted`)
)

// refusal reads clinkd's error reply to the message id sent to to.
func refusal(s *Stanza, id string, to jid.JID) *RefusedError {
	e := &RefusedError{ID: id, To: to, Condition: string(stanza.UndefinedCondition), Type: string(stanza.Cancel)}
	if se, ok := s.StanzaError(); ok {
		e.Condition, e.Type = string(se.Condition), string(se.Type)
		e.Text = se.Text[""]
		if e.Text == "" {
			for _, t := range se.Text {
				e.Text = t
				break
			}
		}
	}
	if m := periodBounds.FindStringSubmatch(e.Text); m != nil {
		e.MinValidity, _ = time.ParseDuration(m[1])
		e.MaxValidity, _ = time.ParseDuration(m[2])
	} else if m := unseenBound.FindStringSubmatch(e.Text); m != nil {
		e.MaxValidity, _ = time.ParseDuration(strings.TrimSuffix(m[1], ","))
	}
	return e
}

// ErrUnconfirmed is matched by every *UnconfirmedError.
var ErrUnconfirmed = errors.New("client: the message was sent, but clinkd's answer was lost")

// An UnconfirmedError says that a message was sent but Send could not
// learn whether clinkd relayed it: the connection dropped and the stream
// could not be resumed, or ctx ended first. A refusal that arrives later
// is a *RefusedError event. The recipient's device shows a message once
// whatever happens, so sending the text again may show it twice, never
// lose it.
type UnconfirmedError struct {
	ID  string
	Err error // why Send stopped waiting
}

func (e *UnconfirmedError) Error() string {
	return fmt.Sprintf("client: message %s sent, but clinkd's answer was lost: %v", e.ID, e.Err)
}

// Is matches ErrUnconfirmed.
func (e *UnconfirmedError) Is(target error) bool { return target == ErrUnconfirmed }

// Unwrap returns why Send stopped waiting.
func (e *UnconfirmedError) Unwrap() error { return e.Err }
