// Package devsync moves a device's secrets to another device of the same
// ClinkID account over the local network, as specified in docs/devsync.md.
//
// Nothing goes through a server or a cloud service: the two devices talk TCP
// to each other directly, and everything after the key exchange is encrypted
// with AES-256-GCM under keys that exist only for that session.
//
// The two roles:
//
//   - Offer runs on the device that receives the secrets (the new one). It
//     accepts one connection on a listener, shows a six-digit code through
//     OfferConfig.ShowCode, and returns the payload once its user confirms.
//   - Accept runs on the device that holds the secrets. It dials the
//     offering device, asks its user to type the code shown there, and sends
//     the payload only if the typed code matches.
//
// The code is not a password chosen in advance: it is derived from both
// devices' ephemeral X25519 public values after a commit-then-reveal
// exchange, so a man in the middle gets two different codes unless it
// guesses right, which it does with probability 10^-6 per session. Typing the
// code on the sending device authenticates the receiver before any secret
// leaves; the final confirmation on the receiving device authenticates the
// sender before the received payload is used (see docs/devsync.md for why
// both steps are needed).
//
// The payload is opaque to this package: a versioned serialization of the
// key store, chosen by the caller.
package devsync

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
	"unicode/utf8"
)

// OfferConfig configures the offering (receiving) side.
type OfferConfig struct {
	// DeviceID identifies this device to the other one: 1..MaxDeviceID
	// bytes of UTF-8, stable for the installation (not secret).
	DeviceID string
	// Account is the ClinkID account this device is logged in to, in the
	// canonical form the caller uses everywhere; compared byte for byte.
	Account string

	// ShowCode displays the code to the user, who types it on the other
	// device. It is called once, after the other device connected and the
	// accounts matched, and must return promptly; an error ends the
	// session.
	ShowCode func(ctx context.Context, code string) error

	// Confirm asks the user whether the other device reported that it
	// accepted the code and sent the data. It is called once, after the
	// payload arrived and before Offer returns it; it is required. Anything
	// else (including ctx ending) discards the payload and ends the session
	// with ErrRejected on both devices. This step is what stops a man in the
	// middle from planting its own keys on this device: see
	// docs/devsync.md, "Why the receiving device confirms".
	Confirm func(ctx context.Context) error

	// IOTimeout bounds each network step; zero means DefaultIOTimeout.
	IOTimeout time.Duration
	// UserTimeout bounds each step that waits for a person; zero means
	// DefaultUserTimeout.
	UserTimeout time.Duration
	// Logger receives progress records (never secrets); nil discards them.
	Logger *slog.Logger
}

// Received is what Offer returns on success.
type Received struct {
	// Payload is the byte-identical payload given to Accept on the other
	// device.
	Payload []byte
	// PeerDeviceID is the other device's DeviceID.
	PeerDeviceID string
}

// CodeFunc asks the user to type the code shown on the offering device and
// returns what was typed (spaces and dashes are ignored). It must return
// when ctx ends.
type CodeFunc func(ctx context.Context) (string, error)

// AcceptConfig configures the accepting (sending) side.
type AcceptConfig struct {
	// DeviceID and Account: as in OfferConfig.
	DeviceID string
	Account  string

	// Payload is sent to the offering device once the code matches; at most
	// MaxPayload bytes. Accept does not keep or change it.
	Payload []byte

	// OnCodeAccepted, if set, is called once the typed code matched, just
	// before the payload is sent. Use it to tell the user "code accepted:
	// now confirm on the other device"; that message is what the other
	// device's user checks before confirming (OfferConfig.Confirm). It must
	// return promptly.
	OnCodeAccepted func()

	// IOTimeout, UserTimeout, Logger: as in OfferConfig.
	IOTimeout   time.Duration
	UserTimeout time.Duration
	Logger      *slog.Logger
}

