package clinkid

import (
	"errors"
	"strings"

	"mellium.im/xmpp/jid"
)

// MaxNameBytes bounds an account name after normalisation. RFC 7622 allows
// localparts of up to 1023 bytes; a ClinkID name is typed by people and
// shown to their contacts, so it is kept short.
const MaxNameBytes = 64

// ErrInvalidName is returned for a name that cannot be the localpart of
// an XMPP address, or that clinkd refuses (see NormalizeName).
var ErrInvalidName = errors.New("clinkid: invalid account name")

// NormalizeName returns the canonical form of an account name: the
// localpart of name@domain after the PRECIS UsernameCaseMapped profile
// (RFC 8265 §3.3), which RFC 7622 prescribes for XMPP localparts. So
// "Alice" and "alice" are one account, and the account's JID,
// NAME@link.server_domain, is always valid.
//
// It refuses, with ErrInvalidName: what is not a valid localpart (empty,
// spaces, controls, the characters " & ' / : < > @, unassigned code
// points), names longer than MaxNameBytes once normalised, and the
// backslash, which XEP-0106 uses to escape addresses (alice\40example.org
// would be read as alice@example.org by clients that unescape).
func NormalizeName(name string) (string, error) {
	// Cheap bound before any Unicode work: normalisation never shrinks a
	// name by more than a few bytes per character.
	if name == "" || len(name) > 4*MaxNameBytes {
		return "", ErrInvalidName
	}
	j, err := jid.New(name, "clinkid.invalid", "")
	if err != nil {
		return "", ErrInvalidName
	}
	n := j.Localpart()
	if n == "" || len(n) > MaxNameBytes || strings.ContainsRune(n, '\\') {
		return "", ErrInvalidName
	}
	// PRECIS profiles are idempotent for valid input; a name that still
	// changes would be two accounts depending on who normalises it.
	if again, err := jid.New(n, "clinkid.invalid", ""); err != nil || again.Localpart() != n {
		return "", ErrInvalidName
	}
	return n, nil
}
