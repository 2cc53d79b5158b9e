package clinkid

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"
)

// ejabberd's external authentication protocol (ejabberd's extauth.erl;
// docs/clinkid.md): ejabberd starts a pool of programs (extauth_pool_size)
// and writes each one request at a time on its stdin, a 2-byte big-endian
// length followed by that many bytes:
//
//	auth:USER:SERVER:PASSWORD
//	isuser:USER:SERVER
//	setpass:USER:SERVER:PASSWORD
//	tryregister:USER:SERVER:PASSWORD
//	removeuser:USER:SERVER
//	removeuser3:USER:SERVER:PASSWORD
//
// USER and SERVER cannot hold ':' (RFC 7622 forbids it in localparts and
// domains); PASSWORD is the rest of the line and may. The program answers
// each request on stdout with exactly 00 02 00 01 (true) or 00 02 00 00
// (false), in order.

// ExtauthMaxFrame is the longest request clinkd reads; longer ones are
// consumed and answered false. The protocol's own limit is 65535 bytes;
// a valid request is at most an op, a 64-byte name, a 1023-byte domain and
// a MaxPasswordBytes password.
const ExtauthMaxFrame = 4096

var (
	extauthTrue  = []byte{0, 2, 0, 1}
	extauthFalse = []byte{0, 2, 0, 0}
)

// errFrameTooLarge is a frame longer than ExtauthMaxFrame: it has been
// consumed, and the stream is still in step.
var errFrameTooLarge = errors.New("clinkid: extauth request too long")

// ReadExtauthFrame reads one length-prefixed request into buf (which must
// hold ExtauthMaxFrame bytes) and returns it. It returns io.EOF at a clean
// end between frames, io.ErrUnexpectedEOF for an end inside one, and an
// error wrapping errFrameTooLarge, after discarding the frame, for one
// longer than ExtauthMaxFrame. Partial reads are retried until the frame is
// whole.
func ReadExtauthFrame(r io.Reader, buf []byte) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err // io.EOF only when no byte of the header came
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > ExtauthMaxFrame || n > len(buf) {
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w (%d bytes)", errFrameTooLarge, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf[:n], nil
}

// ExtauthRequest is one parsed request.
type ExtauthRequest struct {
	Op       string // auth, isuser, setpass, tryregister, removeuser, removeuser3
	User     string
	Server   string
	Password string // empty for isuser and removeuser
}

// ParseExtauth parses a request frame. It refuses anything but the six
// operations with their exact number of fields, and anything that is not
// UTF-8.
func ParseExtauth(frame []byte) (ExtauthRequest, error) {
	var req ExtauthRequest
	if !utf8.Valid(frame) {
		return req, errors.New("clinkid: extauth request is not UTF-8")
	}
	op, rest, _ := strings.Cut(string(frame), ":")
	req.Op = op
	var fields int
	switch op {
	case "isuser", "removeuser":
		fields = 2
	case "auth", "setpass", "tryregister", "removeuser3":
		fields = 3
	default:
		return req, errors.New("clinkid: unknown extauth operation")
	}
	f := strings.SplitN(rest, ":", fields)
	if len(f) != fields || f[0] == "" || f[1] == "" || (fields == 2 && strings.Contains(f[1], ":")) {
		return req, fmt.Errorf("clinkid: malformed extauth %s request", op)
	}
	req.User, req.Server = f[0], f[1]
	if fields == 3 {
		req.Password = f[2]
	}
	return req, nil
}

// Checker is what the ejabberd bridge asks; *Service is one.
type Checker interface {
	CheckLogin(ctx context.Context, name, secret, addr string) (bool, error)
	Exists(ctx context.Context, name string) (bool, error)
}

// Extauth answers ejabberd's external authentication requests for the
// accounts of Domain from a Checker.
type Extauth struct {
	Checker Checker
	Domain  string // requests for another server are answered false
	Log     *slog.Logger
	// Timeout bounds one check (default 10s). ejabberd gives up on an
	// answer after 30 s (extauth's call timeout); a late answer would be
	// read as the answer to the next request, so ours always comes first.
	Timeout time.Duration
}

// Serve answers requests from r on w until r ends (nil at a clean end
// between requests) or ctx ends. Malformed, oversized and refused requests
// are answered false and the stream stays in step; only an end inside a
// frame or a write error stops it early. ejabberd restarts the program
// when it exits.
func (e *Extauth) Serve(ctx context.Context, r io.Reader, w io.Writer) error {
	if e.Timeout <= 0 {
		e.Timeout = 10 * time.Second
	}
	log := e.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	br := bufio.NewReader(r)
	buf := make([]byte, ExtauthMaxFrame)
	for ctx.Err() == nil {
		frame, err := ReadExtauthFrame(br, buf)
		ok := false
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, errFrameTooLarge):
			log.Warn("clinkid extauth: request too long; answered false", "err", err)
		case err != nil:
			return fmt.Errorf("clinkid: extauth: read: %w", err)
		default:
			ok = e.handle(ctx, log, frame)
		}
		reply := extauthFalse
		if ok {
			reply = extauthTrue
		}
		if _, err := w.Write(reply); err != nil {
			return fmt.Errorf("clinkid: extauth: write: %w", err)
		}
		if f, isFlusher := w.(interface{ Flush() error }); isFlusher {
			if err := f.Flush(); err != nil {
				return fmt.Errorf("clinkid: extauth: write: %w", err)
			}
		}
	}
	return nil
}

// handle answers one request. Nothing logged here ever holds the
// password field.
func (e *Extauth) handle(ctx context.Context, log *slog.Logger, frame []byte) bool {
	req, err := ParseExtauth(frame)
	if err != nil {
		log.Warn("clinkid extauth: unreadable request; answered false", "len", len(frame), "err", err)
		return false
	}
	if !strings.EqualFold(req.Server, e.Domain) {
		log.Warn("clinkid extauth: request for another domain; answered false", "op", req.Op, "server", req.Server)
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, e.Timeout)
	defer cancel()
	switch req.Op {
	case "auth":
		ok, err := e.Checker.CheckLogin(ctx, req.User, req.Password, "")
		if err != nil {
			log.Error("clinkid extauth: check failed; answered false", "user", req.User, "err", err)
			return false
		}
		return ok
	case "isuser":
		ok, err := e.Checker.Exists(ctx, req.User)
		if err != nil {
			log.Error("clinkid extauth: lookup failed; answered false", "user", req.User, "err", err)
			return false
		}
		return ok
	}
	// setpass, tryregister, removeuser, removeuser3: ClinkID accounts are
	// created, changed and deleted over HTTPS only, where the password
	// policy, the quarantine of names and the end of key bindings apply.
	log.Info("clinkid extauth: refused; ClinkID accounts are managed over HTTPS", "op", req.Op, "user", req.User)
	return false
}
