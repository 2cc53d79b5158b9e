package client

import (
	"bytes"
	"fmt"
	"strconv"
	"sync"
)

// Conditional lookups (docs/protocol.md, "Conditional lookups").
//
// A device looks a recipient up before every message it sends, and a
// full v1 answer is about 3 KB: checkpoint, head, VRF, map and inclusion
// proofs, the key. While the log does not grow, every such answer is the
// same one again. So the device remembers what it verified at its pinned
// checkpoint, and a lookup of JIDs it holds says so (known = the pinned
// size); a server whose log is still of that size answers "unchanged"
// with nothing else, and the device uses what it verified.
//
// This gives a dishonest server nothing it lacks: answering "unchanged"
// after the log grew shows the device the log as it was at its pinned
// size, which replaying the full answer of that size would show as well
// (a checkpoint equal to the pin is accepted). The same bound holds: an
// unchanged answer is used only while the head of that size is younger
// than the maximum age (ErrStaleCheckpoint otherwise, as for a full
// answer), only for JIDs verified at that very checkpoint, and only while
// it is still the pin, so no answer ever takes the device back to a
// smaller tree than one it saw.

// provenMax bounds the JIDs a directory client remembers at one size:
// a device with more contacts gets full answers for the rest.
const provenMax = 1024

// errNotHeld: an unchanged answer confirms what this client does not
// hold (any more) at its pinned size.
var errNotHeld = fmt.Errorf("%w: the directory answered \"unchanged\" for what this device does not hold at its pinned checkpoint", ErrBadAnswer)

// provenSet is what a directory client verified at its pinned checkpoint.
type provenSet struct {
	mu       sync.Mutex
	pinned   []byte // the pinned checkpoint, as the PinStore holds it
	size     int64  // its size
	headTime int64  // the time of its head (Unix seconds)
	results  map[string]KeyResult
}

// pinnedCheckpoint returns the checkpoint the PinStore holds, byte for
// byte (nil: none yet).
func (d *KeyDirectory) pinnedCheckpoint() ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pins.Checkpoint(d.verifier.Name())
}

// keepProven remembers results, verified in an answer at at. They are
// kept only if that checkpoint is still the pin (another answer may have
// moved it meanwhile); results of another size replace the ones held.
func (d *KeyDirectory) keepProven(at answerAt, results []KeyResult) error {
	pinned, err := d.pinnedCheckpoint()
	if err != nil {
		return err
	}
	if checkpointSize(pinned) != at.size {
		return nil
	}
	p := &d.proven
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.size != at.size || !bytes.Equal(p.pinned, pinned) || len(p.results)+len(results) > provenMax {
		p.pinned, p.size, p.headTime, p.results = pinned, at.size, at.headTime, make(map[string]KeyResult, len(results))
	}
	for _, r := range results {
		p.results[r.JID] = r
	}
	return nil
}

// knownSize returns the size a lookup of want may say it holds: the
// pinned size, when every JID of want was verified at the pinned
// checkpoint and its head is younger than the maximum age; else 0.
func (d *KeyDirectory) knownSize(want []string) (int64, error) {
	pinned, err := d.pinnedCheckpoint()
	if err != nil || len(want) == 0 {
		return 0, err
	}
	p := &d.proven
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.results == nil || !bytes.Equal(p.pinned, pinned) || d.checkHeadAge(p.headTime) != nil {
		return 0, nil
	}
	for _, j := range want {
		if _, ok := p.results[j]; !ok {
			return 0, nil
		}
	}
	return p.size, nil
}

// takeUnchanged answers an unchanged result at size for want with what
// this client verified at that size, if it still holds it: size is the
// pinned checkpoint's, every JID was verified at it, and its head is
// younger than the maximum age.
func (d *KeyDirectory) takeUnchanged(size int64, want []string) ([]KeyResult, error) {
	if len(want) == 0 {
		return nil, fmt.Errorf("%w: an unchanged answer to a lookup of no JID", ErrBadAnswer)
	}
	pinned, err := d.pinnedCheckpoint()
	if err != nil {
		return nil, err
	}
	out, err := d.proven.take(pinned, size, want, d.checkHeadAge)
	if err != nil {
		return nil, err
	}
	d.unchanged.Add(1)
	if d.cache != nil {
		// Confirmed current: as fresh as a full answer would make them.
		for _, r := range out {
			d.cache.put(r.JID, r.Key)
		}
	}
	return out, nil
}

// take returns the results held for want at size, if the set is of the
// checkpoint pinned and its head passes fresh.
func (p *provenSet) take(pinned []byte, size int64, want []string, fresh func(headTime int64) error) ([]KeyResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.results == nil || p.size != size || !bytes.Equal(p.pinned, pinned) {
		return nil, fmt.Errorf("%w (unchanged at %d)", errNotHeld, size)
	}
	if err := fresh(p.headTime); err != nil {
		return nil, err
	}
	out := make([]KeyResult, len(want))
	for i, j := range want {
		r, ok := p.results[j]
		if !ok {
			return nil, fmt.Errorf("%w (%s at %d)", errNotHeld, j, size)
		}
		out[i] = r
	}
	return out, nil
}

// UnchangedLookups returns how many lookups this directory client
// answered from what it held, the directory having answered "unchanged".
func (d *KeyDirectory) UnchangedLookups() uint64 { return d.unchanged.Load() }

// checkpointSize reads the size line of a signed checkpoint this device
// verified before (the PinStore holds only those); -1 if there is none.
func checkpointSize(signed []byte) int64 {
	_, rest, ok := bytes.Cut(signed, []byte("\n"))
	if !ok {
		return -1
	}
	line, _, ok := bytes.Cut(rest, []byte("\n"))
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(string(line), 10, 64)
	if err != nil {
		return -1
	}
	return n
}
