package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/extensions/expiryxml"
)

// A Device is a whole ClinkMe device: a logged-in session, the device's
// key store, and the verified key directory at clinkd. It does what the
// app does: publish its key, look contacts' keys up with proofs, seal and
// open envelopes, share per-contact keys, send timed messages, and turn
// everything it receives into events (NextEvent). Its methods are safe
// for concurrent use.
type Device struct {
	c         *Client
	store     *keystore.Store
	keys      *KeyDirectory
	component jid.JID
	me        string // canonical bare JID
	id        string // the stable id announced to clinkd
	now       func() time.Time

	announceEvery time.Duration
	startOnce     sync.Once
	stopInterest  func()

	// What receiving needs (receive.go).
	replay  *replayCache
	fails   *senderBuckets // per peer: envelopes that failed
	shares  *senderBuckets // per peer: key shares stored
	rx      receiver
	sent    sentTracker  // ordinary messages waiting for receipts (receipts.go)
	expires expiryTimers // timed messages to expire by the device's clock (expirytimers.go)

	trustMu      sync.Mutex    // serialises changes of contacts' trust records (trust.go)
	monitorEvery time.Duration // self-monitoring period (monitor.go)
	monitorMu    sync.Mutex    // one monitoring run at a time
}

// DeviceConfig assembles a Device. Client, Store, Component,
// VerifierKey and VRFKey are required.
type DeviceConfig struct {
	Client    *Client         // logged in as the store's identity
	Store     *keystore.Store // the device's state: private key, contact keys, pins
	Component jid.JID         // clinkd's domain
	// VerifierKey is the key directory's verifier key: the note verifier
	// key (golang.org/x/mod/sumdb/note) that signs the log's checkpoints,
	// shipped with the app (lab.json's verifier_key, clinkctl
	// --verifier-key, clinkd keys genkey).
	VerifierKey string
	// Deprecated: LogKey is the old name of VerifierKey.
	LogKey string
	// VRFKey is the key directory's VRF public key (key directory v1),
	// shipped with the app beside VerifierKey (lab.json's keylog_vrf_key,
	// clinkctl --vrf-key).
	VRFKey string
	// Pins keeps what the device saw of the key directory. nil keeps it
	// in the key store, the one state file that device sync carries;
	// &MemoryPins{} forgets it when the process ends (tests, tools).
	Pins PinStore
	// Witnesses is the device's witness policy: the witnesses' verifier
	// keys, shipped with the app beside VerifierKey (lab.json's
	// witnesses), and how many of them must have cosigned every
	// checkpoint the device accepts (ErrNotCosigned; the zero value
	// requires none).
	Witnesses WitnessPolicy
	// DeviceID is this device's stable id (1 to 64 bytes of A-Z, a-z,
	// 0-9, '.', '_' and '-'), announced to clinkd so that it delivers
	// each held timed message to this device once, however often it
	// reconnects with a new resource, and named in the receipts it
	// sends. It must differ between devices of one account: it is not
	// in the key store, which device sync copies. "" keeps a random one
	// in a file beside the key store, at Store.Path() + ".device-id".
	DeviceID string
	// ReplayFile is the device's replay cache (replay.go,
	// docs/envelope.md section 9); "" puts it beside the key store, at
	// Store.Path() + ".replay".
	ReplayFile string
	// Now is the device's clock, by which it checks the time and expiry
	// of what it receives and expires timed messages (nil: time.Now).
	Now func() time.Time
	// AnnounceEvery is how often the device announces itself to clinkd
	// again while connected (default DefaultAnnounceEvery), besides after
	// every reconnection: a clinkd that restarted learns within it of the
	// devices that stayed connected (docs/expiry.md, step 1).
	AnnounceEvery time.Duration
	// DirectoryComponent is the component that serves the key directory
	// when it is not Component's clinkd (the zero JID: Component).
	// Tests use it to play a server that answers one device's directory
	// requests from a forked log (a split view).
	DirectoryComponent jid.JID
	// MonitorEvery is how often the device proves its own key's binding
	// and history while it runs (default DefaultMonitorEvery), besides
	// at every Start: an entry it did not make (a reset, a delete,
	// another key) raises an AlarmOwnKey (monitor.go).
	MonitorEvery time.Duration
}

// DefaultAnnounceEvery is how often a connected device announces itself
// to clinkd again: clinkd forgets the devices online when it restarts,
// and the XMPP server tells it nothing about devices that stayed
// connected, so for up to this long it holds their timed messages and
// receipts instead of delivering them.
const DefaultAnnounceEvery = 5 * time.Minute