func checkIdentity(deviceID, account string) error {
	if len(deviceID) == 0 || len(deviceID) > MaxDeviceID || !utf8.ValidString(deviceID) {
		return fmt.Errorf("devsync: device id must be 1..%d bytes of UTF-8: %w", MaxDeviceID, ErrConfig)
	}
	if len(account) == 0 || len(account) > MaxAccount || !utf8.ValidString(account) {
		return fmt.Errorf("devsync: account must be 1..%d bytes of UTF-8: %w", MaxAccount, ErrConfig)
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// Offer waits for one device to connect on ln, runs one session with it,
// and returns the payload that device sent. It accepts exactly one
// connection, whatever the outcome; to try again, call Offer again (which
// shows a new code). Offer does not close ln.
//
// Once a device connected, Offer's error wraps one of ErrWrongCode,
// ErrDifferentAccount, ErrRejected, ErrAborted, ErrVersion, ErrSameDevice,
// ErrProtocol, ErrTooLarge, ErrTimeout, or the context's error; before
// that, ErrConfig, the context's error or the listener's error.
func Offer(ctx context.Context, ln net.Listener, cfg OfferConfig) (*Received, error) {
	if err := checkIdentity(cfg.DeviceID, cfg.Account); err != nil {
		return nil, err
	}
	if cfg.ShowCode == nil || cfg.Confirm == nil {
		return nil, fmt.Errorf("devsync: offer needs ShowCode and Confirm: %w", ErrConfig)
	}
	log := orDiscard(cfg.Logger)
	conn, err := acceptOne(ctx, ln)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := watchContext(ctx, conn)
	defer stop()

	log.InfoContext(ctx, "devsync: offer: device connected", "remote", conn.RemoteAddr().String())
	s := newSession(ctx, conn, orDefault(cfg.IOTimeout, DefaultIOTimeout), log)
	got, err := offer(s, &cfg, orDefault(cfg.UserTimeout, DefaultUserTimeout))
	if err != nil {
		err = s.abort(err)
		log.InfoContext(ctx, "devsync: offer failed", "err", err)
		return nil, err
	}
	log.InfoContext(ctx, "devsync: offer done", "peer_device", got.PeerDeviceID, "payload_bytes", len(got.Payload))
	return got, nil
}

// Accept dials the offering device at addr, asks the user for the code with
// code, and sends cfg.Payload if it matches. It returns nil once the
// offering device confirmed receipt.
//
// Once connected, Accept's error wraps the same sentinels as Offer's;
// before that, ErrConfig, ErrTooLarge (payload), the context's error or the
// dial error.
func Accept(ctx context.Context, addr string, code CodeFunc, cfg AcceptConfig) error {
	if err := checkIdentity(cfg.DeviceID, cfg.Account); err != nil {
		return err
	}
	if code == nil {
		return fmt.Errorf("devsync: accept needs a CodeFunc: %w", ErrConfig)
	}
	if len(cfg.Payload) > MaxPayload {
		return fmt.Errorf("devsync: payload of %d bytes, limit %d: %w", len(cfg.Payload), MaxPayload, ErrTooLarge)
	}
	log := orDiscard(cfg.Logger)
	ioTimeout := orDefault(cfg.IOTimeout, DefaultIOTimeout)
	d := net.Dialer{Timeout: ioTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("devsync: dial: %w", cerr)
		}
		return fmt.Errorf("devsync: dial: %w", err)
	}
	defer conn.Close()
	stop := watchContext(ctx, conn)
	defer stop()

	log.InfoContext(ctx, "devsync: accept: connected", "remote", conn.RemoteAddr().String())
	s := newSession(ctx, conn, ioTimeout, log)
	if err := accept(s, code, &cfg, orDefault(cfg.UserTimeout, DefaultUserTimeout)); err != nil {
		err = s.abort(err)
		log.InfoContext(ctx, "devsync: accept failed", "err", err)
		return err
	}
	log.InfoContext(ctx, "devsync: accept done")
	return nil
}

// acceptOne takes one connection from ln, giving up when ctx ends. If ln can
// take a deadline (as *net.TCPListener can), the wait is interrupted through
// it and the deadline is cleared again before returning; otherwise a late
// connection is closed as soon as it arrives.
func acceptOne(ctx context.Context, ln net.Listener) (net.Conn, error) {
	type deadliner interface{ SetDeadline(time.Time) error }
	if d, ok := ln.(deadliner); ok {
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			select {
			case <-ctx.Done():
				_ = d.SetDeadline(time.Unix(1, 0))
			case <-done:
			}
		})
		conn, err := ln.Accept()
		close(done)
		wg.Wait()
		_ = d.SetDeadline(time.Time{})
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				err = cerr
			}
			return nil, fmt.Errorf("devsync: waiting for the other device: %w", err)
		}
		return conn, nil
	}
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		ch <- result{conn, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("devsync: waiting for the other device: %w", r.err)
		}
		return r.conn, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("devsync: waiting for the other device: %w", ctx.Err())
	}
}
