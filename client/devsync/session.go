package devsync

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"
)

// Default timeouts.
const (
	// DefaultIOTimeout bounds every network step that does not wait for a
	// person: on a LAN a round trip takes milliseconds, and 10 s still
	// covers a Wi-Fi radio waking from power save.
	DefaultIOTimeout = 10 * time.Second
	// DefaultUserTimeout bounds every step that waits for a person to read,
	// type or confirm the code: long enough to fetch the other device, short
	// enough that a forgotten session does not keep a port open.
	DefaultUserTimeout = 2 * time.Minute
)

// session is one side of one connection. It is used by one goroutine, except
// that Accept reads one frame in a second goroutine while the user types the
// code; that goroutine touches only conn.
type session struct {
	ctx  context.Context
	conn net.Conn
	io   time.Duration
	log  *slog.Logger

	send, recv       cipher.AEAD // nil until handshake keys exist
	sendSeq, recvSeq uint64

	// peerGone is set once the peer aborted or the connection failed, so
	// that we do not try to send it an ABORT.
	peerGone bool
}

func newSession(ctx context.Context, conn net.Conn, ioTimeout time.Duration, log *slog.Logger) *session {
	return &session{ctx: ctx, conn: conn, io: ioTimeout, log: log}
}

// write sends raw frames with the I/O timeout.
func (s *session) write(raw []byte) error {
	if err := s.conn.SetWriteDeadline(time.Now().Add(s.io)); err != nil {
		return s.netErr("write", err)
	}
	if _, err := s.conn.Write(raw); err != nil {
		s.peerGone = true
		return s.netErr("write", err)
	}
	return nil
}

// read reads one frame of one of the wanted types, waiting at most d.
func (s *session) read(what string, d time.Duration, want ...frameType) (frame, error) {
	if err := s.conn.SetReadDeadline(time.Now().Add(d)); err != nil {
		return frame{}, s.netErr("read "+what, err)
	}
	f, err := readFrame(s.conn, want...)
	if err != nil {
		return frame{}, s.readErr(what, err)
	}
	return f, nil
}

// readErr classifies an error from readFrame on s.conn.
func (s *session) readErr(what string, err error) error {
	if errors.Is(err, ErrProtocol) || errors.Is(err, ErrTooLarge) {
		return fmt.Errorf("devsync: read %s: %w", what, err)
	}
	if err == io.EOF {
		s.peerGone = true
		if cerr := s.ctx.Err(); cerr != nil {
			return fmt.Errorf("devsync: read %s: %w", what, cerr)
		}
		return fmt.Errorf("devsync: read %s: connection closed by the other device: %w: %w", what, ErrProtocol, io.ErrUnexpectedEOF)
	}
	return s.netErr("read "+what, err)
}

// netErr turns a network error into ours: the context's error if it ended
// (cancellation works by moving the deadline to the past), ErrTimeout for a
// deadline, ErrProtocol for an early close. After a timeout or cancellation
// the peer may still be there, so abort will still try to tell it.
func (s *session) netErr(what string, err error) error {
	if cerr := s.ctx.Err(); cerr != nil {
		return fmt.Errorf("devsync: %s: %w", what, cerr)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("devsync: %s: %w", what, ErrTimeout)
	}
	if errors.Is(err, ErrProtocol) {
		return err
	}
	s.peerGone = true
	return fmt.Errorf("devsync: %s: %w: %w", what, ErrProtocol, err)
}

// seal encrypts plain as a frame of type t with the send key.
func (s *session) seal(t frameType, plain []byte) []byte {
	buf := newSealBuf(len(plain))
	copy(buf[headerLen:], plain)
	return s.sealInPlace(t, buf)
}

// newSealBuf returns a frame buffer for an n-byte plaintext, which the
// caller writes at buf[headerLen:]; its capacity leaves room for the tag.
func newSealBuf(n int) []byte {
	return make([]byte, headerLen+n, headerLen+n+tagLen)
}

// sealInPlace writes the header into buf[:headerLen] and encrypts
// buf[headerLen:] in place, so no plaintext copy outlives the call.
func (s *session) sealInPlace(t frameType, buf []byte) []byte {
	if s.send == nil {
		panic("devsync: seal before keys") // internal impossibility
	}
	plain := buf[headerLen:]
	buf[0] = byte(t)
	binary.BigEndian.PutUint32(buf[1:headerLen], uint32(len(plain)+tagLen))
	ct := s.send.Seal(plain[:0], nonce(s.sendSeq), plain, buf[:headerLen])
	s.sendSeq++
	return buf[:headerLen+len(ct)]
}

// open decrypts f with the receive key into a new buffer, leaving f.raw as
// it was on the wire (ACCOUNT frames are hashed into the transcript after
// they are opened). The header is the associated data, so a changed type
// or length fails authentication.
func (s *session) open(f frame) ([]byte, error) {
	return s.openTo(nil, f)
}

// openInPlace decrypts f over its own ciphertext; f.raw is no longer the
// wire bytes afterwards. Used for PAYLOAD, the one large frame.
func (s *session) openInPlace(f frame) ([]byte, error) {
	return s.openTo(f.body[:0], f)
}

func (s *session) openTo(dst []byte, f frame) ([]byte, error) {
	if s.recv == nil {
		return nil, fmt.Errorf("devsync: encrypted frame type 0x%02x before keys: %w", byte(f.typ), ErrProtocol)
	}
	plain, err := s.recv.Open(dst, nonce(s.recvSeq), f.body, f.raw[:headerLen])
	if err != nil {
		return nil, fmt.Errorf("devsync: frame type 0x%02x failed authentication: %w", byte(f.typ), ErrProtocol)
	}
	s.recvSeq++
	return plain, nil
}

// setKeys switches both directions to a new phase; counters restart.
func (s *session) setKeys(send, recv cipher.AEAD) {
	s.send, s.recv = send, recv
	s.sendSeq, s.recvSeq = 0, 0
}

// peerAbort turns an ABORT frame into the matching error.
func (s *session) peerAbort(f frame) error {
	s.peerGone = true
	if f.typ == typePlainAbort {
		reason, err := parseAbort(f.body)
		if err != nil {
			return err
		}
		return fmt.Errorf("devsync: the other device stopped: %w", errForReason(reason, false))
	}
	plain, err := s.open(f)
	if err != nil {
		return err
	}
	reason, err := parseAbort(plain)
	if err != nil {
		return err
	}
	return fmt.Errorf("devsync: the other device stopped: %w", errForReason(reason, true))
}

// abort tells the peer why we stop, if it is still there, and returns err.
// It never blocks for longer than a short write.
func (s *session) abort(err error) error {
	if s.peerGone {
		return err
	}
	reason := reasonFor(err)
	var raw []byte
	if s.send == nil {
		raw = appendFrame(nil, typePlainAbort, []byte{reason})
	} else {
		raw = s.seal(typeAbort, []byte{reason})
	}
	// A short deadline: the ABORT is a courtesy, the error stands anyway.
	_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = s.conn.Write(raw)
	s.peerGone = true
	return err
}

// unexpected is the error for a frame that is valid but out of place.
func unexpected(f frame, want string) error {
	return fmt.Errorf("devsync: got frame type 0x%02x, want %s: %w", byte(f.typ), want, ErrProtocol)
}

// watchContext moves the connection's deadline to the past when ctx ends,
// which unblocks any read or write; the returned func stops the watch.
func watchContext(ctx context.Context, conn net.Conn) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		_ = conn.SetDeadline(time.Unix(1, 0))
	})
}