// NewDevice checks that the session and the key store belong to the same
// account, opens the replay cache and builds the device. The device takes
// the session's messages from its clinkd (Client.Interest); Start brings
// it up.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	if cfg.Client == nil || cfg.Store == nil {
		return nil, errors.New("client: a device needs a Client and a Store")
	}
	me := cfg.Client.JID().Bare().String()
	if cfg.Store.Identity().JID() != me {
		return nil, fmt.Errorf("client: the key store is %s's, the session %s's", cfg.Store.Identity().JID(), me)
	}
	if cfg.Component.Domainpart() == "" {
		return nil, errors.New("client: a device needs clinkd's component domain")
	}
	vkey := cfg.VerifierKey
	switch {
	case vkey == "":
		vkey = cfg.LogKey
	case cfg.LogKey != "" && strings.TrimSpace(cfg.LogKey) != strings.TrimSpace(vkey):
		return nil, errors.New("client: VerifierKey and its deprecated name LogKey differ")
	}
	if cfg.Pins == nil {
		cfg.Pins = StorePins{cfg.Store}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	kd, err := cfg.Client.OpenKeyDirectory(KeyDirConfig{Service: cfg.Component, Verifier: vkey, VRFKey: cfg.VRFKey, Pins: cfg.Pins, Now: cfg.Now, Witnesses: cfg.Witnesses})
	if err != nil {
		return nil, err
	}
	kd.cache.now = cfg.Now // how long an answer is fresh, by the device's clock
	if cfg.DirectoryComponent.Domainpart() != "" {
		kd.service = cfg.DirectoryComponent
	}
	if cfg.DeviceID == "" {
		id, err := deviceIDFile(cfg.Store.Path() + ".device-id")
		if err != nil {
			return nil, err
		}
		cfg.DeviceID = id
	}
	if err := expiryxml.CheckDeviceID(cfg.DeviceID); err != nil {
		return nil, fmt.Errorf("client: DeviceID: %w", err)
	}
	if cfg.ReplayFile == "" {
		cfg.ReplayFile = cfg.Store.Path() + ".replay"
	}
	replay, err := openReplayCache(cfg.ReplayFile, cfg.Now())
	if err != nil {
		return nil, err
	}
	if cfg.AnnounceEvery <= 0 {
		cfg.AnnounceEvery = DefaultAnnounceEvery
	}
	if cfg.MonitorEvery <= 0 {
		cfg.MonitorEvery = DefaultMonitorEvery
	}
	d := &Device{
		c: cfg.Client, store: cfg.Store, keys: kd, component: cfg.Component, me: me,
		now: cfg.Now, replay: replay, announceEvery: cfg.AnnounceEvery, monitorEvery: cfg.MonitorEvery, id: cfg.DeviceID,
		fails:  newSenderBuckets(failBurst, failRefill),
		shares: newSenderBuckets(shareBurst, shareRefill),
	}
	d.rx.init()
	d.stopInterest = d.c.Interest(func(s *Stanza) bool {
		return s.Kind == "message" && s.From.Domainpart() == d.component.Domainpart()
	})
	return d, nil
}

// Client is the device's session.
func (d *Device) Client() *Client { return d.c }

// Directory is the device's client of the key directory.
func (d *Device) Directory() *KeyDirectory { return d.keys }

// Keys is the device's client of the key directory.
//
// Deprecated: use Directory.
func (d *Device) Keys() *KeyDirectory { return d.keys }

// Close ends the device's session (Client.Close).
func (d *Device) Close() error { return d.c.Close() }

// Start brings the device up. It runs three steps, which an app may also
// run one by one:
//
//  1. CheckKey: look the account's key binding up, with proof.
//  2. If the directory binds no key and never bound this device's key
//     (the device's first run), PublishKey. If it bound this device's key
//     and the binding ended (an operator reset it, or the account was
//     deleted), or it binds another key, Start stops with an
//     *OwnKeyError (ErrOwnKeyReset, ErrOwnKeyReplaced) and publishes
//     nothing: only PublishKeyAgain, which the app calls when its user
//     chose to, binds a key that was reset again.
//  3. Announce the device to clinkd, and keep announcing it after every
//     reconnection and every AnnounceEvery; after every reconnection,
//     also ask clinkd for the receipts it missed (TrackReceipts).
//
// At every Start, and every MonitorEvery after, the device also proves
// its own key's history and raises an AlarmOwnKey for an entry it did
// not make (MonitorOwnKey): a key that ended or was replaced comes with
// that alarm before the *OwnKeyError.
func (d *Device) Start(ctx context.Context) error {
	own, err := d.CheckKey(ctx)
	if err != nil {
		return err
	}
	switch own.Status {
	case KeyNotPublished:
		if _, err := d.publish(ctx); err != nil {
			return err
		}
	case KeyEnded, KeyReplaced:
		d.MonitorOwnKey(ctx) // the alarm names the entries; the error says what to do
		return &OwnKeyError{Own: own}
	}
	if _, err := d.MonitorOwnKey(ctx); err != nil {
		return err
	}
	if err := d.Announce(ctx); err != nil {
		return err
	}
	d.startOnce.Do(func() {
		go d.background()
		go d.monitorLoop()
	})
	return nil
}

