package client

import (
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
)

// Contacts' keys and what the user decided about them (docs/trust.md).
// The first key a device sees for a contact is used at once and shown
// with its fingerprint and log index: the contact is unverified (trust on
// first use, made visible). Comparing safety codes makes it verified. A
// later key (only a reset or a deleted account ends a binding, so a new
// key means one of those happened) puts the contact in the changed
// state: Send refuses until the user accepts the new key (AcceptKey),
// and a verified contact's new key needs the safety code again.

// TrustState is a contact's state: unverified, verified or changed.
type TrustState = keystore.TrustState

// The trust states of a contact.
const (
	Unverified = keystore.TrustUnverified
	Verified   = keystore.TrustVerified
	Changed    = keystore.TrustChanged
)

// Errors of the trust API.
var (
	// ErrSafetyCode: the safety code given is not the one of this pair
	// of keys.
	ErrSafetyCode = errors.New("client: the safety code does not match: compare it again, digit by digit, with the contact's")
	// ErrSafetyCodeRequired: the contact's key was verified before it
	// changed: the new key is accepted only with the new safety code.
	ErrSafetyCodeRequired = errors.New("client: this contact's verified key changed: accept the new key only with the new safety code, compared with the contact")
	// ErrNoChange: AcceptKey found no key change to accept.
	ErrNoChange = errors.New("client: the contact's key did not change: nothing to accept")
	// ErrUnknownContact: the device has no key of that contact yet.
	ErrUnknownContact = errors.New("client: no key of this contact seen yet: send to them or look them up first")
)

// A NewContact event reports the first key this device saw for a contact
// (sending or receiving): used at once, shown with its fingerprint and
// the log index that binds it; the contact is unverified until the safety
// codes are compared (Device.SafetyCode, Device.VerifyContact).
type NewContact struct {
	JID         string
	Fingerprint [32]byte
	Index       int64 // the log entry that binds the key
	Version     int64
}

func (*NewContact) event() {}

// ContactTrust is what a device knows and its user decided about a
// contact's key.
type ContactTrust struct {
	JID   string
	State TrustState
	// Key is the key in use (the one accepted); when Changed, the one in
	// use before the change.
	Key [32]byte
	// Change is, when Changed, the change to accept.
	Change *KeyChange
}

// Contact returns the trust record of bare.
func (d *Device) Contact(bare string) (ContactTrust, bool) {
	t, ok := d.store.Trust(bare)
	if !ok {
		return ContactTrust{}, false
	}
	return contactTrust(bare, t), true
}

// Contacts returns every contact's trust record.
func (d *Device) Contacts() []ContactTrust {
	var out []ContactTrust
	for j, t := range d.store.TrustRecords() {
		out = append(out, contactTrust(j, t))
	}
	return out
}

func contactTrust(bare string, t keystore.Trust) ContactTrust {
	c := ContactTrust{JID: bare, State: t.State, Key: t.Key}
	if t.State == Changed {
		c.Change = changeOf(bare, t)
	}
	return c
}

func changeOf(bare string, t keystore.Trust) *KeyChange {
	fp := t.New
	return &KeyChange{JID: bare, Old: t.Key, New: &fp, OldVersion: t.OldVersion, NewVersion: t.NewVersion, NewIndex: t.NewIndex,
		NewTime: time.Unix(t.NewTime, 0), EndKind: t.EndKind, EndIndex: t.EndIndex, Verified: t.WasVerified}
}

// observeKey compares k, the key the directory binds to bare now
// (verified), with the contact's trust record, and updates it: a first
// key makes the contact unverified (first is true); another key than the
// one accepted makes it changed. prev is the change the directory's pin
// reported with k, if any: a contact the device knew before it kept trust
// records (a key store of version 1) changes from the key it saw before.
// It returns the record after.
func (d *Device) observeKey(bare string, k *VerifiedKey, prev *KeyChange) (t keystore.Trust, first bool, err error) {
	d.trustMu.Lock()
	defer d.trustMu.Unlock()
	t, had := d.store.Trust(bare)
	switch {
	case !had && prev != nil && prev.New != nil && *prev.New == k.Fingerprint:
		t = keystore.Trust{State: Unverified, Key: prev.Old}
	case !had:
		t = keystore.Trust{State: Unverified, Key: k.Fingerprint, OldVersion: k.Version}
		return t, true, d.store.SetTrust(bare, t)
	case k.Fingerprint == t.Key && t.State == Changed:
		// The key accepted is bound again: nothing to accept.
		back := keystore.Trust{State: Unverified, Key: t.Key, OldVersion: k.Version}
		if t.WasVerified {
			back.State = Verified
		}
		return back, false, d.store.SetTrust(bare, back)
	case k.Fingerprint == t.Key:
		return t, false, nil
	case t.State == Changed && t.New == k.Fingerprint:
		return t, false, nil
	}
	next := keystore.Trust{State: Changed, Key: t.Key, New: k.Fingerprint, WasVerified: t.State == Verified || t.WasVerified,
		OldVersion: t.OldVersion, NewVersion: k.Version, NewIndex: k.Index, NewTime: max(k.Time.Unix(), 0), EndKind: t.EndKind, EndIndex: t.EndIndex}
	return next, false, d.store.SetTrust(bare, next)
}

