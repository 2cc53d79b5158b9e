package client

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/extensions/keydirxml"
)

// This file is the device side of the key directory (docs/protocol.md).
// It verifies every answer itself, with code that shares nothing with the
// server's package keydir beyond the wire types: the leaf record and the
// label are rebuilt here, inclusion and consistency proofs are checked
// with github.com/transparency-dev/merkle (RFC 6962), and checkpoints
// with golang.org/x/mod/sumdb/note.

// MinKeyBits is the smallest RSA key a device accepts from the directory.
const MinKeyBits = 3072

// A PinStore keeps what a device has seen of the directory: the last
// checkpoint it accepted (every later one must be proven to extend it) and
// the key it last saw for each JID. The device key store will implement
// it; MemoryPins is for tests and short-lived tools.
type PinStore interface {
	// Checkpoint returns the last accepted signed checkpoint of the log
	// named origin, or nil.
	Checkpoint(origin string) ([]byte, error)
	SetCheckpoint(origin string, signed []byte) error
	// Key returns the pin of a bare JID.
	Key(bare string) (pin KeyPin, ok bool, err error)
	SetKey(bare string, pin KeyPin) error
}

// A KeyPin is the key a device last saw bound to a JID. It outlives the
// binding (Ended), so that a key published after a reset is still
// compared with the one seen before it.
type KeyPin struct {
	Fingerprint [32]byte
	Ended       bool  // the directory since answered that no key is bound
	Version     int64 // v1: the JID's version last seen (0: not known); it never goes back
}

// MemoryPins is a PinStore in memory. The zero value is ready.
type MemoryPins struct {
	mu   sync.Mutex
	cps  map[string][]byte
	keys map[string]KeyPin
}

// Checkpoint implements PinStore.
func (m *MemoryPins) Checkpoint(origin string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.cps[origin]), nil
}

// SetCheckpoint implements PinStore.
func (m *MemoryPins) SetCheckpoint(origin string, signed []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cps == nil {
		m.cps = map[string][]byte{}
	}
	m.cps[origin] = bytes.Clone(signed)
	return nil
}

// Key implements PinStore.
func (m *MemoryPins) Key(bare string) (KeyPin, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.keys[bare]
	return p, ok, nil
}

// SetKey implements PinStore.
func (m *MemoryPins) SetKey(bare string, pin KeyPin) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = map[string]KeyPin{}
	}
	m.keys[bare] = pin
	return nil
}

// Errors of the key directory client. Each means the answer must not be
// used; ErrLogInconsistent and ErrBadProof mean the server (or someone in
// front of it) presented a log other than the one the device saw before,
// which the app must show loudly, never retry silently.
var (
	ErrBadCheckpoint   = errors.New("client: keydir checkpoint is invalid or not signed by the log's key")
	ErrLogInconsistent = errors.New("client: keydir log is not consistent with the checkpoint seen before")
	ErrBadProof        = errors.New("client: keydir inclusion proof does not verify")
	ErrBadAnswer       = errors.New("client: keydir answer is malformed")
	// ErrStaleCheckpoint: the answer came with a validly signed checkpoint
	// of a smaller tree than the one the device pinned. The answer is
	// refused and the pin kept (a pin never goes back). It is not proof of
	// a fork: two requests in flight at once can be answered out of order,
	// so a retry may succeed. A server that keeps answering this way is
	// hiding entries newer than the pin (a rollback), which the app must
	// tell the user.
	ErrStaleCheckpoint = errors.New("client: keydir checkpoint is older than the one this device already accepted")
)

// A KeyChange reports that the key the directory binds to a JID is not
// the one this device saw before. New is nil when the binding ended.
type KeyChange struct {
	JID string
	Old [32]byte
	New *[32]byte
	// The log entries that explain the change, as far as the device saw
	// them (key directory v1; Send's refusals and Device.Contact carry
	// them): the version of Old, the version, log index and time of New's
	// publish entry, and the entry that ended Old's binding (EndKind
	// reset or delete, EndIndex) when the device saw it. Verified: Old
	// had been verified by safety code, so New needs it again.
	OldVersion, NewVersion, NewIndex int64
	NewTime                          time.Time
	EndKind                          string
	EndIndex                         int64
	Verified                         bool
}

