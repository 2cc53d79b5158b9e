package devsync

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"
)

// handshake is what one side knows once the key exchange and the account
// check are done: the code it computed and the peer's device id (the data
// keys are in the session).
type handshake struct {
	code   string
	peerID string
}

// offerHandshake runs the offerer's (A's) part of the exchange:
//
//	A -> B  COMMIT  version, idA, SHA-256(label, idA, pkA)
//	B -> A  KEY     version, idB, pkB
//	A -> B  REVEAL  pkA
//	A -> B  ACCOUNT (handshake keys)
//	B -> A  ACCOUNT (handshake keys)
//
// and leaves s on the data keys.
func offerHandshake(s *session, deviceID, account string) (handshake, error) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return handshake{}, fmt.Errorf("devsync: generate key: %w", err)
	}
	pkA := priv.PublicKey().Bytes()
	commitFrame := appendFrame(nil, typeCommit, hello{version1, deviceID, commitment(deviceID, pkA)}.marshal())
	if err := s.write(commitFrame); err != nil {
		return handshake{}, err
	}

	f, hb, err := readHello(s, typeKey, "KEY", deviceID)
	if err != nil {
		return handshake{}, err
	}
	keyFrame := f.raw
	dh, err := sharedSecret(priv, hb.value[:])
	if err != nil {
		return handshake{}, err
	}

	revealFrame := appendFrame(nil, typeReveal, pkA)
	th1 := transcript1(commitFrame, keyFrame, revealFrame)
	hs, err := handshakeSecret(dh, th1)
	if err != nil {
		return handshake{}, err
	}
	hk, err := expandKeys(hs, labelHsA2B, labelHsB2A)
	if err != nil {
		return handshake{}, err
	}
	s.setKeys(hk.a2b, hk.b2a)
	accountA := s.seal(typeAccount, padAccount(account))
	if err := s.write(append(revealFrame, accountA...)); err != nil {
		return handshake{}, err
	}

	f, err = s.expect("account", typeAccount)
	if err != nil {
		return handshake{}, err
	}
	plain, err := s.open(f)
	if err != nil {
		return handshake{}, err
	}
	peerAccount, err := parseAccount(plain)
	if err != nil {
		return handshake{}, err
	}
	th2 := transcript2(th1, accountA, f.raw)
	if err := switchToData(s, hs, th2, true); err != nil {
		return handshake{}, err
	}
	if peerAccount != account {
		// The peer compares too and stops on its own; no ABORT needed.
		s.peerGone = true
		return handshake{}, ErrDifferentAccount
	}
	return handshake{code: codeFor(th1), peerID: hb.deviceID}, nil
}

// acceptHandshake is the accepter's (B's) side of offerHandshake.
func acceptHandshake(s *session, deviceID, account string) (handshake, error) {
	f, ha, err := readHello(s, typeCommit, "COMMIT", deviceID)
	if err != nil {
		return handshake{}, err
	}
	commitFrame := f.raw

	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return handshake{}, fmt.Errorf("devsync: generate key: %w", err)
	}
	var pkB [keyLen]byte
	copy(pkB[:], priv.PublicKey().Bytes())
	keyFrame := appendFrame(nil, typeKey, hello{version1, deviceID, pkB}.marshal())
	if err := s.write(keyFrame); err != nil {
		return handshake{}, err
	}

	f, err = s.expect("reveal", typeReveal)
	if err != nil {
		return handshake{}, err
	}
	revealFrame := f.raw
	pkA, err := parseReveal(f.body)
	if err != nil {
		return handshake{}, err
	}
	want := commitment(ha.deviceID, pkA[:])
	if subtle.ConstantTimeCompare(want[:], ha.value[:]) != 1 {
		return handshake{}, fmt.Errorf("devsync: revealed key does not match the commitment: %w", ErrProtocol)
	}
	dh, err := sharedSecret(priv, pkA[:])
	if err != nil {
		return handshake{}, err
	}
	th1 := transcript1(commitFrame, keyFrame, revealFrame)
	hs, err := handshakeSecret(dh, th1)
	if err != nil {
		return handshake{}, err
	}
	hk, err := expandKeys(hs, labelHsA2B, labelHsB2A)
	if err != nil {
		return handshake{}, err
	}
	s.setKeys(hk.b2a, hk.a2b)
	accountB := s.seal(typeAccount, padAccount(account))
	if err := s.write(accountB); err != nil {
		return handshake{}, err
	}

	f, err = s.read("account", s.io, typeAccount)
	if err != nil {
		return handshake{}, err
	}
	if f.typ != typeAccount {
		return handshake{}, unexpected(f, "ACCOUNT")
	}
	plain, err := s.open(f)
	if err != nil {
		return handshake{}, err
	}
	peerAccount, err := parseAccount(plain)
	if err != nil {
		return handshake{}, err
	}
	th2 := transcript2(th1, f.raw, accountB)
	if err := switchToData(s, hs, th2, false); err != nil {
		return handshake{}, err
	}
	if peerAccount != account {
		s.peerGone = true
		return handshake{}, ErrDifferentAccount
	}
	return handshake{code: codeFor(th1), peerID: ha.deviceID}, nil
}