// KeyStatus is what the key directory binds to the device's account,
// compared with the device's own key.
type KeyStatus int

// The statuses of CheckKey.
const (
	KeyBound        KeyStatus = iota // the directory binds this device's key
	KeyNotPublished                  // no key is bound, and this device's key never was: publish it
	KeyEnded                         // this device's key was bound, and its binding ended (a reset, a deleted account)
	KeyReplaced                      // the directory binds another key to the account
)

func (s KeyStatus) String() string {
	switch s {
	case KeyBound:
		return "bound"
	case KeyNotPublished:
		return "not published"
	case KeyEnded:
		return "ended"
	case KeyReplaced:
		return "replaced"
	}
	return fmt.Sprintf("KeyStatus(%d)", int(s))
}

// OwnKey is the device's key as the key directory sees it.
type OwnKey struct {
	Status KeyStatus
	// Key is the binding, proven: this device's key when Bound, the other
	// key when Replaced; nil otherwise.
	Key *VerifiedKey
	// Ended is the log entry that ended this device's key's binding
	// (kind reset or delete), when Status is KeyEnded.
	Ended *HistoryEntry
}

// Errors of Start and PublishKey, matched by an *OwnKeyError.
var (
	// ErrOwnKeyReplaced: the directory binds another key to this account:
	// the user moved to another device, someone published in the
	// account's name, or an operator reset the account and a new key was
	// published. The device must not go on as if nothing happened.
	ErrOwnKeyReplaced = errors.New("client: the directory binds another key to this account")
	// ErrOwnKeyReset: the directory bound this device's key and the
	// binding ended (an operator reset it, or the account was deleted).
	// The device does not publish it again by itself: contacts were told
	// the key is gone, and publishing it again would undo the reset.
	// PublishKeyAgain does, when the user chose to.
	ErrOwnKeyReset = errors.New("client: the directory ended this device's key binding")
)

// An OwnKeyError says why the device did not publish its key or start:
// it matches ErrOwnKeyReplaced or ErrOwnKeyReset.
type OwnKeyError struct{ Own OwnKey }

func (e *OwnKeyError) Error() string {
	switch e.Own.Status {
	case KeyReplaced:
		if e.Own.Key != nil {
			return fmt.Sprintf("%v: SHA256:%x is bound now (log index %d, since %s)", ErrOwnKeyReplaced, e.Own.Key.Fingerprint, e.Own.Key.Index, e.Own.Key.Time.UTC().Format(time.RFC3339))
		}
		return ErrOwnKeyReplaced.Error()
	case KeyEnded:
		if h := e.Own.Ended; h != nil {
			return fmt.Sprintf("%v (%s, log index %d, %s); the key is not published again unless the user chooses to", ErrOwnKeyReset, h.Kind, h.Index, h.Time.UTC().Format(time.RFC3339))
		}
		return ErrOwnKeyReset.Error() + "; the key is not published again unless the user chooses to"
	}
	return fmt.Sprintf("client: own key %s", e.Own.Status)
}

// Is matches the sentinel of the status.
func (e *OwnKeyError) Is(target error) bool {
	return target == ErrOwnKeyReplaced && e.Own.Status == KeyReplaced || target == ErrOwnKeyReset && e.Own.Status == KeyEnded
}

// CheckKey looks the account's key binding up, with proof, and compares
// it with the device's key. When no key is bound it reads the account's
// history in the log (verified) to tell a first run from a binding that
// ended.
func (d *Device) CheckKey(ctx context.Context) (OwnKey, error) {
	res, err := d.lookup(ctx, d.me)
	var kc *KeyChangeError
	if err != nil && !errors.As(err, &kc) {
		return OwnKey{}, fmt.Errorf("client: own key: %w", err)
	}
	if len(res) != 1 {
		return OwnKey{}, fmt.Errorf("client: own key: %w: %d results", ErrBadAnswer, len(res))
	}
	mine, err := envelope.Fingerprint(d.store.Identity().PublicKey())
	if err != nil {
		return OwnKey{}, err
	}
	if k := res[0].Key; k != nil {
		if k.Fingerprint == mine {
			return OwnKey{Status: KeyBound, Key: k}, nil
		}
		return OwnKey{Status: KeyReplaced, Key: k}, nil
	}
	hist, err := d.keys.History(ctx)
	if err != nil {
		return OwnKey{}, fmt.Errorf("client: own key history: %w", err)
	}
	own := OwnKey{Status: KeyNotPublished}
	for i, h := range hist {
		if h.Kind != "publish" || h.Fingerprint != mine {
			continue
		}
		own.Status = KeyEnded
		for _, later := range hist[i+1:] {
			if later.Kind != "publish" {
				e := later
				own.Ended = &e
				break
			}
		}
	}
	return own, nil
}