// Explain says what the change is and which log entries explain it.
func (c KeyChange) Explain() string {
	var b strings.Builder
	if c.Verified {
		b.WriteString("WARNING: the VERIFIED key of ")
	} else {
		b.WriteString("the key of ")
	}
	fmt.Fprintf(&b, "%s changed: SHA256:%x", c.JID, c.Old)
	if c.OldVersion > 0 {
		fmt.Fprintf(&b, " (version %d)", c.OldVersion)
	}
	if c.New == nil {
		b.WriteString(" -> none (the binding ended)")
		return b.String()
	}
	fmt.Fprintf(&b, " -> SHA256:%x", *c.New)
	if c.NewVersion > 0 {
		fmt.Fprintf(&b, " (version %d, published at log index %d, %s)", c.NewVersion, c.NewIndex, c.NewTime.UTC().Format(time.RFC3339))
	}
	switch {
	case c.EndKind != "":
		fmt.Fprintf(&b, "; the old binding was ended by a %s at log index %d", c.EndKind, c.EndIndex)
	case c.NewVersion > c.OldVersion+1 && c.OldVersion > 0:
		fmt.Fprintf(&b, "; %s ended the old binding (an operator reset or a deleted account)", versionsBetween(c.OldVersion+1, c.NewVersion-1))
	}
	return b.String()
}

// KeyChangeError is returned alongside verified results when keys
// changed: the results are valid and the pins already hold them, so each
// change is reported once. The app must show it (a contact's new key may
// be a new phone, or someone else's key).
//
// Device.Send returns one with Unaccepted set for as long as the
// contact's new key is not accepted (Device.AcceptKey): sending is
// refused, with the old and new fingerprints and the log entries that
// explain the change.
type KeyChangeError struct {
	Changes    []KeyChange
	Unaccepted bool
}

func (e *KeyChangeError) Error() string {
	var b strings.Builder
	b.WriteString("client: keydir key changed for")
	for _, c := range e.Changes {
		b.WriteString(" " + c.JID)
	}
	if e.Unaccepted {
		for _, c := range e.Changes {
			b.WriteString(": " + c.Explain())
		}
		b.WriteString("; nothing was sent: sending is refused until the user accepts the new key")
	}
	return b.String()
}

// A VerifiedCheckpoint is a checkpoint whose signature was verified.
type VerifiedCheckpoint struct {
	Origin string
	Size   int64
	Hash   [32]byte
	Signed []byte // the signed note as received
}

// A VerifiedKey is a binding whose inclusion in the log was proven.
type VerifiedKey struct {
	JID         string // canonical bare JID
	DER         []byte // SubjectPublicKeyInfo
	Key         *rsa.PublicKey
	Fingerprint [32]byte
	Index       int64
	Time        time.Time
	Version     int64 // v1: the JID's version this binding made (0: not known)
}

// A KeyResult is the answer for one looked-up JID: Key is nil when the
// JID has no binding. (Absence is not provable in this log: see
// docs/protocol.md.)
type KeyResult struct {
	JID string
	Key *VerifiedKey
	// v1 (keydir_v1.go): the JID's version (0: no leaf, never bound),
	// whether its last binding ended, and its VRF proof (its owner gives
	// it to clinkd keys monitor).
	Version  int64
	Ended    bool
	VRFProof []byte
	// EndKind and EndIndex are, when Ended, the log entry that ended the
	// binding: its kind (reset or delete) and index.
	EndKind  string
	EndIndex int64
}

// A HistoryEntry is one verified log entry of the device's own JID.
type HistoryEntry struct {
	Index       int64
	Kind        string // publish, reset or delete
	Fingerprint [32]byte
	Time        time.Time
	Version     int64 // v1: the version this entry made (1, 2, …)
}

// KeyDirectory talks to the key directory at a clinkd component and
// verifies what it answers.
type KeyDirectory struct {
	c        *Client
	service  jid.JID
	verifier note.Verifier
	pins     PinStore
	mu       sync.Mutex // serialises pin updates
	cache    *keyCache  // verified answers, for SenderKey
	lookups  atomic.Uint64
	hits     atomic.Uint64
	v1       *v1Config // set by OpenKeyDirectory: speak urn:clinkme:keydir:1
	// witnesses: the device's witness policy (witness.go), nil when it
	// requires none. Set by OpenKeyDirectory.
	witnesses *witnessPolicy
	// proven and unchanged: conditional lookups (keydir_known.go).
	proven    provenSet
	unchanged atomic.Uint64
}

