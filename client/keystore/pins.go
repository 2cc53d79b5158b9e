package keystore

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// A KeyPin is the key a device last saw bound to a JID in the key
// directory. It outlives the binding (Ended), so that a key published
// after a reset is still compared with the one seen before it.
type KeyPin struct {
	Fingerprint [32]byte
	Ended       bool  // the directory since answered that no key is bound
	Version     int64 // the JID's version last seen (key directory v1; 0: not known); ≥ 0
}

// Checkpoint returns the last accepted signed checkpoint of the key
// directory log named origin, or nil.
func (s *Store) Checkpoint(origin string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := slices.BinarySearchFunc(s.contents.checkpoints, origin, func(p checkpointPin, o string) int { return strings.Compare(p.origin, o) })
	if !ok {
		return nil
	}
	return bytes.Clone(s.contents.checkpoints[i].signed)
}

// SetCheckpoint pins signed as the last accepted checkpoint of the log
// named origin and rewrites the file before it returns. The caller
// checked that it extends the one pinned before.
func (s *Store) SetCheckpoint(origin string, signed []byte) error {
	if origin == "" || len(origin) > maxOrigin || len(signed) == 0 || len(signed) > maxCheckpoint {
		return fmt.Errorf("keystore: checkpoint of %d bytes for origin of %d bytes, want 1 to %d and 1 to %d", len(signed), len(origin), maxCheckpoint, maxOrigin)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.contents.checkpoints
	i, ok := slices.BinarySearchFunc(old, origin, func(p checkpointPin, o string) int { return strings.Compare(p.origin, o) })
	if ok && bytes.Equal(old[i].signed, signed) {
		return nil
	}
	next := slices.Clone(old)
	if ok {
		next[i].signed = bytes.Clone(signed)
	} else {
		if len(old) >= maxCheckpoints {
			return fmt.Errorf("keystore: more than %d key directory logs", maxCheckpoints)
		}
		next = slices.Insert(next, i, checkpointPin{origin: origin, signed: bytes.Clone(signed)})
	}
	s.contents.checkpoints = next
	if err := s.write(true); err != nil {
		s.contents.checkpoints = old
		return err
	}
	return nil
}

// KeyPin returns the pin of a bare JID.
func (s *Store) KeyPin(jid string) (KeyPin, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.findKeyPin(jid)
	if !ok {
		return KeyPin{}, false
	}
	return s.contents.keys[i].KeyPin, true
}

func (s *Store) findKeyPin(jid string) (int, bool) {
	return slices.BinarySearchFunc(s.contents.keys, jid, func(p keyPin, j string) int { return strings.Compare(p.jid, j) })
}

// SetKeyPin records p for the bare JID jid and rewrites the file before
// it returns (unless nothing changed).
func (s *Store) SetKeyPin(jid string, p KeyPin) error {
	if err := envelopexml.CheckJID(jid); err != nil {
		return fmt.Errorf("keystore: key pin: %w", err)
	}
	if p.Version < 0 {
		return errors.New("keystore: key pin: negative version")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.contents.keys
	i, ok := s.findKeyPin(jid)
	if ok && old[i].KeyPin == p {
		return nil
	}
	next := slices.Clone(old)
	if ok {
		next[i].KeyPin = p
	} else {
		if len(old) >= maxKeyPins {
			return fmt.Errorf("keystore: more than %d key pins", maxKeyPins)
		}
		next = slices.Insert(next, i, keyPin{jid: jid, KeyPin: p})
	}
	s.contents.keys = next
	if err := s.write(true); err != nil {
		s.contents.keys = old
		return err
	}
	return nil
}
