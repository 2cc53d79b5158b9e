// Package clinkmobile is the ClinkMe device SDK for Android and iOS apps,
// made for gomobile bind (golang.org/x/mobile/cmd/gobind): its exported
// API uses only the types gobind accepts (signed integers, floats, bool,
// string, []byte, and this package's structs by pointer and interfaces),
// so that every function reaches Kotlin and Swift. TestGobindTypes holds
// it to those rules.
//
// It wraps package client's Device; docs/sdk.md explains the model. An
// app opens a Device, sends with Send, and takes events either by
// polling NextEvent from a background thread or by registering an
// EventListener. Outcomes that an app acts on are codes, never error
// texts to parse: Send returns a SendResult whose Code says what
// happened (accepted, refused with clinkd's bounds, a key change, …), and
// Open an OpenResult.
//
//	cfg := clinkmobile.NewConfig()
//	cfg.Server, cfg.JID, cfg.Password = "chat.example.org:5222", "alice@example.org", token
//	cfg.Component, cfg.VerifierKey, cfg.VRFKey = "clink.example.org", verifierKey, vrfKey
//	cfg.KeyStorePath, cfg.Passphrase = filesDir+"/clinkme.keys", passphrase
//	r := clinkmobile.Open(cfg)
//	if r.Code != clinkmobile.CodeOK { show(r.Message); return }
//	res := r.Device.Send("bob@example.org", "hello", true, 0)
package clinkmobile

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
)

// The codes of results and events. An app switches on them; Message
// (or Event.Text) is for people.
const (
	CodeOK              = ""                 // success
	CodeRefused         = "refused"          // clinkd refused the message: Condition, Text, the validity bounds
	CodeKeyChanged      = "key_changed"      // the recipient's key changed: show it, then send again
	CodeUnconfirmed     = "unconfirmed"      // sent, but clinkd's answer was lost with the connection
	CodeNoKey           = "no_key"           // the recipient has published no key
	CodeNotAuthorized   = "not_authorized"   // the server refused the password or app token
	CodeAccountLocked   = "account_locked"   // the account is locked or disabled
	CodeOwnKeyReset     = "own_key_reset"    // this device's key was reset: PublishKeyAgain only if the user chooses to
	CodeOwnKeyReplaced  = "own_key_replaced" // another device's key is bound to the account
	CodeWrongPassphrase = "wrong_passphrase" // the key store does not open with the passphrase
	CodeClosed          = "closed"           // the device was closed
	CodeTimeout         = "timeout"          // the operation did not finish in time
	CodeFailed          = "failed"           // anything else; Message says what
)

// The kinds of Event.
const (
	KindMessage    = "message"     // a message to show (Text); KeyChanged set when it came with a key change
	KindReceipt    = "receipt"     // a receipt of a message this user sent (ReceiptRead for read)
	KindExpiry     = "expiry"      // a timed message's validity ended: delete it (Local: by this device's clock)
	KindKeyChanged = "key_changed" // a contact's key changed (no message came with it)
	KindDropped    = "dropped"     // an envelope this device refused (Reason)
	KindRefused    = "refused"     // clinkd refused a message of this device after Send stopped waiting
	KindConnection = "connection"  // the link went down or came back (Up, Resumed, Final)
	KindOverflow   = "overflow"    // received stanzas were dropped unread (Count)
)

// Config is what Open needs. Make it with NewConfig.
type Config struct {
	Server   string // the XMPP server's c2s host:port
	JID      string // the account, user@domain
	Password string // its password or ClinkID app token
	// Component is clinkd's component domain; VerifierKey and VRFKey are
	// the key directory's public keys, shipped with the app.
	Component, VerifierKey, VRFKey string
	// CACertsPEM are CA certificates (PEM) that verify the server besides
	// the system's; empty for none.
	CACertsPEM []byte
	// KeyStorePath is the device's state file; Open creates it on first
	// run with a new identity key, sealed under Passphrase with
	// keystore.MobileParams.
	KeyStorePath, Passphrase string
	// TimeoutMillis bounds each request and Open (default 30000).
	TimeoutMillis int64
	// DeviceID is the device's stable id (client.DeviceConfig.DeviceID),
	// e.g. an installation id; "" keeps a random one beside the key
	// store.
	DeviceID string
}