// NewKeyDirectory returns a directory client for the component at service
// whose checkpoints verify with vkey (the log's verifier key, shipped with
// the app). pins keeps state between calls; nil keeps it in memory.
func (c *Client) NewKeyDirectory(service jid.JID, vkey string, pins PinStore) (*KeyDirectory, error) {
	v, err := note.NewVerifier(strings.TrimSpace(vkey))
	if err != nil {
		return nil, fmt.Errorf("client: keydir verifier key: %w", err)
	}
	if pins == nil {
		pins = &MemoryPins{}
	}
	return &KeyDirectory{c: c, service: service, verifier: v, pins: pins, cache: newKeyCache()}, nil
}

// Lookups returns how many lookups this directory client has sent.
func (d *KeyDirectory) Lookups() uint64 { return d.lookups.Load() }

// SenderKey returns the verified key that the directory binds to the bare
// JID of an envelope's author, or nil when it binds none. The answer comes
// from the cache when it holds a fresh one that the pin still agrees with
// (keycache.go says how long that is), else from one lookup shared by
// every caller asking for bare meanwhile. A *KeyChangeError comes with a
// valid key, as from LookupKeys. Errors are LookupKeys's, or a context
// error when a lookup takes longer than lookupTimeout.
func (d *KeyDirectory) SenderKey(ctx context.Context, bare string) (*VerifiedKey, error) {
	if k, ok := d.cache.get(bare); ok {
		pin, had, err := d.pins.Key(bare)
		if err != nil {
			return nil, err
		}
		if pinAgrees(k, pin, had) {
			d.hits.Add(1)
			return k, nil
		}
	}
	return d.lookupSender(ctx, bare)
}

// RefreshSenderKey asks the directory again for bare's key, after a
// signature did not verify with the one SenderKey gave: the author may
// have a new key. It does not ask when the answer cached is younger than
// keyRefreshInterval (asked is false): a key just verified is the one the
// directory binds, and junk with bad signatures must not cost a lookup
// each.
func (d *KeyDirectory) RefreshSenderKey(ctx context.Context, bare string) (k *VerifiedKey, asked bool, err error) {
	if !d.cache.refreshable(bare) {
		return nil, false, nil
	}
	k, err = d.lookupSender(ctx, bare)
	return k, true, err
}

func (d *KeyDirectory) lookupSender(ctx context.Context, bare string) (*VerifiedKey, error) {
	return d.cache.shared(ctx, bare, func(ctx context.Context) (*VerifiedKey, error) {
		res, err := d.LookupKeys(ctx, bare)
		var kc *KeyChangeError
		if err != nil && !errors.As(err, &kc) {
			return nil, err
		}
		if len(res) != 1 {
			return nil, fmt.Errorf("%w: %d results for one JID", ErrBadAnswer, len(res))
		}
		return res[0].Key, err
	})
}

// pinAgrees reports whether a cached answer for a JID (k, nil for "no
// key") is still what the device last verified, by the JID's pin: the
// same key, or no key where the pin has none or saw the binding end.
func pinAgrees(k *VerifiedKey, pin KeyPin, had bool) bool {
	if k == nil {
		return !had || pin.Ended
	}
	return had && !pin.Ended && pin.Fingerprint == k.Fingerprint
}

// PublishKey publishes the device account's public key and verifies that
// the answer proves it is in the log. Publishing the key already bound is
// harmless; a different key fails with a stanza.Error whose condition is
// conflict.
func (d *KeyDirectory) PublishKey(ctx context.Context, pub *rsa.PublicKey) (*VerifiedKey, error) {
	if d.v1 != nil {
		return d.publishV1(ctx, pub)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("client: keydir publish: %w", err)
	}
	var res keydirxml.Publish
	if err := d.c.IQ(ctx, stanza.SetIQ, d.service, keydirxml.Publish{Key: base64.StdEncoding.EncodeToString(der)}, &res); err != nil {
		return nil, err
	}
	cp, err := d.acceptCheckpoint(ctx, []byte(res.Checkpoint))
	if err != nil {
		return nil, err
	}
	if res.Entry == nil {
		return nil, fmt.Errorf("%w: publish result has no entry", ErrBadAnswer)
	}
	vk, err := verifyEntry(*res.Entry, d.c.JID().Bare().String(), cp)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(vk.DER, der) {
		return nil, fmt.Errorf("%w: the directory answered with another key", ErrBadAnswer)
	}
	if err := d.pins.SetKey(vk.JID, KeyPin{Fingerprint: vk.Fingerprint}); err != nil {
		return nil, err
	}
	return vk, nil
}