// observeEnded records the entry that ended the binding of the
// contact's accepted key, to explain a later change.
func (d *Device) observeEnded(bare string, r KeyResult) error {
	if !r.Ended || r.EndKind == "" {
		return nil
	}
	d.trustMu.Lock()
	defer d.trustMu.Unlock()
	t, had := d.store.Trust(bare)
	if !had || t.State == Changed || (t.EndIndex == r.EndIndex && t.EndKind == r.EndKind) {
		return nil
	}
	t.EndKind, t.EndIndex = r.EndKind, r.EndIndex
	return d.store.SetTrust(bare, t)
}

// AcceptKey accepts the changed key of a contact (the user chose to,
// having been shown the change): sending to them works again. For a
// contact whose key was verified before the change, code must be the new
// safety code (ErrSafetyCodeRequired without one); with a code that
// matches, the contact is verified, else unverified. Retrying Send never
// accepts a change: only this does.
func (d *Device) AcceptKey(bare, code string) (ContactTrust, error) {
	d.trustMu.Lock()
	defer d.trustMu.Unlock()
	t, had := d.store.Trust(bare)
	if !had {
		return ContactTrust{}, fmt.Errorf("%w: %s", ErrUnknownContact, bare)
	}
	if t.State != Changed {
		return contactTrust(bare, t), fmt.Errorf("%w: %s is %s", ErrNoChange, bare, t.State)
	}
	next := keystore.Trust{State: Unverified, Key: t.New, OldVersion: t.NewVersion}
	switch {
	case code != "":
		if err := d.matchCode(bare, t.New, code); err != nil {
			return contactTrust(bare, t), err
		}
		next.State = Verified
	case t.WasVerified:
		return contactTrust(bare, t), fmt.Errorf("%w (%s)", ErrSafetyCodeRequired, bare)
	}
	if err := d.store.SetTrust(bare, next); err != nil {
		return contactTrust(bare, t), err
	}
	return contactTrust(bare, next), nil
}

// VerifyContact marks the contact verified when code is the safety code
// of this user's key and the contact's accepted key (both sides read it
// aloud or compare it on screen). A changed contact is verified by
// AcceptKey with the code.
func (d *Device) VerifyContact(bare, code string) (ContactTrust, error) {
	d.trustMu.Lock()
	defer d.trustMu.Unlock()
	t, had := d.store.Trust(bare)
	if !had {
		return ContactTrust{}, fmt.Errorf("%w: %s", ErrUnknownContact, bare)
	}
	if t.State == Changed {
		return contactTrust(bare, t), fmt.Errorf("client: %s's key changed: accept the new key with its safety code (AcceptKey)", bare)
	}
	if err := d.matchCode(bare, t.Key, code); err != nil {
		return contactTrust(bare, t), err
	}
	t.State = Verified
	if err := d.store.SetTrust(bare, t); err != nil {
		return contactTrust(bare, t), err
	}
	return contactTrust(bare, t), nil
}

// SafetyCode returns the safety code of this user and the contact: of
// the contact's accepted key, or, when the contact is changed, of the
// new key (the one to compare before accepting it).
func (d *Device) SafetyCode(bare string) (string, error) {
	t, had := d.store.Trust(bare)
	if !had {
		return "", fmt.Errorf("%w: %s", ErrUnknownContact, bare)
	}
	fp := t.Key
	if t.State == Changed {
		fp = t.New
	}
	mine, err := envelope.Fingerprint(d.store.Identity().PublicKey())
	if err != nil {
		return "", err
	}
	return SafetyCode(d.me, mine, bare, fp), nil
}

func (d *Device) matchCode(bare string, fp [32]byte, code string) error {
	mine, err := envelope.Fingerprint(d.store.Identity().PublicKey())
	if err != nil {
		return err
	}
	want := SafetyCode(d.me, mine, bare, fp)
	got := normalizeCode(code)
	if subtle.ConstantTimeCompare([]byte(got), []byte(normalizeCode(want))) != 1 {
		return ErrSafetyCode
	}
	return nil
}

// normalizeCode keeps the digits of a code as typed (spaces, dashes and
// the like between groups do not count).
func normalizeCode(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
}

// Safety codes (docs/trust.md, "Safety codes"): 30 digits in six groups
// of five, the same on both sides, derived from both users' JIDs and
// key fingerprints.
const (
	safetyLabel      = "clinkme safety code v1"
	safetyIterations = 5200
	safetyGroups     = 6
)

// SafetyCode returns the safety code of two users, each a canonical bare
// JID and the fingerprint (SHA-256 of the DER SubjectPublicKeyInfo) of
// their identity key. It does not depend on the order of the two.
func SafetyCode(jidA string, fpA [32]byte, jidB string, fpB [32]byte) string {
	a := appendParty(nil, jidA, fpA)
	b := appendParty(nil, jidB, fpB)
	if string(b) < string(a) {
		a, b = b, a
	}
	h := sha512.New()
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(safetyLabel))))
	h.Write([]byte(safetyLabel))
	h.Write(a)
	h.Write(b)
	sum := h.Sum(nil)
	for range safetyIterations {
		h.Reset()
		h.Write(sum)
		h.Write(a)
		h.Write(b)
		sum = h.Sum(sum[:0])
	}
	groups := make([]string, safetyGroups)
	for i := range groups {
		var x [8]byte
		copy(x[3:], sum[5*i:5*i+5])
		groups[i] = fmt.Sprintf("%05d", binary.BigEndian.Uint64(x[:])%100000)
	}
	return strings.Join(groups, " ")
}

// appendParty appends str(jid) || fp.
func appendParty(b []byte, jid string, fp [32]byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(jid)))
	b = append(b, jid...)
	return append(b, fp[:]...)
}