// NewConfig returns a Config with the defaults set.
func NewConfig() *Config { return &Config{TimeoutMillis: 30000} }

// OpenResult is what Open returns: a Device, or a Code and a Message.
type OpenResult struct {
	Device  *Device
	Code    string
	Message string
	Created bool // the key store was made now (the device's first run)
}

// A Device is one logged-in ClinkMe device.
type Device struct {
	d       *client.Device
	timeout time.Duration

	mu       sync.Mutex
	listener EventListener
	stop     context.CancelFunc
	messages map[string]*client.Message // shown, by id, for Acknowledge (bounded)
	order    []string
}

// Open logs in, opens the key store (creating it on the first run), and
// starts the device: its key is published on the first run, and a reset
// or replaced key stops it with CodeOwnKeyReset or CodeOwnKeyReplaced.
func Open(cfg *Config) *OpenResult {
	if cfg == nil {
		return &OpenResult{Code: CodeFailed, Message: "no config"}
	}
	timeout := time.Duration(cfg.TimeoutMillis) * time.Millisecond
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	j, err := jid.Parse(cfg.JID)
	if err != nil || j.Localpart() == "" {
		return &OpenResult{Code: CodeFailed, Message: fmt.Sprintf("%q is not a user JID", cfg.JID)}
	}
	comp, err := jid.Parse(cfg.Component)
	if err != nil {
		return &OpenResult{Code: CodeFailed, Message: fmt.Sprintf("component %q: %v", cfg.Component, err)}
	}
	tlsCfg := &tls.Config{ServerName: j.Domainpart()}
	if len(cfg.CACertsPEM) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(cfg.CACertsPEM) {
			return &OpenResult{Code: CodeFailed, Message: "CACertsPEM holds no certificate"}
		}
		tlsCfg.RootCAs = pool
	}
	store, created, err := openStore(cfg.KeyStorePath, cfg.Passphrase, j.Bare().String())
	if err != nil {
		return &OpenResult{Code: code(err), Message: err.Error()}
	}
	c, err := client.Dial(ctx, client.Config{Addr: cfg.Server, JID: j.Bare(), Password: cfg.Password, TLS: tlsCfg, RequestTimeout: timeout})
	if err != nil {
		return &OpenResult{Code: code(err), Message: err.Error(), Created: created}
	}
	d, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: comp, VerifierKey: cfg.VerifierKey, VRFKey: cfg.VRFKey, DeviceID: cfg.DeviceID})
	if err == nil {
		err = d.Start(ctx)
	}
	if err != nil {
		c.Close()
		return &OpenResult{Code: code(err), Message: err.Error(), Created: created}
	}
	return &OpenResult{Device: &Device{d: d, timeout: timeout, messages: map[string]*client.Message{}}, Created: created}
}

// openStore opens the key store at path, or creates it with a new
// identity for bare.
func openStore(path, passphrase, bare string) (*keystore.Store, bool, error) {
	s, err := keystore.Open(path, []byte(passphrase))
	if err == nil {
		if s.Identity().JID() != bare {
			return nil, false, fmt.Errorf("the key store %s is %s's, not %s's", path, s.Identity().JID(), bare)
		}
		return s, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, err
	}
	id, err := envelope.GenerateIdentity(bare)
	if err != nil {
		return nil, false, err
	}
	s, err = keystore.CreateParams(path, []byte(passphrase), id, keystore.MobileParams())
	return s, err == nil, err
}

// code is the Code of an error of the SDK.
func code(err error) string {
	var re *client.RefusedError
	var kc *client.KeyChangeError
	switch {
	case err == nil:
		return CodeOK
	case errors.As(err, &re):
		return CodeRefused
	case errors.As(err, &kc):
		return CodeKeyChanged
	case errors.Is(err, client.ErrUnconfirmed):
		return CodeUnconfirmed
	case errors.Is(err, client.ErrNoKey):
		return CodeNoKey
	case errors.Is(err, client.ErrNotAuthorized):
		return CodeNotAuthorized
	case errors.Is(err, client.ErrAccountLocked):
		return CodeAccountLocked
	case errors.Is(err, client.ErrOwnKeyReset):
		return CodeOwnKeyReset
	case errors.Is(err, client.ErrOwnKeyReplaced):
		return CodeOwnKeyReplaced
	case errors.Is(err, keystore.ErrWrongPassphrase):
		return CodeWrongPassphrase
	case errors.Is(err, client.ErrClosed):
		return CodeClosed
	case errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	}
	return CodeFailed
}

