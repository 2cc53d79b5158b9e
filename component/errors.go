package component

import (
	"context"
	"errors"
	"fmt"

	"mellium.im/xmpp/stanza"
)

// ErrNotLinked is returned by Send while the link to the server is down.
var ErrNotLinked = errors.New("component: not linked to the XMPP server")

// Error returns a stanza error with the condition, the error type RFC 6120
// §8.3.3 suggests for it, and a human-readable text. Handlers return it to
// have it sent to the requester as is; the text goes on the wire, so it must
// never carry a secret.
func Error(cond stanza.Condition, text string) error {
	e := stanza.Error{Type: errorType(cond), Condition: cond}
	if text != "" {
		e.Text = map[string]string{"": text}
	}
	return e
}

// Errorf is Error with a formatted text.
func Errorf(cond stanza.Condition, format string, args ...any) error {
	return Error(cond, fmt.Sprintf(format, args...))
}

// BadRequest is Error(stanza.BadRequest, text): the payload was malformed.
func BadRequest(text string) error { return Error(stanza.BadRequest, text) }

// errorType maps a condition to the type RFC 6120 §8.3.3 gives it.
func errorType(cond stanza.Condition) stanza.ErrorType {
	switch cond {
	case stanza.BadRequest, stanza.JIDMalformed, stanza.NotAcceptable,
		stanza.PolicyViolation, stanza.Gone, stanza.Redirect:
		return stanza.Modify
	case stanza.Forbidden, stanza.NotAuthorized, stanza.RegistrationRequired,
		stanza.SubscriptionRequired:
		return stanza.Auth
	case stanza.ResourceConstraint, stanza.RecipientUnavailable,
		stanza.RemoteServerTimeout, stanza.UnexpectedRequest:
		return stanza.Wait
	}
	return stanza.Cancel
}

// asStanzaError turns a handler's error into what goes on the wire: a stanza
// error is kept; anything else becomes internal-server-error without the
// error's own text, because its message may carry internals. An error the
// transient classifier (Config.Transient) recognises, or a handler that ran
// out of time, is answered with type "wait" and a text that says to try
// again: the requester did nothing wrong and a retry may succeed.
func asStanzaError(err error, transient func(error) bool) (e stanza.Error, internal bool) {
	if errors.As(err, &e) {
		if e.Type == "" {
			e.Type = errorType(e.Condition)
		}
		return e, false
	}
	if errors.Is(err, context.DeadlineExceeded) || (transient != nil && transient(err)) {
		return stanza.Error{Type: stanza.Wait, Condition: stanza.InternalServerError,
			Text: map[string]string{"": "clinkd could not finish this in time (a store it needs is slow or unreachable); try again shortly"}}, true
	}
	return stanza.Error{Type: stanza.Cancel, Condition: stanza.InternalServerError}, true
}