// LookupKeys looks up the keys of up to the server's batch bound of bare
// JIDs and verifies each binding's inclusion in a checkpoint that is
// consistent with the one pinned. Results come in the order asked, one per
// distinct JID. When a key differs from the one pinned for its JID, the
// results come with a *KeyChangeError.
func (d *KeyDirectory) LookupKeys(ctx context.Context, jids ...string) ([]KeyResult, error) {
	want := make([]string, 0, len(jids))
	seen := map[string]bool{}
	for _, s := range jids {
		j, err := canonicalBare(s)
		if err != nil {
			return nil, err
		}
		if !seen[j] {
			seen[j] = true
			want = append(want, j)
		}
	}
	if d.v1 != nil {
		return d.lookupV1(ctx, want)
	}
	var res keydirxml.Lookup
	d.lookups.Add(1)
	if err := d.c.IQ(ctx, stanza.GetIQ, d.service, keydirxml.Lookup{JIDs: want}, &res); err != nil {
		return nil, err
	}
	cp, err := d.acceptCheckpoint(ctx, []byte(res.Checkpoint))
	if err != nil {
		return nil, err
	}
	if len(res.Entries) != len(want) {
		return nil, fmt.Errorf("%w: %d entries for %d JIDs", ErrBadAnswer, len(res.Entries), len(want))
	}
	out := make([]KeyResult, len(want))
	var changes []KeyChange
	for i, e := range res.Entries {
		if e.JID != want[i] {
			return nil, fmt.Errorf("%w: entry %d is for %q, asked %q", ErrBadAnswer, i, e.JID, want[i])
		}
		out[i].JID = want[i]
		if err := e.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadAnswer, err)
		}
		if e.Status == keydirxml.StatusFound {
			if out[i].Key, err = verifyEntry(e, want[i], cp); err != nil {
				return nil, err
			}
		}
		ch, err := d.pinKey(want[i], out[i].Key)
		if err != nil {
			return nil, err
		}
		if ch != nil {
			changes = append(changes, *ch)
		}
	}
	if d.cache != nil {
		// Pinned above: the cache holds what the pins hold.
		for _, r := range out {
			d.cache.put(r.JID, r.Key)
		}
	}
	if len(changes) > 0 {
		return out, &KeyChangeError{Changes: changes}
	}
	return out, nil
}

// pinKey records what was seen for bare and reports a change: another
// key than the one last seen (even across a reset), or no key where one
// was seen. Each change is reported once.
func (d *KeyDirectory) pinKey(bare string, k *VerifiedKey) (*KeyChange, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pin, had, err := d.pins.Key(bare)
	if err != nil {
		return nil, err
	}
	switch {
	case k == nil:
		if had && !pin.Ended {
			return &KeyChange{JID: bare, Old: pin.Fingerprint}, d.pins.SetKey(bare, KeyPin{Fingerprint: pin.Fingerprint, Ended: true})
		}
		return nil, nil
	case !had:
		return nil, d.pins.SetKey(bare, KeyPin{Fingerprint: k.Fingerprint})
	case pin.Fingerprint != k.Fingerprint:
		fp := k.Fingerprint
		return &KeyChange{JID: bare, Old: pin.Fingerprint, New: &fp}, d.pins.SetKey(bare, KeyPin{Fingerprint: fp})
	case pin.Ended:
		// The same key bound again: nothing changed for a sender.
		return nil, d.pins.SetKey(bare, KeyPin{Fingerprint: k.Fingerprint})
	}
	return nil, nil
}

// Checkpoint fetches the latest checkpoint, checks that it extends the
// pinned one and pins it.
func (d *KeyDirectory) Checkpoint(ctx context.Context) (*VerifiedCheckpoint, error) {
	var res keydirxml.Checkpoint
	if err := d.c.IQ(ctx, stanza.GetIQ, d.service, keydirxml.Checkpoint{}, &res); err != nil {
		return nil, err
	}
	return d.acceptCheckpoint(ctx, []byte(res.Text))
}