// JID returns the device's full address.
func (d *Device) JID() string { return d.d.Client().JID().String() }

// SendResult is what Send returns.
type SendResult struct {
	ID      string // the message id, when a message left (accepted, refused or unconfirmed)
	Code    string // CodeOK when clinkd accepted it
	Message string
	// For CodeRefused: clinkd's condition (not-acceptable, forbidden,
	// resource-constraint, …), its text, whether trying later may help,
	// and the validity bounds it named (0 when it did not).
	Condition                              string
	Temporary                              bool
	MinValiditySeconds, MaxValiditySeconds int64
}

// Send seals text for to and waits until clinkd accepted or refused it.
// enhanced seals with the per-contact key; ttlSeconds > 0 makes a timed
// message.
func (d *Device) Send(to, text string, enhanced bool, ttlSeconds int64) *SendResult {
	j, err := jid.Parse(to)
	if err != nil {
		return &SendResult{Code: CodeFailed, Message: fmt.Sprintf("%q is not a JID", to)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*d.timeout)
	defer cancel()
	id, err := d.d.Send(ctx, j, text, client.SendOptions{Enhanced: enhanced, TTL: time.Duration(ttlSeconds) * time.Second})
	r := &SendResult{ID: id, Code: code(err)}
	if err != nil {
		r.Message = err.Error()
	}
	var re *client.RefusedError
	if errors.As(err, &re) {
		r.Condition, r.Message, r.Temporary = re.Condition, re.Text, re.Temporary()
		r.MinValiditySeconds, r.MaxValiditySeconds = int64(re.MinValidity/time.Second), int64(re.MaxValidity/time.Second)
	}
	return r
}

// Event is one event of the device; Kind says which, and which fields
// are set.
type Event struct {
	Kind string
	// The message (KindMessage), or the message a receipt, an expiry, a
	// drop or a refusal is about.
	ID   string
	From string // the author of a message; the reader of a receipt; the claimed author of a drop
	Peer string // the other party of the conversation
	Text string // a message's text; a refusal's or a drop's explanation
	// A message's details.
	Enhanced, Outgoing        bool
	TimeUnix, ExpiresUnixTime int64 // signed send time; expiry (0: not timed)
	// A receipt: read (else delivered); learnt after a reconnection; the
	// reader's device's stable id ("" when unknown).
	ReceiptRead, CatchUp bool
	ReceiptDevice        string
	// An expiry by this device's clock (else clinkd's notice).
	Local bool
	// A key change (KindKeyChanged, or a message that came with one): the
	// contact, the old and new key fingerprints (NewKey "" when the
	// binding ended).
	KeyChanged             bool
	KeyJID, OldKey, NewKey string
	// A drop's reason, or a refusal's condition.
	Reason string
	// A connection change.
	Up, Resumed, Final bool
	// Stanzas dropped unread (KindOverflow).
	Count int64
}

// NextEvent waits up to timeoutMillis for the device's next event and
// returns it, or nil when none came in time. Call it in a loop from a
// background thread (or use SetListener instead). It fails only once
// the device was closed (CodeClosed in the message).
func (d *Device) NextEvent(timeoutMillis int64) (*Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeoutMillis)*time.Millisecond)
	defer cancel()
	ev, err := d.d.NextEvent(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: %w", CodeClosed, err)
	}
	return d.convert(ev), nil
}

// An EventListener gets the device's events on a goroutine of the SDK,
// in order. Kotlin and Swift implement it.
type EventListener interface {
	OnEvent(e *Event)
}