// PublishKey publishes the device's key on its first run: when the
// directory binds no key to the account and never bound this key. It
// refuses, with an *OwnKeyError, a key whose binding ended (PublishKeyAgain)
// or an account bound to another key. Publishing the key already bound
// returns it.
func (d *Device) PublishKey(ctx context.Context) (*VerifiedKey, error) {
	own, err := d.CheckKey(ctx)
	if err != nil {
		return nil, err
	}
	switch own.Status {
	case KeyBound:
		return own.Key, nil
	case KeyNotPublished:
		return d.publish(ctx)
	}
	return nil, &OwnKeyError{Own: own}
}

// PublishKeyAgain binds the device's key to the account again after the
// directory ended its binding (ErrOwnKeyReset): an app calls it only when
// its user chose to, having been told that the key was reset (contacts
// see the key come back as a key change). It also publishes on a first
// run. It does not replace another key bound to the account
// (ErrOwnKeyReplaced).
func (d *Device) PublishKeyAgain(ctx context.Context) (*VerifiedKey, error) {
	own, err := d.CheckKey(ctx)
	if err != nil {
		return nil, err
	}
	switch own.Status {
	case KeyBound:
		return own.Key, nil
	case KeyReplaced:
		return nil, &OwnKeyError{Own: own}
	}
	return d.publish(ctx)
}

func (d *Device) publish(ctx context.Context) (*VerifiedKey, error) {
	k, err := d.keys.PublishKey(ctx, d.store.Identity().PublicKey())
	if err != nil {
		return nil, fmt.Errorf("client: publish key: %w", err)
	}
	// This device made the entries up to its publish: its user chose
	// them (a first run, or publishing again after a reset).
	if err := d.store.SetOwnSeen(k.Version); err != nil {
		return nil, err
	}
	return k, nil
}

// Announce tells clinkd that this device is online, so that it delivers
// the timed messages and receipts it holds for the user (docs/expiry.md,
// step 1). Start does it, and the device does it again after every
// reconnection and every AnnounceEvery.
func (d *Device) Announce(ctx context.Context) error {
	return d.c.AnnounceDevice(ctx, d.component, d.id)
}

// ID is the device's stable id (DeviceConfig.DeviceID).
func (d *Device) ID() string { return d.id }

// deviceIDFile reads the device id kept at path, or makes a random one
// there (0600) on first use.
func deviceIDFile(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		id := strings.TrimSpace(string(b))
		if err := expiryxml.CheckDeviceID(id); err != nil {
			return "", fmt.Errorf("client: %s: %w", path, err)
		}
		return id, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("client: device id: %w", err)
	}
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("client: device id: %w", err)
	}
	id := hex.EncodeToString(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return deviceIDFile(path) // another process made it first
	}
	if err != nil {
		return "", fmt.Errorf("client: device id: %w", err)
	}
	_, err = f.WriteString(id + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("client: device id: %w", err)
	}
	return id, nil
}

// background follows the session until it ends: a Connection event for
// each change, an announcement and a receipt catch-up after each
// reconnection, and an announcement every announceEvery.
func (d *Device) background() {
	stop := d.c.Watch(func(ev SessionEvent) {
		d.rx.push(outcome{ev: &Connection{Up: ev.Up, Resumed: ev.Resumed, Final: ev.Final, Err: ev.Err}})
		if ev.Up {
			go d.afterReconnect()
		}
	})
	defer stop()
	d.catchUpReceipts()
	t := time.NewTicker(d.announceEvery)
	defer t.Stop()
	for {
		select {
		case <-d.c.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), d.c.cfg.RequestTimeout)
			d.Announce(ctx) // a failure means the link is down: the reconnection announces
			cancel()
		}
	}
}

// afterReconnect announces the device again and catches up on receipts.
func (d *Device) afterReconnect() {
	ctx, cancel := context.WithTimeout(context.Background(), d.c.cfg.RequestTimeout)
	d.Announce(ctx)
	cancel()
	d.catchUpReceipts()
}
