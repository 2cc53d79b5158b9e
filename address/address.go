// Package address maps ClinkMe users to their addresses at clinkd, gateway
// style, with XEP-0106 JID escaping: bob@example.org is
// bob\40example.org@clink.example.org.
//
// Everything clinkd holds about one user (their online devices, the timed
// messages held for them, their pending receipts) lives at that one
// address, which is also what the XMPP server routes by. A conversation
// therefore has one stable address on both sides, and several clinkd
// instances can share the load through ejabberd's bare_destination
// balancing with no shared store for the in-memory state.
package address

import (
	"errors"
	"fmt"
	"strings"

	"mellium.im/xmpp/jid"
)

// ErrNotAUser is returned for an address at the component that does not
// stand for a user (the component's own domain, or a localpart that does
// not unescape to a bare user JID).
var ErrNotAUser = errors.New("address: not a user's address")

// AtComponent returns user's address at the component: the escaped bare
// JID as localpart, the component's domain as domainpart.
func AtComponent(user, component jid.JID) (jid.JID, error) {
	bare := user.Bare()
	if bare.Localpart() == "" {
		return jid.JID{}, fmt.Errorf("address: %q has no localpart", bare)
	}
	a, err := jid.New(Escape(bare.String()), component.Domainpart(), "")
	if err != nil {
		return jid.JID{}, fmt.Errorf("address: %s at %s: %w", bare, component.Domainpart(), err)
	}
	return a, nil
}

// User returns the user a component address stands for.
func User(a jid.JID) (jid.JID, error) {
	if a.Localpart() == "" {
		return jid.JID{}, ErrNotAUser
	}
	u, err := jid.Parse(Unescape(a.Localpart()))
	if err != nil || u.Localpart() == "" || u.Resourcepart() != "" {
		return jid.JID{}, fmt.Errorf("%w: %q", ErrNotAUser, a)
	}
	return u, nil
}

// The characters XEP-0106 §3.2 escapes, and their escape sequences.
const escapable = " \"&'/:<>@\\"

// Escape applies XEP-0106 escaping to s for use as a localpart. A
// backslash is escaped only where it would otherwise start a valid
// sequence (XEP-0106 §3.3), so that escaping is reversible.
//
// mellium.im/xmpp/jid has Escape and Unescape transformers, but v0.22.0's
// Unescape decodes "\40" as 0xE0, so the mapping is done here.
func Escape(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && !startsSequence(s[i+1:]) {
			b = append(b, c)
			continue
		}
		if strings.IndexByte(escapable, c) >= 0 {
			b = append(b, '\\', hexDigit(c>>4), hexDigit(c&0xf))
			continue
		}
		b = append(b, c)
	}
	return string(b)
}

// Unescape reverses Escape: each of XEP-0106's ten escape sequences
// becomes its character; anything else is kept as it is.
func Unescape(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && startsSequence(s[i+1:]) {
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

// startsSequence reports whether s begins with the two lowercase hex
// digits of one of the escapable characters.
func startsSequence(s string) bool {
	if len(s) < 2 || !isHex(s[0]) || !isHex(s[1]) {
		return false
	}
	return strings.IndexByte(escapable, unhex(s[0])<<4|unhex(s[1])) >= 0
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

func hexDigit(n byte) byte { return "0123456789abcdef"[n] }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}
