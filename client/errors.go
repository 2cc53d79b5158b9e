package client

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"mellium.im/xmpp/stream"
)

// Errors of the session. Each is matched with errors.Is; the typed errors
// below are matched with errors.As and carry what the server said.
var (
	// ErrClosed: the session ended for good, because Close was called or
	// because the server refused to let the device back in (Client.Err
	// says why). Every call after that fails with it.
	ErrClosed = errors.New("client: session closed")
	// ErrConnectionLost: the connection dropped while a request waited
	// for its answer, and the stream could not be resumed, so the answer
	// is lost. The session reconnects by itself; asking again is safe for
	// every request of the SDK (lookups, publishing the key already bound,
	// receipt state).
	ErrConnectionLost = errors.New("client: the connection was lost before the answer came")
	// ErrNotAuthorized: the server refused the account's credentials (a
	// wrong password or app token, an account that does not exist). Ask
	// the user again; retrying the same credentials does not help.
	ErrNotAuthorized = errors.New("client: the server refused the credentials")
	// ErrAccountLocked: the account may not log in now: disabled by the
	// server, or locked by ClinkID after failed password attempts
	// (APIError.RetryAfter says how long, when ClinkID knows).
	ErrAccountLocked = errors.New("client: the account is locked or disabled")
	// ErrNotEncrypted: the server did not secure the stream with TLS.
	ErrNotEncrypted = errors.New("client: the stream is not encrypted")
)

// An AuthError is the server's refusal of a login (RFC 6120, section
// 6.5): Condition is the SASL condition, such as not-authorized or
// account-disabled, and Text what the server said. It matches
// ErrNotAuthorized or ErrAccountLocked with errors.Is, by its condition.
type AuthError struct {
	Condition string
	Text      string
}

func (e *AuthError) Error() string {
	if e.Text == "" {
		return "client: login refused: " + e.Condition
	}
	return "client: login refused: " + e.Condition + ": " + e.Text
}

// Is matches the sentinel of the condition.
func (e *AuthError) Is(target error) bool {
	switch target {
	case ErrNotAuthorized:
		return e.Condition == "not-authorized" || e.Condition == "credentials-expired" || e.Condition == "invalid-authzid"
	case ErrAccountLocked:
		return e.Condition == "account-disabled"
	}
	return false
}

// permanent reports whether reconnecting with the same credentials
// cannot succeed: the server refused them.
func (e *AuthError) permanent() bool {
	return e.Is(ErrNotAuthorized) || e.Is(ErrAccountLocked)
}

// A StreamError is the server ending the stream (RFC 6120, section 4.9):
// Condition such as conflict, policy-violation or system-shutdown, and
// the server's text. The session reconnects after one.
type StreamError struct {
	Condition string
	Text      string
}

func (e *StreamError) Error() string {
	if e.Text == "" {
		return "client: the server ended the stream: " + e.Condition
	}
	return "client: the server ended the stream: " + e.Condition + ": " + e.Text
}

// sessionError turns what mellium.im/xmpp returned for a login or a
// stream into the SDK's own types, keeping everything else as it is.
func sessionError(err error) error {
	if err == nil {
		return nil
	}
	if cond, text, ok := saslFailure(err); ok {
		return &AuthError{Condition: cond, Text: text}
	}
	var se stream.Error
	if errors.As(err, &se) {
		e := &StreamError{Condition: se.Err}
		for _, t := range se.Text {
			e.Text = t.Value
			break
		}
		return e
	}
	return err
}

// saslFailure finds a SASL failure in err's chain. mellium.im/xmpp
// v0.22.0 returns it as a value of its internal type saslerr.Error, with
// the exported fields Condition (a fmt.Stringer) and Text; the SDK reads
// them by reflection rather than by matching its message, and keeps this
// the one place that knows the type.
func saslFailure(err error) (cond, text string, ok bool) {
	for e := err; e != nil; e = errors.Unwrap(e) {
		v := reflect.ValueOf(e)
		t := v.Type()
		if t.Kind() != reflect.Struct || t.Name() != "Error" || !strings.HasSuffix(t.PkgPath(), "/internal/saslerr") {
			continue
		}
		c, t2 := v.FieldByName("Condition"), v.FieldByName("Text")
		if !c.IsValid() || !t2.IsValid() || t2.Kind() != reflect.String || !c.CanInterface() {
			continue
		}
		s, isStringer := c.Interface().(fmt.Stringer)
		if !isStringer {
			continue
		}
		return s.String(), t2.String(), true
	}
	return "", "", false
}

// closedError is what a call gets once the session ended: it matches
// ErrClosed, and the reason it ended.
func closedError(why error) error {
	if why == nil || errors.Is(why, ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrClosed, why)
}
