package envelopexml

import (
	"errors"

	"mellium.im/xmpp/jid"
)

// EncodedLen exposes encodedLen to the tests, which check it is exact.
func EncodedLen(e *Envelope) int { return e.encodedLen() }

// PlainCanonical and ParsedCanonical expose checkCanonicalJID's two ways,
// which FuzzPlainCanonical holds to agree.
func PlainCanonical(s string) bool { return plainCanonical(s) }

func ParsedCanonical(s string) error {
	if err := checkJID(s); err != nil {
		return err
	}
	j, err := jid.Parse(s)
	if err != nil {
		return err
	}
	if j.String() != s {
		return errors.New("not canonical")
	}
	return nil
}