func sharedSecret(priv *ecdh.PrivateKey, peer []byte) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("devsync: bad public value: %w", ErrProtocol)
	}
	// ECDH fails on a low-order point (all-zero output), so the peer cannot
	// force a known shared secret.
	dh, err := priv.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("devsync: bad public value: %w", ErrProtocol)
	}
	return dh, nil
}

func switchToData(s *session, hs, th2 []byte, offerer bool) error {
	prk, err := dataSecret(hs, th2)
	if err != nil {
		return err
	}
	dk, err := expandKeys(prk, labelDataA2B, labelDataB2A)
	if err != nil {
		return err
	}
	if offerer {
		s.setKeys(dk.a2b, dk.b2a)
	} else {
		s.setKeys(dk.b2a, dk.a2b)
	}
	return nil
}

// offer is the offering side after the connection is up:
//
//	show code; wait for B's PAYLOAD (or ABORT); ask the user to confirm;
//	A -> B DONE (or ABORT rejected)
func offer(s *session, cfg *OfferConfig, userTimeout time.Duration) (*Received, error) {
	h, err := offerHandshake(s, cfg.DeviceID, cfg.Account)
	if err != nil {
		return nil, err
	}
	s.log.DebugContext(s.ctx, "devsync: offer: keys agreed", "peer_device", h.peerID)
	if err := cfg.ShowCode(s.ctx, h.code); err != nil {
		return nil, fmt.Errorf("devsync: show code: %w: %w", ErrAborted, err)
	}

	// B's user reads the code here and types it there: a person's pace.
	f, err := s.read("payload", userTimeout, typePayload, typeAbort)
	if err != nil {
		return nil, err
	}
	switch f.typ {
	case typePayload:
	case typeAbort:
		return nil, s.peerAbort(f)
	default:
		return nil, unexpected(f, "PAYLOAD")
	}
	plain, err := s.openInPlace(f)
	if err != nil {
		return nil, err
	}
	payload, err := parsePayload(plain)
	if err != nil {
		return nil, err
	}

	cctx, cancel := context.WithTimeout(s.ctx, userTimeout)
	err = cfg.Confirm(cctx)
	cancel()
	if err != nil {
		clear(plain)
		return nil, fmt.Errorf("devsync: confirm: %w: %w", ErrRejected, err)
	}
	if err := s.write(s.seal(typeDone, nil)); err != nil {
		clear(plain)
		return nil, err
	}
	return &Received{Payload: payload, PeerDeviceID: h.peerID}, nil
}