// History fetches and verifies every log entry of the device's own JID,
// for the owner to see every key ever bound to it.
func (d *KeyDirectory) History(ctx context.Context) ([]HistoryEntry, error) {
	if d.v1 != nil {
		return d.historyV1(ctx)
	}
	var res keydirxml.History
	if err := d.c.IQ(ctx, stanza.GetIQ, d.service, keydirxml.History{}, &res); err != nil {
		return nil, err
	}
	cp, err := d.acceptCheckpoint(ctx, []byte(res.Checkpoint))
	if err != nil {
		return nil, err
	}
	me := d.c.JID().Bare().String()
	if res.JID != me {
		return nil, fmt.Errorf("%w: history of %q, not %q", ErrBadAnswer, res.JID, me)
	}
	label := jidLabel(me)
	out := make([]HistoryEntry, 0, len(res.Records))
	for _, r := range res.Records {
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadAnswer, err)
		}
		fp, _ := keydirxml.DecodeFingerprint(r.Fingerprint)
		if err := verifyInclusion(leafRecord(label, r.Kind, fp, r.Time), r.Index, r.Proof, cp); err != nil {
			return nil, err
		}
		out = append(out, HistoryEntry{Index: r.Index, Kind: r.Kind, Fingerprint: fp, Time: time.Unix(r.Time, 0)})
	}
	return out, nil
}

// acceptCheckpoint verifies a signed checkpoint, refuses one smaller than
// the pinned one (ErrStaleCheckpoint, asking the server nothing), proves a
// larger one consistent with the pinned one (asking the server for a
// consistency proof) and pins it. See docs/protocol.md, "Checkpoints".
func (d *KeyDirectory) acceptCheckpoint(ctx context.Context, signed []byte) (*VerifiedCheckpoint, error) {
	cp, err := openCheckpoint(signed, d.verifier)
	if err != nil {
		return nil, err
	}
	if err := d.witnesses.check(signed, d.verifier); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	prevMsg, err := d.pins.Checkpoint(cp.Origin)
	if err != nil {
		return nil, err
	}
	if prevMsg == nil {
		// Trust on first use: nothing to compare with yet.
		return cp, d.pins.SetCheckpoint(cp.Origin, signed)
	}
	prev, err := openCheckpoint(prevMsg, d.verifier)
	if err != nil {
		return nil, fmt.Errorf("client: keydir pinned checkpoint: %w", err)
	}
	if cp.Size < prev.Size {
		// Never roll the pin back, and never prove answers against a tree
		// older than one already seen: it could hide a later reset.
		return nil, &StaleCheckpointError{Pinned: prev, Served: cp}
	}
	older, newer := prev, cp
	switch {
	case older.Size == newer.Size:
		if older.Hash != newer.Hash {
			return nil, fmt.Errorf("%w: two different trees of %d entries (a forked log)", ErrLogInconsistent, cp.Size)
		}
	case older.Size == 0:
		// Every tree extends the empty one.
	default:
		var res keydirxml.Consistency
		if err := d.c.IQ(ctx, stanza.GetIQ, d.service, keydirxml.Consistency{Old: older.Size, New: newer.Size}, &res); err != nil {
			return nil, fmt.Errorf("client: keydir consistency %d→%d: %w", older.Size, newer.Size, err)
		}
		if res.Old != older.Size || res.New != newer.Size {
			return nil, fmt.Errorf("%w: consistency proof for the wrong sizes", ErrBadAnswer)
		}
		hs, err := keydirxml.DecodeHashes(res.Hashes)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadAnswer, err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, uint64(older.Size), uint64(newer.Size), toSlices(hs), older.Hash[:], newer.Hash[:]); err != nil {
			return nil, fmt.Errorf("%w: %d→%d: %v", ErrLogInconsistent, older.Size, newer.Size, err)
		}
	}
	if cp.Size > prev.Size {
		if err := d.pins.SetCheckpoint(cp.Origin, signed); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

func toSlices(hs [][32]byte) [][]byte {
	out := make([][]byte, len(hs))
	for i := range hs {
		out[i] = hs[i][:]
	}
	return out
}

// verifyEntry checks a found entry: the key is an acceptable RSA key with
// the stated fingerprint, and the publish record rebuilt from the JID, the
// fingerprint and the time is in the checkpoint's tree at the index.
func verifyEntry(e keydirxml.Entry, bare string, cp *VerifiedCheckpoint) (*VerifiedKey, error) {
	if err := e.Validate(); err != nil || e.Status != keydirxml.StatusFound {
		return nil, fmt.Errorf("%w: entry for %s: %v", ErrBadAnswer, bare, err)
	}
	if e.JID != bare {
		return nil, fmt.Errorf("%w: entry for %q, want %q", ErrBadAnswer, e.JID, bare)
	}
	der, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(e.Key))
	if err != nil {
		return nil, fmt.Errorf("%w: key of %s is not base64", ErrBadAnswer, bare)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	rk, ok := pub.(*rsa.PublicKey)
	if err != nil || !ok || rk.N.BitLen() < MinKeyBits {
		return nil, fmt.Errorf("%w: key of %s is not an RSA key of at least %d bits", ErrBadAnswer, bare, MinKeyBits)
	}
	fp := sha256.Sum256(der)
	if hex.EncodeToString(fp[:]) != e.Fingerprint {
		return nil, fmt.Errorf("%w: key of %s does not have the stated fingerprint", ErrBadAnswer, bare)
	}
	if err := verifyInclusion(leafRecord(jidLabel(bare), keydirxml.KindPublish, fp, e.Time), e.Index, e.Proof, cp); err != nil {
		return nil, fmt.Errorf("%w (%s)", err, bare)
	}
	return &VerifiedKey{JID: bare, DER: der, Key: rk, Fingerprint: fp, Index: e.Index, Time: time.Unix(e.Time, 0)}, nil
}

func verifyInclusion(record []byte, index int64, p *keydirxml.Proof, cp *VerifiedCheckpoint) error {
	if p == nil || index < 0 || index >= cp.Size {
		return fmt.Errorf("%w: leaf %d is outside the tree of %d", ErrBadProof, index, cp.Size)
	}
	hs, err := keydirxml.DecodeHashes(p.Hashes)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(record)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(index), uint64(cp.Size), leaf, toSlices(hs), cp.Hash[:]); err != nil {
		return fmt.Errorf("%w: leaf %d: %v", ErrBadProof, index, err)
	}
	return nil
}

