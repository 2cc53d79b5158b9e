package keystore

import (
	"fmt"
	"slices"
	"strings"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// TrustState is what the device's user decided about a contact's key
// (docs/trust.md): the key in use was taken on first use (Unverified),
// compared by safety code (Verified), or replaced in the directory by a
// key the user has not accepted yet (Changed).
type TrustState uint8

// The trust states of a contact.
const (
	TrustUnverified TrustState = 1
	TrustVerified   TrustState = 2
	TrustChanged    TrustState = 3
)

func (s TrustState) String() string {
	switch s {
	case TrustUnverified:
		return "unverified"
	case TrustVerified:
		return "verified"
	case TrustChanged:
		return "changed"
	}
	return fmt.Sprintf("TrustState(%d)", int(s))
}

// Trust is a contact's trust record (key store version 2).
type Trust struct {
	State TrustState
	// Key is the fingerprint of the contact's key the user accepted (on
	// first use, or by accepting a change); when Changed, the one in use
	// before the change.
	Key [32]byte
	// New is, when Changed, the fingerprint of the key the directory
	// binds now, which the user has not accepted; zero otherwise.
	New [32]byte
	// WasVerified: when Changed, Key had been verified by safety code,
	// so the new key needs the safety code again.
	WasVerified bool
	// The log entries that explain a change: the contact's version in
	// the key directory when Key was accepted (OldVersion), and the
	// version, log index and time (Unix seconds) of New's publish entry;
	// EndKind and EndIndex are the entry that ended Key's binding
	// ("reset" or "delete"), when the device saw it ("" and 0 when it
	// saw only the new key: the versions between tell that one ended
	// it). All zero when not Changed.
	OldVersion, NewVersion, NewIndex, NewTime int64
	EndKind                                   string
	EndIndex                                  int64
}

// AlarmKind says what an Alarm is about.
type AlarmKind uint8

// The kinds of alarm.
const (
	// AlarmOwnKey: the key directory holds an entry for this user's own
	// JID that this device did not make: a reset, a delete, another key.
	AlarmOwnKey AlarmKind = 1
	// AlarmFork: a contact's envelope carried a checkpoint that the
	// directory could not prove consistent with this device's: two
	// views of one log. Evidence holds both signed checkpoints.
	AlarmFork AlarmKind = 2
	// AlarmRollback: the directory kept answering with a checkpoint
	// older than the one this device pinned. Evidence holds both.
	AlarmRollback AlarmKind = 3
)

func (k AlarmKind) String() string {
	switch k {
	case AlarmOwnKey:
		return "own key"
	case AlarmFork:
		return "fork"
	case AlarmRollback:
		return "rollback"
	}
	return fmt.Sprintf("AlarmKind(%d)", int(k))
}

// An Alarm is something the device found that its user must be told of
// and that the key store keeps (at most 64, the oldest dropped first).
type Alarm struct {
	Kind AlarmKind
	Time int64  // Unix seconds, by the device's clock
	JID  string // the JID it is about (own, or the contact whose envelope gossiped); may be empty
	Text string // what happened, for people (at most 4096 bytes)
	// Evidence is up to two signed checkpoints (notes): the device's
	// own and the other one (fork, rollback); empty otherwise.
	Evidence [2][]byte
}

// Trust returns the trust record of the bare JID jid.
func (s *Store) Trust(jid string) (Trust, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.findTrust(jid)
	if !ok {
		return Trust{}, false
	}
	return s.contents.trust[i].Trust, true
}

func (s *Store) findTrust(jid string) (int, bool) {
	return slices.BinarySearchFunc(s.contents.trust, jid, func(t trustEntry, j string) int { return strings.Compare(t.jid, j) })
}

// SetTrust records t for the bare JID jid and rewrites the file before
// it returns (unless nothing changed).
func (s *Store) SetTrust(jid string, t Trust) error {
	if err := envelopexml.CheckJID(jid); err != nil {
		return fmt.Errorf("keystore: trust: %w", err)
	}
	if t.State < TrustUnverified || t.State > TrustChanged || len(t.EndKind) > maxEndKind ||
		t.OldVersion < 0 || t.NewVersion < 0 || t.NewIndex < 0 || t.NewTime < 0 || t.EndIndex < 0 {
		return fmt.Errorf("keystore: trust of %s: out of bounds", jid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.contents.trust
	i, ok := s.findTrust(jid)
	if ok && old[i].Trust == t {
		return nil
	}
	next := slices.Clone(old)
	if ok {
		next[i].Trust = t
	} else {
		if len(old) >= maxTrust {
			return fmt.Errorf("keystore: more than %d trust records", maxTrust)
		}
		next = slices.Insert(next, i, trustEntry{jid: jid, Trust: t})
	}
	s.contents.trust = next
	if err := s.write(true); err != nil {
		s.contents.trust = old
		return err
	}
	return nil
}

// TrustRecords returns every contact's trust record, by JID.
func (s *Store) TrustRecords() map[string]Trust {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Trust, len(s.contents.trust))
	for _, t := range s.contents.trust {
		out[t.jid] = t.Trust
	}
	return out
}

// Alarms returns the alarms kept, oldest first.
func (s *Store) Alarms() []Alarm {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Alarm, len(s.contents.alarms))
	for i, a := range s.contents.alarms {
		a.Evidence = [2][]byte{slices.Clone(a.Evidence[0]), slices.Clone(a.Evidence[1])}
		out[i] = a
	}
	return out
}

// AddAlarm keeps a and rewrites the file before it returns; past 64
// alarms the oldest is dropped.
func (s *Store) AddAlarm(a Alarm) error {
	if a.Kind < AlarmOwnKey || a.Kind > AlarmRollback || a.Time < 0 || len(a.Text) > maxAlarmText ||
		len(a.JID) > envelopexml.MaxJIDLen || len(a.Evidence[0]) > maxCheckpoint || len(a.Evidence[1]) > maxCheckpoint {
		return fmt.Errorf("keystore: alarm out of bounds")
	}
	a.Evidence = [2][]byte{slices.Clone(a.Evidence[0]), slices.Clone(a.Evidence[1])}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.contents.alarms
	next := append(slices.Clone(old), a)
	if len(next) > maxAlarms {
		next = next[len(next)-maxAlarms:]
	}
	s.contents.alarms = next
	if err := s.write(true); err != nil {
		s.contents.alarms = old
		return err
	}
	return nil
}

// OwnSeen returns how many versions of the device's own JID in the key
// directory its user has been shown (0: none recorded, a file before
// version 2).
func (s *Store) OwnSeen() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.contents.ownSeen
}

// SetOwnSeen records n (it never goes back) and rewrites the file.
func (s *Store) SetOwnSeen(n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.contents.ownSeen
	if n <= old {
		return nil
	}
	s.contents.ownSeen = n
	if err := s.write(true); err != nil {
		s.contents.ownSeen = old
		return err
	}
	return nil
}
