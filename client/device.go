package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"mellium.im/xmpp/jid"

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

	// What receiving needs (receive.go).
	now    func() time.Time
	replay *replayCache
	fails  *senderBuckets // per peer: envelopes that failed
	shares *senderBuckets // per peer: key shares stored
	rx     receiver
}

// DeviceConfig assembles a Device.
type DeviceConfig struct {
	Client    *Client         // logged in as the store's identity
	Store     *keystore.Store // the device's private key and contact keys
	Component jid.JID         // clinkd's domain
	LogKey    string          // the key directory log's verifier key
	VRFKey    string          // the key directory's VRF public key (key directory v1)
	Pins      PinStore        // what the device saw of the log (nil: memory)
	Witnesses WitnessPolicy   // witnesses that must cosign every checkpoint (zero: none)
	// ReplayFile is the device's replay cache (replay.go,
	// docs/envelope.md section 9); "" puts it beside the key store, at
	// Store.Path() + ".replay".
	ReplayFile string
	// Now is the device's clock, by which it checks the time and expiry
	// of what it receives (nil: time.Now).
	Now func() time.Time
}

// NewDevice checks that the session and the key store belong to the same
// account, opens the replay cache and builds the device.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	me := cfg.Client.JID().Bare().String()
	if cfg.Store.Identity().JID() != me {
		return nil, fmt.Errorf("client: the key store is %s's, the session %s's", cfg.Store.Identity().JID(), me)
	}
	kd, err := cfg.Client.OpenKeyDirectory(KeyDirConfig{Service: cfg.Component, Verifier: cfg.LogKey, VRFKey: cfg.VRFKey, Pins: cfg.Pins, Witnesses: cfg.Witnesses})
	if err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	kd.cache.now = cfg.Now // how long an answer is fresh, by the device's clock
	if cfg.ReplayFile == "" {
		cfg.ReplayFile = cfg.Store.Path() + ".replay"
	}
	replay, err := openReplayCache(cfg.ReplayFile, cfg.Now())
	if err != nil {
		return nil, err
	}
	return &Device{
		c: cfg.Client, store: cfg.Store, keys: kd, component: cfg.Component, me: me,
		now: cfg.Now, replay: replay,
		fails:  newSenderBuckets(failBurst, failRefill),
		shares: newSenderBuckets(shareBurst, shareRefill),
	}, nil
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
