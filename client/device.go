package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// A Device is a whole ClinkMe device: a logged-in session, the device's
// key store, and the verified key directory at clinkd. It does what the
// app does: publish its key, look contacts' keys up with proofs, seal and
// open envelopes, share per-contact keys, send timed messages.
type Device struct {
	c         *Client
	store     *keystore.Store
	keys      *KeyDirectory
	component jid.JID
	me        string // canonical bare JID
}

// DeviceConfig assembles a Device.
type DeviceConfig struct {
	Client    *Client         // logged in as the store's identity
	Store     *keystore.Store // the device's private key and contact keys
	Component jid.JID         // clinkd's domain
	LogKey    string          // the key directory log's verifier key
	VRFKey    string          // the key directory's VRF public key (key directory v1)
	Pins      PinStore        // what the device saw of the log (nil: memory)
}

// NewDevice checks that the session and the key store belong to the same
// account and builds the device.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	me := cfg.Client.JID().Bare().String()
	if cfg.Store.Identity().JID() != me {
		return nil, fmt.Errorf("client: the key store is %s's, the session %s's", cfg.Store.Identity().JID(), me)
	}
	kd, err := cfg.Client.OpenKeyDirectory(KeyDirConfig{Service: cfg.Component, Verifier: cfg.LogKey, VRFKey: cfg.VRFKey, Pins: cfg.Pins})
	if err != nil {
		return nil, err
	}
	return &Device{c: cfg.Client, store: cfg.Store, keys: kd, component: cfg.Component, me: me}, nil
}

// Client is the device's session.
func (d *Device) Client() *Client { return d.c }

// Keys is the device's key directory client.
func (d *Device) Keys() *KeyDirectory { return d.keys }

// ErrOwnKeyReplaced is returned by Start when the directory binds another
// key to this account: someone published in its name, or an operator
// reset it. The device must not go on as if nothing happened.
var ErrOwnKeyReplaced = errors.New("client: the directory binds another key to this account")

// Start makes sure the directory binds this device's key to the account
// (publishing it the first time), checking the answer's proof, and
// announces the device to clinkd.
func (d *Device) Start(ctx context.Context) error {
	res, err := d.keys.LookupKeys(ctx, d.me)
	if err != nil {
		return fmt.Errorf("client: own key: %w", err)
	}
	mine, err := envelope.Fingerprint(d.store.Identity().PublicKey())
	if err != nil {
		return err
	}
	switch {
	case len(res) == 1 && res[0].Key != nil && res[0].Key.Fingerprint == mine:
		// Bound already, proven.
	case len(res) == 1 && res[0].Key != nil:
		return fmt.Errorf("%w: SHA256:%x instead of SHA256:%x", ErrOwnKeyReplaced, res[0].Key.Fingerprint, mine)
	default:
		if _, err := d.keys.PublishKey(ctx, d.store.Identity().PublicKey()); err != nil {
			return fmt.Errorf("client: publish key: %w", err)
		}
	}
	return d.c.Announce(ctx, d.component)
}

// SendOptions choose how a message is protected and kept.
type SendOptions struct {
	// Secure seals with the per-contact key (ClinkMe Secure), sharing one
	// first, inside a standard envelope, if there is none yet.
	Secure bool
	// TTL, if set, makes a timed message: deleted on every device after
	// TTL and never stored by the server.
	TTL time.Duration
}

// ErrNoKey is returned when the recipient has published no key.
var ErrNoKey = errors.New("client: the recipient has no key in the directory")

func newMessageID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// recipientKey looks the recipient's key up with proof. A key that
// differs from the one seen before is an error (a *KeyChangeError), never
// silently used.
func (d *Device) recipientKey(ctx context.Context, to jid.JID) (*VerifiedKey, error) {
	res, err := d.keys.LookupKeys(ctx, to.Bare().String())
	if err != nil {
		return nil, err
	}
	if len(res) != 1 || res[0].Key == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoKey, to.Bare())
	}
	return res[0].Key, nil
}