// accept is the accepting side after the connection is up:
//
//	ask for the code; compare; B -> A PAYLOAD (or ABORT wrong code);
//	wait for DONE (or ABORT)
func accept(s *session, code CodeFunc, cfg *AcceptConfig, userTimeout time.Duration) error {
	h, err := acceptHandshake(s, cfg.DeviceID, cfg.Account)
	if err != nil {
		return err
	}
	s.log.DebugContext(s.ctx, "devsync: accept: keys agreed", "peer_device", h.peerID)

	// While the user types, read the next frame in the background: if the
	// offering device gives up, the prompt is withdrawn at once. Only this
	// goroutine reads conn until it delivers.
	type result struct {
		f   frame
		err error
	}
	next := make(chan result, 1)
	// The prompt's own timeout ends code entry; the read deadline is one
	// network step later, so that it does not race the prompt.
	if err := s.conn.SetReadDeadline(time.Now().Add(userTimeout + s.io)); err != nil {
		return s.netErr("read", err)
	}
	codeCtx, cancel := context.WithTimeout(s.ctx, userTimeout)
	defer cancel()
	go func() {
		f, err := readFrame(s.conn, typeDone, typeAbort)
		next <- result{f, err}
		cancel()
	}()
	typed, codeErr := code(codeCtx)

	select {
	case r := <-next:
		// The offering device spoke (or went away) before we sent anything.
		if r.err != nil {
			return s.readErr("done", r.err)
		}
		if r.f.typ == typeAbort {
			return s.peerAbort(r.f)
		}
		return unexpected(r.f, "nothing")
	default:
	}
	if codeErr != nil {
		if s.ctx.Err() == nil && errors.Is(codeCtx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("devsync: read code: %w", ErrTimeout)
		}
		return fmt.Errorf("devsync: read code: %w: %w", ErrAborted, codeErr)
	}
	if !codesEqual(typed, h.code) {
		return ErrWrongCode
	}
	if cfg.OnCodeAccepted != nil {
		cfg.OnCodeAccepted()
	}

	buf := newSealBuf(paddedLen(len(cfg.Payload)))
	putPayload(buf[headerLen:], cfg.Payload)
	if err := s.write(s.sealInPlace(typePayload, buf)); err != nil {
		return err
	}
	// Now the offering device's user confirms: a person's pace again, plus
	// one network step for the answer.
	if err := s.conn.SetReadDeadline(time.Now().Add(userTimeout + s.io)); err != nil {
		return s.netErr("read", err)
	}
	r := <-next
	if r.err != nil {
		return s.readErr("done", r.err)
	}
	switch r.f.typ {
	case typeDone:
	case typeAbort:
		return s.peerAbort(r.f)
	default:
		return unexpected(r.f, "DONE")
	}
	plain, err := s.open(r.f)
	if err != nil {
		return err
	}
	if len(plain) != 0 {
		return fmt.Errorf("devsync: DONE with %d bytes: %w", len(plain), ErrProtocol)
	}
	return nil
}

// readHello reads the other device's hello (its COMMIT or KEY frame, as
// want says), or its abort, and checks the version and that it is not
// this very device.
func readHello(s *session, want frameType, name, deviceID string) (frame, hello, error) {
	f, err := s.expect(strings.ToLower(name), want)
	if err != nil {
		return frame{}, hello{}, err
	}
	h, err := parseHello(f.body)
	if err != nil {
		return frame{}, hello{}, err
	}
	if h.version != version1 {
		return frame{}, hello{}, fmt.Errorf("devsync: other device speaks version %d, this one %d: %w", h.version, version1, ErrVersion)
	}
	if h.deviceID == deviceID {
		return frame{}, hello{}, ErrSameDevice
	}
	return f, h, nil
}

// expect reads the next handshake frame, which must be of type want or
// the other device's plain abort (returned as its error).
func (s *session) expect(what string, want frameType) (frame, error) {
	f, err := s.read(what, s.io, want, typePlainAbort)
	if err != nil {
		return frame{}, err
	}
	switch f.typ {
	case want:
		return f, nil
	case typePlainAbort:
		return frame{}, s.peerAbort(f)
	}
	return frame{}, unexpected(f, strings.ToUpper(what))
}