// SetListener delivers every event to l until the device is closed or
// SetListener is called again (nil stops). An app uses either a
// listener or NextEvent, not both.
func (d *Device) SetListener(l EventListener) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		d.stop()
		d.stop = nil
	}
	if l == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	go func() {
		for {
			ev, err := d.d.NextEvent(ctx)
			if err != nil {
				return
			}
			l.OnEvent(d.convert(ev))
		}
	}()
}

// maxRemembered bounds the messages kept for Acknowledge.
const maxRemembered = 1024

func (d *Device) remember(m *client.Message) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.messages[m.ID] = m
	d.order = append(d.order, m.ID)
	for len(d.order) > maxRemembered {
		delete(d.messages, d.order[0])
		d.order = d.order[1:]
	}
}

// Acknowledge sends the sender of a message this device showed (one of
// the last 1,024) a delivery receipt, or a read marker when read.
func (d *Device) Acknowledge(messageID string, read bool) error {
	d.mu.Lock()
	m := d.messages[messageID]
	d.mu.Unlock()
	if m == nil {
		return fmt.Errorf("%s: no recent message %q", CodeFailed, messageID)
	}
	kind := client.Delivered
	if read {
		kind = client.Displayed
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	return d.d.Acknowledge(ctx, m, kind)
}

// PublishKeyAgain binds this device's key to the account again after an
// operator reset it (CodeOwnKeyReset): only when the user chose to.
func (d *Device) PublishKeyAgain() error {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	_, err := d.d.PublishKeyAgain(ctx)
	return err
}

// TrackReceipt makes the device learn, after every reconnection, the
// receipts of a message it sent before it started (an id the app kept).
func (d *Device) TrackReceipt(messageID string) { d.d.TrackReceipts(messageID) }

// Close ends the session.
func (d *Device) Close() error {
	d.SetListener(nil)
	return d.d.Close()
}

func (d *Device) convert(ev client.Event) *Event {
	switch ev := ev.(type) {
	case *client.Message:
		d.remember(ev)
		return messageEvent(ev)
	case *client.KeyChanged:
		e := &Event{Kind: KindKeyChanged}
		if ev.Message != nil {
			d.remember(ev.Message)
			e = messageEvent(ev.Message)
		}
		e.KeyChanged, e.KeyJID, e.OldKey = true, ev.Change.JID, fingerprint(ev.Change.Old)
		if ev.Change.New != nil {
			e.NewKey = fingerprint(*ev.Change.New)
		}
		return e
	case *client.Receipt:
		return &Event{Kind: KindReceipt, ID: ev.ID, From: ev.From.String(), ReceiptRead: ev.Kind == client.Displayed, CatchUp: ev.CatchUp, ReceiptDevice: ev.Device, TimeUnix: unix(ev.Time)}
	case *client.Expiry:
		return &Event{Kind: KindExpiry, ID: ev.ID, Peer: ev.Peer.String(), Local: ev.Local}
	case *client.DropError:
		return &Event{Kind: KindDropped, ID: ev.ID, From: ev.From, Peer: ev.Peer.String(), Reason: ev.Reason, Text: ev.Error()}
	case *client.RefusedError:
		return &Event{Kind: KindRefused, ID: ev.ID, Peer: ev.To.String(), Reason: ev.Condition, Text: ev.Text}
	case *client.Connection:
		e := &Event{Kind: KindConnection, Up: ev.Up, Resumed: ev.Resumed, Final: ev.Final}
		if ev.Err != nil {
			e.Text = ev.Err.Error()
		}
		return e
	case *client.InboxOverflow:
		return &Event{Kind: KindOverflow, Count: int64(ev.Dropped)}
	}
	return &Event{Kind: fmt.Sprintf("%T", ev)}
}

func messageEvent(m *client.Message) *Event {
	return &Event{
		Kind: KindMessage, ID: m.ID, From: m.From.String(), Peer: m.Peer.String(), Text: m.Text,
		Enhanced: m.Enhanced, Outgoing: m.Outgoing, TimeUnix: unix(m.Time), ExpiresUnixTime: unix(m.Expires),
	}
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func fingerprint(fp [32]byte) string { return fmt.Sprintf("SHA256:%x", fp) }