// Send seals text for to and sends it through clinkd. It returns the
// message id, which receipts and expiry notices name.
func (d *Device) Send(ctx context.Context, to jid.JID, text string, o SendOptions) (string, error) {
	to = to.Bare()
	key, err := d.recipientKey(ctx, to)
	if err != nil {
		return "", err
	}
	now := time.Now().UTC().Truncate(time.Second)
	h := envelope.Header{ID: newMessageID(), Time: now}
	if o.TTL > 0 {
		h.Expires = now.Add(o.TTL)
	}
	content := envelope.Content{Kind: envelope.KindText, Text: text}
	var env *envelopexml.Envelope
	if o.Secure {
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
	if err := d.c.SendEnvelope(ctx, d.component, to, env); err != nil {
		return "", err
	}
	return env.ID, nil
}

// contactKey returns the current per-contact key for to, creating one and
// sharing it (as an ordinary standard envelope) if there is none. The key
// is stored before it leaves, so a crash cannot lose a key the contact
// has.
func (d *Device) contactKey(ctx context.Context, to jid.JID, key *VerifiedKey) (envelope.ContactKey, error) {
	if k, ok := d.store.CurrentContactKey(to.String()); ok {
		return k, nil
	}
	k := envelope.NewContactKey()
	if err := d.store.AddContactKey(to.String(), k); err != nil {
		return envelope.ContactKey{}, err
	}
	share, err := envelope.SealStandard(d.store.Identity(), []envelope.Recipient{{JID: to.String(), Key: key.Key}},
		envelope.Header{ID: newMessageID(), Time: time.Now().UTC().Truncate(time.Second)},
		envelope.Content{Kind: envelope.KindKeyShare, Key: k})
	if err != nil {
		return envelope.ContactKey{}, err
	}
	if err := d.c.SendEnvelope(ctx, d.component, to, share); err != nil {
		return envelope.ContactKey{}, fmt.Errorf("client: share the contact key: %w", err)
	}
	return k, nil
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
// clinkd. Key shares are stored on the way. A message that fails
// verification is returned as an error (and dropped), so the caller sees
// every forgery.
//
// Only messages from a user's address at the component are read
// (docs/envelope.md, "Transport"); an envelope that arrives any other way
// is never opened.
func (d *Device) NextEvent(ctx context.Context) (Event, error) {
	for {
		s, err := d.c.Next(ctx, func(s *Stanza) bool {
			return s.Kind == "message" && s.Type != "error" && s.From.Domainpart() == d.component.Domainpart()
		})
		if err != nil {
			return nil, err
		}
		peer, ok := relayPeer(s, d.component)
		if !ok {
			continue // from the component itself: nothing for the app
		}
		if id, kind, ok := s.ReceiptFor(); ok {
			return &Receipt{ID: id, From: peer, Kind: kind}, nil
		}
		if id, ok := s.ExpiredID(); ok {
			return &Expiry{ID: id, Peer: peer}, nil
		}
		if !s.Has(EnvelopeName) {
			continue
		}
		m, isText, err := d.open(ctx, s)
		if err != nil {
			return nil, err
		}
		if isText {
			return m, nil
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

func (d *Device) open(ctx context.Context, s *Stanza) (*Message, bool, error) {
	env, err := s.Envelope()
	if err != nil {
		return nil, false, err
	}
	peer, ok := relayPeer(s, d.component)
	if !ok {
		return nil, false, fmt.Errorf("client: envelope not relayed by clinkd (from %s)", s.From)
	}
	// Structure and canonical JIDs first (docs/envelope.md, section 7):
	// before the sender's key is looked up by from.
	if err := env.Validate(); err != nil {
		return nil, false, fmt.Errorf("client: message in the conversation with %s: %w", peer, err)
	}
	sent := s.Has(SentName)
	if err := checkAuthor(d.me, peer, sent, env); err != nil {
		return nil, false, err
	}
	author, err := jid.Parse(env.From)
	if err != nil {
		return nil, false, fmt.Errorf("client: envelope from %q: %w", env.From, err)
	}
	key, err := d.recipientKey(ctx, author)
	if err != nil {
		return nil, false, fmt.Errorf("client: sender key for %s: %w", author, err)
	}
	c, err := envelope.Open(env, d.store.Identity(), key.Key, d.store)
	if err != nil {
		return nil, false, fmt.Errorf("client: message %s from %s: %w", env.ID, author, err)
	}
	m := &Message{ID: env.ID, From: author, Peer: peer, Secure: env.Kind == envelopexml.Enhanced, Expires: env.Expires, Sent: sent}
	switch c.Kind {
	case envelope.KindKeyShare:
		if err := d.store.AddContactKey(peer.String(), c.Key); err != nil {
			return nil, false, err
		}
		return m, false, nil
	case envelope.KindText:
		m.Text = c.Text
		return m, true, nil
	}
	return nil, false, nil
}