// leafRecord is the record text of docs/protocol.md, built here rather
// than taken from the server's package so that the two are checked
// against each other (and against the spec's vectors) by tests.
func leafRecord(label [32]byte, kind string, fp [32]byte, t int64) []byte {
	return fmt.Appendf(nil, "clinkme-keydir v0\nlabel %x\nkind %s\nfingerprint %x\ntime %d\n", label[:], kind, fp[:], t)
}

// jidLabel is SHA-256("clinkme-keydir label v0\n" || canonical bare JID).
func jidLabel(bare string) [32]byte {
	return sha256.Sum256([]byte("clinkme-keydir label v0\n" + bare))
}

// canonicalBare returns the canonical (PRECIS) form of a user's bare JID.
func canonicalBare(s string) (string, error) {
	j, err := jid.Parse(s)
	if err != nil || j.Localpart() == "" || j.Resourcepart() != "" {
		return "", fmt.Errorf("client: keydir: %q is not a bare user JID", s)
	}
	return j.String(), nil
}

// openCheckpoint verifies a signed checkpoint with v and parses its body:
// origin (v's name), size, base64 root hash; extension lines are ignored.
func openCheckpoint(signed []byte, v note.Verifier) (*VerifiedCheckpoint, error) {
	if len(signed) == 0 || len(signed) > keydirxml.MaxCheckpoint {
		return nil, fmt.Errorf("%w: empty or oversized", ErrBadCheckpoint)
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCheckpoint, err)
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 || lines[0] != v.Name() {
		return nil, fmt.Errorf("%w: body does not start with origin %q, size and hash", ErrBadCheckpoint, v.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return nil, fmt.Errorf("%w: bad size", ErrBadCheckpoint)
	}
	h, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(h) != 32 {
		return nil, fmt.Errorf("%w: bad root hash", ErrBadCheckpoint)
	}
	return &VerifiedCheckpoint{Origin: lines[0], Size: size, Hash: [32]byte(h), Signed: signed}, nil
}

func versionsBetween(from, to int64) string {
	if from == to {
		return fmt.Sprintf("version %d", from)
	}
	return fmt.Sprintf("versions %d to %d", from, to)
}
