package client

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/keylog"
)

// This file is the device side of key directory v1 (docs/protocol.md,
// "Key directory v1"): every answer proves, against the map root that
// the log's head names, that a binding is the JID's current value, or
// that the JID has none. As for v0 the device checks with its own code:
// the records and the map's hashing and proofs are rebuilt here from the
// spec (the test vectors, computed in Python, tie them to the server's);
// only the VRF (keylog/ecvrf, checked against RFC 9381's vectors) and the
// VRF key's text form are shared with the server.

// Errors of a v1 answer, beside those of keys.go. Each means the answer
// must not be used.
var (
	// ErrNotCurrent: the binding offered is not the JID's value in the
	// map of the answer's checkpoint (a reset key served as if current).
	ErrNotCurrent = errors.New("client: keydir binding is not the JID's current one at this checkpoint")
	// ErrBadAbsence: the server says the JID has no key but cannot prove
	// it against the map.
	ErrBadAbsence = errors.New("client: keydir claims no key but cannot prove it")
	// ErrBadVRF: the JID's VRF proof does not verify with the log's VRF
	// key.
	ErrBadVRF = errors.New("client: keydir VRF proof does not verify")
	// ErrHistoryIncomplete: the history served leaves out, repeats or
	// reorders a version of the device's own JID.
	ErrHistoryIncomplete = errors.New("client: keydir history is not complete")
)

// DefaultMaxAge is how old the log's head may be before a device refuses
// an answer (ErrStaleCheckpoint): the server appends a tick every hour
// when nothing else happens, so a head older than a day means it hides
// newer entries, or this device's clock is wrong.
const DefaultMaxAge = 24 * time.Hour

// KeyDirConfig configures a v1 directory client.
type KeyDirConfig struct {
	Service  jid.JID // clinkd's component domain (required)
	Verifier string  // the log's verifier key, shipped with the app (required)
	VRFKey   string  // the log's VRF public key, shipped with the app (required)
	Pins     PinStore
	// MaxAge bounds the age of the log's head (default DefaultMaxAge;
	// negative: no bound).
	MaxAge time.Duration
	// Now is the device's clock (default time.Now).
	Now func() time.Time
	// Witnesses is the device's witness policy: every checkpoint must
	// carry enough valid cosignatures (witness.go; zero: none required).
	Witnesses WitnessPolicy
}

type v1Config struct {
	vrf    keylog.VRFKey
	maxAge time.Duration
	now    func() time.Time
}

// OpenKeyDirectory returns a directory client that speaks key directory
// v1. The VRF key must be of the log the verifier key names.
func (c *Client) OpenKeyDirectory(cfg KeyDirConfig) (*KeyDirectory, error) {
	if cfg.VRFKey == "" {
		return nil, errors.New("client: keydir: no VRF key (lab.json keylog_vrf_key, or the app's configuration)")
	}
	k, err := keylog.ParseVRFKey(strings.TrimSpace(cfg.VRFKey))
	if err != nil {
		return nil, fmt.Errorf("client: keydir: %w", err)
	}
	d, err := c.NewKeyDirectory(cfg.Service, cfg.Verifier, cfg.Pins)
	if err != nil {
		return nil, err
	}
	if k.Name != d.verifier.Name() {
		return nil, fmt.Errorf("client: keydir: the VRF key is of log %q, the verifier key of %q", k.Name, d.verifier.Name())
	}
	if d.witnesses, err = parseWitnessPolicy(cfg.Witnesses); err != nil {
		return nil, err
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d.v1 = &v1Config{vrf: k, maxAge: cfg.MaxAge, now: cfg.Now}
	return d, nil
}

// a verified v1 entry.
type v1Entry struct {
	jid     string
	index   [32]byte // map index
	vrf     []byte
	value   *mapValue // nil: no leaf
	key     *VerifiedKey
	kind    string // the entry's kind (publish for a binding)
	version int64
}

func (d *KeyDirectory) publishV1(ctx context.Context, pub *rsa.PublicKey) (*VerifiedKey, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("client: keydir publish: %w", err)
	}
	var res keydirxml.Publish1
	if err := d.c.IQ(ctx, stanza.SetIQ, d.service, keydirxml.Publish1{Key: base64.StdEncoding.EncodeToString(der)}, &res); err != nil {
		return nil, err
	}
	if res.Entry == nil {
		return nil, fmt.Errorf("%w: publish result has no entry", ErrBadAnswer)
	}
	me := d.c.JID().Bare().String()
	es, err := d.verifyAnswer(ctx, res.Checkpoint, res.Head, []keydirxml.Entry1{*res.Entry}, []string{me})
	if err != nil {
		return nil, err
	}
	e := es[0]
	if e.key == nil || !bytes.Equal(e.key.DER, der) {
		return nil, fmt.Errorf("%w: the directory answered the publish with another key or none", ErrBadAnswer)
	}
	if err := d.pinVersion(me, e); err != nil {
		return nil, err
	}
	if err := d.pins.SetKey(me, KeyPin{Fingerprint: e.key.Fingerprint, Version: e.version}); err != nil {
		return nil, err
	}
	return e.key, nil
}

func (d *KeyDirectory) lookupV1(ctx context.Context, want []string) ([]KeyResult, error) {
	return d.lookupVia(ctx, want, d.askDirectory)
}

// askLookup sends a v1 lookup of want that says known (0: nothing held)
// and returns the directory's result, unverified.
type askLookup func(ctx context.Context, want []string, known int64) (*keydirxml.Lookup1, error)

// askDirectory is the askLookup of this client's directory.
func (d *KeyDirectory) askDirectory(ctx context.Context, want []string, known int64) (*keydirxml.Lookup1, error) {
	var res keydirxml.Lookup1
	d.lookups.Add(1)
	if err := d.c.IQ(ctx, stanza.GetIQ, d.service, keydirxml.Lookup1{JIDs: want, Known: known}, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// lookupVia looks want up through ask: conditionally when this client
// holds them all at its pinned size, and in full again, once, when an
// "unchanged" answer confirms what it no longer holds.
func (d *KeyDirectory) lookupVia(ctx context.Context, want []string, ask askLookup) ([]KeyResult, error) {
	known, err := d.knownSize(want)
	if err != nil {
		return nil, err
	}
	out, unchanged, err := d.lookupOnce(ctx, want, known, ask)
	if unchanged && (errors.Is(err, errNotHeld) || errors.Is(err, ErrStaleCheckpoint)) {
		// Another answer moved the pin, or the head grew too old, while
		// this one was on its way: what it confirms is not held any
		// more. Ask again in full, once.
		out, _, err = d.lookupOnce(ctx, want, 0, ask)
	}
	return out, err
}

// lookupOnce asks for want through ask, saying the size known at which
// this client holds them all (0: none, a full lookup), and verifies the
// answer; unchanged reports an answer "unchanged".
func (d *KeyDirectory) lookupOnce(ctx context.Context, want []string, known int64, ask askLookup) (out []KeyResult, unchanged bool, err error) {
	res, err := ask(ctx, want, known)
	if err != nil {
		return nil, false, err
	}
	if res.Unchanged != 0 && res.Unchanged != known {
		return nil, false, fmt.Errorf("%w: the directory answered \"unchanged at %d\" to a lookup that held size %d", ErrBadAnswer, res.Unchanged, known)
	}
	out, err = d.VerifyLookup(ctx, res, want...)
	return out, res.Unchanged != 0, err
}

// VerifyLookup verifies a v1 lookup answer for jids (canonical bare JIDs,
// in the order asked) as LookupKeys does, and updates the pins: for an
// app that carries the directory's answers over its own transport, and
// for tests that play a dishonest server. A consistency proof, when one
// is needed, is still asked of the directory. An unchanged result (a
// conditional lookup, keydir_known.go) is answered with what this client
// verified at that size; it fails with ErrBadAnswer unless the client
// holds every JID asked at its pinned size, and with ErrStaleCheckpoint
// when the head of that size is older than the maximum age. That the
// request said known with that size is the caller's to check, as
// LookupKeys does.
func (d *KeyDirectory) VerifyLookup(ctx context.Context, res *keydirxml.Lookup1, want ...string) ([]KeyResult, error) {
	if d.v1 == nil {
		return nil, errors.New("client: keydir: VerifyLookup needs a v1 directory (OpenKeyDirectory)")
	}
	if err := res.ValidateResult(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	if res.Unchanged != 0 {
		return d.takeUnchanged(res.Unchanged, want)
	}
	es, at, err := d.verifyAnswerAt(ctx, res.Checkpoint, res.Head, res.Entries, want)
	if err != nil {
		return nil, err
	}
	out := make([]KeyResult, len(want))
	var changes []KeyChange
	for i, e := range es {
		if err := d.pinVersion(want[i], e); err != nil {
			return nil, err
		}
		out[i] = KeyResult{JID: want[i], Key: e.key, Version: e.version, Ended: e.value != nil && e.value.ended, VRFProof: e.vrf}
		if out[i].Ended {
			out[i].EndKind, out[i].EndIndex = e.kind, e.value.entry
		}
		ch, err := d.pinKey(want[i], e.key)
		if err != nil {
			return nil, err
		}
		if ch != nil {
			changes = append(changes, *ch)
		}
		if err := d.setPinVersion(want[i], e.version); err != nil {
			return nil, err
		}
	}
	if d.cache != nil {
		// Pinned above: the cache holds what the pins hold.
		for _, r := range out {
			d.cache.put(r.JID, r.Key)
		}
	}
	if err := d.keepProven(at, out); err != nil {
		return nil, err
	}
	if len(changes) > 0 {
		return out, &KeyChangeError{Changes: changes}
	}
	return out, nil
}

// pinVersion refuses a version below the one pinned for bare, and no
// leaf for a JID seen with one: the map never loses a leaf and versions
// never go back, so either means another log than the one seen before.
func (d *KeyDirectory) pinVersion(bare string, e v1Entry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	pin, had, err := d.pins.Key(bare)
	if err != nil || !had || pin.Version == 0 {
		return err
	}
	if e.version < pin.Version {
		return fmt.Errorf("%w: %s at version %d, after version %d was seen", ErrLogInconsistent, bare, e.version, pin.Version)
	}
	return nil
}

func (d *KeyDirectory) setPinVersion(bare string, v int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	pin, had, err := d.pins.Key(bare)
	if err != nil || !had || pin.Version >= v {
		return err
	}
	pin.Version = v
	return d.pins.SetKey(bare, pin)
}

// verifyAnswer checks a v1 answer: the checkpoint (signature, pin), the
// head (record, inclusion, age) and each entry against want, in order.
func (d *KeyDirectory) verifyAnswer(ctx context.Context, signed string, head *keydirxml.Head, entries []keydirxml.Entry1, want []string) ([]v1Entry, error) {
	es, _, err := d.verifyAnswerAt(ctx, signed, head, entries, want)
	return es, err
}

// answerAt is what a verified answer was proven against: the
// checkpoint's size and the time of the head, the log's last entry.
type answerAt struct {
	size     int64
	headTime int64
}

// verifyAnswerAt is verifyAnswer, saying what the answer was proven
// against.
func (d *KeyDirectory) verifyAnswerAt(ctx context.Context, signed string, head *keydirxml.Head, entries []keydirxml.Entry1, want []string) ([]v1Entry, answerAt, error) {
	cp, err := d.acceptCheckpoint(ctx, []byte(signed))
	if err != nil {
		return nil, answerAt{}, err
	}
	h, err := d.verifyHead(head, cp)
	if err != nil {
		return nil, answerAt{}, err
	}
	if len(entries) != len(want) {
		return nil, answerAt{}, fmt.Errorf("%w: %d entries for %d JIDs", ErrBadAnswer, len(entries), len(want))
	}
	out := make([]v1Entry, len(want))
	for i := range entries {
		if out[i], err = d.verifyEntryV1(entries[i], want[i], h.mapRoot, cp); err != nil {
			return nil, answerAt{}, err
		}
	}
	return out, answerAt{size: cp.Size, headTime: h.time}, nil
}

// verifyHead checks the head: the last leaf of the checkpoint's tree, a
// v1 record, recent enough; it returns the record, whose map root the
// entries are proven against.
func (d *KeyDirectory) verifyHead(h *keydirxml.Head, cp *VerifiedCheckpoint) (headRecord, error) {
	if h == nil {
		return headRecord{}, fmt.Errorf("%w: no head", ErrBadAnswer)
	}
	if err := h.Validate(); err != nil {
		return headRecord{}, fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	if cp.Size == 0 || h.Index != cp.Size-1 {
		return headRecord{}, fmt.Errorf("%w: head %d in a tree of %d", ErrBadProof, h.Index, cp.Size)
	}
	rec, _ := keydirxml.DecodeBlob(h.Record, keydirxml.MaxRecordBase64)
	r, err := parseV1Record(rec)
	if err != nil {
		return headRecord{}, fmt.Errorf("%w: head: %v", ErrBadAnswer, err)
	}
	if err := verifyBlobInclusion(rec, h.Index, h.Proof, cp); err != nil {
		return headRecord{}, fmt.Errorf("%w (head)", err)
	}
	if err := d.checkHeadAge(r.time); err != nil {
		return headRecord{}, err
	}
	return r, nil
}

// checkHeadAge refuses a head older than the device's maximum age.
func (d *KeyDirectory) checkHeadAge(t int64) error {
	if age := d.v1.now().Sub(time.Unix(t, 0)); d.v1.maxAge > 0 && age > d.v1.maxAge {
		return fmt.Errorf("%w: the directory's newest entry is %s old: the server may be hiding newer entries, or this device's clock is wrong",
			ErrStaleCheckpoint, age.Round(time.Minute))
	}
	return nil
}

// verifyEntryV1 checks one entry: the VRF gives the JID's index, the map
// proof shows the stated value (or absence) under root, the entry's
// record rebuilt from the stated fields is in the tree, and a found key
// is an RSA key with the stated fingerprint.
func (d *KeyDirectory) verifyEntryV1(e keydirxml.Entry1, bare string, root [32]byte, cp *VerifiedCheckpoint) (v1Entry, error) {
	out := v1Entry{jid: bare}
	if e.JID != bare {
		return out, fmt.Errorf("%w: entry for %q, asked %q", ErrBadAnswer, e.JID, bare)
	}
	if err := e.Validate(); err != nil {
		return out, fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	vrf, _ := keydirxml.DecodeBlob(e.VRF, keydirxml.MaxVRFProofBase64)
	x, err := d.v1.vrf.Index(bare, vrf)
	if err != nil {
		return out, fmt.Errorf("%w: %s", ErrBadVRF, bare)
	}
	out.index, out.vrf = x, vrf
	raw, _ := keydirxml.DecodeBlob(e.Map, keydirxml.MaxMapProofBase64)
	mp, err := parseMapProof(raw)
	if err != nil {
		return out, fmt.Errorf("%w: map proof of %s: %v", ErrBadAnswer, bare, err)
	}
	if e.Status == keydirxml.StatusNone {
		if mp.typ == mapFound || !mp.verify(root, x, nil) {
			return out, fmt.Errorf("%w (%s)", ErrBadAbsence, bare)
		}
		return out, nil
	}
	fp, _ := keydirxml.DecodeFingerprint(e.Fingerprint)
	v := mapValue{ended: e.Status == keydirxml.StatusEnded, fp: fp, entry: e.Index, version: e.Version}
	if mp.typ != mapFound || !mp.verify(root, x, &v) {
		return out, fmt.Errorf("%w (%s)", ErrNotCurrent, bare)
	}
	out.value, out.version = &v, e.Version
	out.kind = keydirxml.KindPublish
	if v.ended {
		out.kind = e.Kind
	}
	if e.Index >= cp.Size {
		return out, fmt.Errorf("%w: entry %d is outside the tree of %d", ErrBadProof, e.Index, cp.Size)
	}
	var rec []byte
	if e.Record == keydirxml.RecordV1 {
		r, _ := keydirxml.DecodeBlob(e.Root, 44)
		rec = v1Record(out.kind, x, fp, e.Version, e.Time, [32]byte(r))
	} else {
		rec = leafRecord(jidLabel(bare), out.kind, fp, e.Time)
	}
	if err := verifyBlobInclusion(rec, e.Index, e.Proof, cp); err != nil {
		return out, fmt.Errorf("%w (%s)", err, bare)
	}
	if v.ended {
		return out, nil
	}
	der, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(e.Key))
	if err != nil {
		return out, fmt.Errorf("%w: key of %s is not base64", ErrBadAnswer, bare)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	rk, ok := pub.(*rsa.PublicKey)
	if err != nil || !ok || rk.N.BitLen() < MinKeyBits {
		return out, fmt.Errorf("%w: key of %s is not an RSA key of at least %d bits", ErrBadAnswer, bare, MinKeyBits)
	}
	if sha256.Sum256(der) != fp {
		return out, fmt.Errorf("%w: key of %s does not have the stated fingerprint", ErrBadAnswer, bare)
	}
	out.key = &VerifiedKey{JID: bare, DER: der, Key: rk, Fingerprint: fp, Index: e.Index, Time: time.Unix(e.Time, 0), Version: e.Version}
	return out, nil
}

func verifyBlobInclusion(record []byte, index int64, blob string, cp *VerifiedCheckpoint) error {
	hs, err := keydirxml.DecodeHashBlob(blob)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	if index < 0 || index >= cp.Size {
		return fmt.Errorf("%w: leaf %d is outside the tree of %d", ErrBadProof, index, cp.Size)
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(record)
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(index), uint64(cp.Size), leaf, toSlices(hs), cp.Hash[:]); err != nil {
		return fmt.Errorf("%w: leaf %d: %v", ErrBadProof, index, err)
	}
	return nil
}

// historyV1 fetches every version of the device's own JID and checks
// that the list is complete: versions 1 to n, n being the map's version,
// each record in the log, in order, alternating publish and end.
func (d *KeyDirectory) historyV1(ctx context.Context) ([]HistoryEntry, error) {
	return d.VerifyHistory(ctx, func(ctx context.Context, from int64) (*keydirxml.History1, error) {
		var res keydirxml.History1
		if err := d.c.IQ(ctx, stanza.GetIQ, d.service, keydirxml.History1{From: from}, &res); err != nil {
			return nil, err
		}
		return &res, nil
	})
}

// VerifyHistory gets the pages of the device's own history from fetch
// (the versions from a version on) and verifies them as History does:
// for an app with its own transport, and for tests that play a
// dishonest server.
func (d *KeyDirectory) VerifyHistory(ctx context.Context, fetch func(ctx context.Context, from int64) (*keydirxml.History1, error)) ([]HistoryEntry, error) {
	if d.v1 == nil {
		return nil, errors.New("client: keydir: VerifyHistory needs a v1 directory (OpenKeyDirectory)")
	}
	me := d.c.JID().Bare().String()
	for attempt := 0; ; attempt++ {
		out, grew, err := d.historyPages(ctx, me, fetch)
		if !grew || attempt == 2 {
			return out, err
		}
	}
}

// historyPages reads the pages of one history; grew reports that the log
// grew between two pages (start again).
func (d *KeyDirectory) historyPages(ctx context.Context, me string, fetch func(ctx context.Context, from int64) (*keydirxml.History1, error)) (out []HistoryEntry, grew bool, err error) {
	var (
		size   int64
		own    v1Entry
		seenV1 bool
	)
	incomplete := func(format string, args ...any) ([]HistoryEntry, bool, error) {
		return nil, false, fmt.Errorf("%w: %s", ErrHistoryIncomplete, fmt.Sprintf(format, args...))
	}
	for from := int64(1); ; {
		res, err := fetch(ctx, from)
		if err != nil {
			return nil, false, err
		}
		if res.JID != me {
			return nil, false, fmt.Errorf("%w: history of %q, not %q", ErrBadAnswer, res.JID, me)
		}
		if res.Entry == nil {
			return nil, false, fmt.Errorf("%w: history without the JID's entry", ErrBadAnswer)
		}
		es, err := d.verifyAnswer(ctx, res.Checkpoint, res.Head, []keydirxml.Entry1{*res.Entry}, []string{me})
		if err != nil {
			return nil, false, err
		}
		cp, err := openCheckpoint([]byte(res.Checkpoint), d.verifier)
		if err != nil {
			return nil, false, err
		}
		if from == 1 {
			size, own = cp.Size, es[0]
		} else if cp.Size != size {
			return nil, true, nil
		}
		for _, r := range res.Records {
			if err := r.Validate(); err != nil {
				return nil, false, fmt.Errorf("%w: %v", ErrBadAnswer, err)
			}
			want := int64(len(out)) + 1
			if r.Version != want {
				return incomplete("version %d where %d was due", r.Version, want)
			}
			if len(out) > 0 && r.Index <= out[len(out)-1].Index {
				return incomplete("version %d at entry %d, not after entry %d", r.Version, r.Index, out[len(out)-1].Index)
			}
			if r.Record == keydirxml.RecordV0 && seenV1 {
				return incomplete("version %d is a v0 record after a v1 one", r.Version)
			}
			seenV1 = seenV1 || r.Record == keydirxml.RecordV1
			fp, _ := keydirxml.DecodeFingerprint(r.Fingerprint)
			var rec []byte
			if r.Record == keydirxml.RecordV1 {
				root, _ := keydirxml.DecodeBlob(r.Root, 44)
				rec = v1Record(r.Kind, own.index, fp, r.Version, r.Time, [32]byte(root))
			} else {
				rec = leafRecord(jidLabel(me), r.Kind, fp, r.Time)
			}
			if err := verifyBlobInclusion(rec, r.Index, r.Proof, cp); err != nil {
				return nil, false, fmt.Errorf("%w (version %d)", err, r.Version)
			}
			// publish, end, publish, end…, each end of the key the
			// publish before it bound.
			if publish := len(out)%2 == 0; publish != (r.Kind == keydirxml.KindPublish) {
				return incomplete("version %d is a %s, out of turn", r.Version, r.Kind)
			}
			if r.Kind != keydirxml.KindPublish && out[len(out)-1].Fingerprint != fp {
				return incomplete("version %d ends a key that version %d did not bind", r.Version, r.Version-1)
			}
			out = append(out, HistoryEntry{Index: r.Index, Kind: r.Kind, Fingerprint: fp, Time: time.Unix(r.Time, 0), Version: r.Version})
		}
		n := own.version
		if int64(len(out)) >= n || len(res.Records) < keydirxml.MaxHistoryItems {
			break
		}
		from = int64(len(out)) + 1
	}
	n := own.version
	if int64(len(out)) != n {
		return incomplete("%d versions served, the map says %d", len(out), n)
	}
	if n > 0 {
		last := out[n-1]
		if last.Index != own.value.entry || last.Fingerprint != own.value.fp || last.Kind != own.kind {
			return incomplete("the last version (entry %d) is not the map's value (entry %d)", last.Index, own.value.entry)
		}
	}
	return out, false, nil
}

// The map, rebuilt here from docs/protocol.md, "The map".

const (
	mapFound = 1
	mapEmpty = 2
	mapOther = 3
)

type mapValue struct {
	ended   bool
	fp      [32]byte
	entry   int64
	version int64
}

func (v mapValue) bytes() []byte {
	b := make([]byte, 49)
	b[0] = 1
	if v.ended {
		b[0] = 2
	}
	copy(b[1:], v.fp[:])
	binary.BigEndian.PutUint64(b[33:], uint64(v.entry))
	binary.BigEndian.PutUint64(b[41:], uint64(v.version))
	return b
}

func mapLeafHash(x [32]byte, v mapValue) [32]byte {
	return sha256.Sum256(append(append([]byte{0x02}, x[:]...), v.bytes()...))
}

func mapNodeHash(l, r [32]byte) [32]byte {
	return sha256.Sum256(append(append([]byte{0x03}, l[:]...), r[:]...))
}

type mapProof struct {
	typ      int
	siblings [][32]byte
	other    [32]byte
	otherV   mapValue
}

func mapBit(x [32]byte, i int) int { return int(x[i/8]>>(7-i%8)) & 1 }

// parseMapProof decodes a map proof (type, depth, empty-sibling bitmap,
// non-empty siblings, other leaf), refusing any other encoding.
func parseMapProof(b []byte) (mapProof, error) {
	var p mapProof
	if len(b) < 3 || b[0] < mapFound || b[0] > mapOther {
		return p, errors.New("bad type or length")
	}
	p.typ = int(b[0])
	depth := int(binary.BigEndian.Uint16(b[1:3]))
	if depth > 256 {
		return p, errors.New("deeper than 256")
	}
	b = b[3:]
	nb := (depth + 7) / 8
	if len(b) < nb {
		return p, errors.New("truncated")
	}
	bitmap := b[:nb]
	b = b[nb:]
	if depth%8 != 0 && bitmap[nb-1]<<(depth%8) != 0 {
		return p, errors.New("bitmap bits past the depth")
	}
	p.siblings = make([][32]byte, depth)
	for i := range depth {
		if bitmap[i/8]&(0x80>>(i%8)) != 0 {
			continue
		}
		if len(b) < 32 {
			return p, errors.New("truncated")
		}
		copy(p.siblings[i][:], b)
		if p.siblings[i] == ([32]byte{}) {
			return p, errors.New("an empty sibling written out")
		}
		b = b[32:]
	}
	if p.typ == mapOther {
		if len(b) != 81 || (b[32] != 1 && b[32] != 2) {
			return p, errors.New("bad other leaf")
		}
		copy(p.other[:], b)
		copy(p.otherV.fp[:], b[33:65])
		p.otherV.ended = b[32] == 2
		p.otherV.entry = int64(binary.BigEndian.Uint64(b[65:73]))
		p.otherV.version = int64(binary.BigEndian.Uint64(b[73:81]))
		b = nil
	}
	if len(b) != 0 {
		return p, errors.New("trailing bytes")
	}
	return p, nil
}

// verify reports whether p shows v (nil: absence) as x's value in the map
// whose root is root.
func (p mapProof) verify(root, x [32]byte, v *mapValue) bool {
	d := len(p.siblings)
	var t [32]byte
	switch {
	case p.typ == mapFound && v != nil:
		t = mapLeafHash(x, *v)
	case p.typ == mapEmpty && v == nil:
	case p.typ == mapOther && v == nil:
		if p.other == x {
			return false
		}
		for i := range d {
			if mapBit(p.other, i) != mapBit(x, i) {
				return false
			}
		}
		t = mapLeafHash(p.other, p.otherV)
	default:
		return false
	}
	if d > 0 && p.siblings[d-1] == ([32]byte{}) {
		return false
	}
	for i := d - 1; i >= 0; i-- {
		if mapBit(x, i) == 0 {
			t = mapNodeHash(t, p.siblings[i])
		} else {
			t = mapNodeHash(p.siblings[i], t)
		}
	}
	return t == root
}

// The v1 record, rebuilt here from docs/protocol.md, "v1 records".

func v1Record(kind string, x, fp [32]byte, version, t int64, root [32]byte) []byte {
	return fmt.Appendf(nil, "clinkme-keydir v1\nkind %s\nindex %x\nfingerprint %x\nversion %d\ntime %d\nmap %x\n", kind, x[:], fp[:], version, t, root[:])
}

type headRecord struct {
	kind    string
	time    int64
	mapRoot [32]byte
}

// parseV1Record reads a head record strictly: any v1 kind, its lines in
// order, rebuilt byte for byte; only kind, time and map are kept.
func parseV1Record(b []byte) (headRecord, error) {
	var h headRecord
	if len(b) > 512 {
		return h, errors.New("record too long")
	}
	rest, ok := bytes.CutPrefix(b, []byte("clinkme-keydir v1\n"))
	if !ok {
		return h, errors.New("not a clinkme-keydir v1 record")
	}
	lines := strings.Split(string(rest), "\n")
	if len(lines) < 3 || lines[len(lines)-1] != "" {
		return h, errors.New("not newline-terminated lines")
	}
	lines = lines[:len(lines)-1]
	kind, ok := strings.CutPrefix(lines[0], "kind ")
	if !ok {
		return h, errors.New("no kind line")
	}
	want := map[string][]string{
		"publish": {"index", "fingerprint", "version"}, "reset": {"index", "fingerprint", "version"}, "delete": {"index", "fingerprint", "version"},
		"migrate": {"index", "label", "version"}, "genesis": {"vrf", "migrate"}, "tick": {},
	}
	names, ok := want[kind]
	if !ok {
		return h, fmt.Errorf("unknown kind %q", kind)
	}
	names = append(append([]string{}, names...), "time", "map")
	if len(lines) != 1+len(names) {
		return h, errors.New("wrong number of lines")
	}
	for i, name := range names {
		v, ok := strings.CutPrefix(lines[1+i], name+" ")
		if !ok {
			return h, fmt.Errorf("line %d is not %s", i+2, name)
		}
		switch name {
		case "index", "fingerprint", "label", "map":
			x, err := hex.DecodeString(v)
			if err != nil || len(x) != 32 || strings.ToLower(v) != v {
				return h, fmt.Errorf("%s is not 64 lower-case hex digits", name)
			}
			if name == "map" {
				h.mapRoot = [32]byte(x)
			}
		case "version", "migrate", "time":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || strconv.FormatInt(n, 10) != v {
				return h, fmt.Errorf("%s is not a canonical decimal", name)
			}
			switch {
			case name == "time":
				h.time = n
			case name == "version" && (n < 1 || (n < 2 && (kind == "reset" || kind == "delete"))):
				return h, fmt.Errorf("version %d is out of range for a %s", n, kind)
			}
		case "vrf":
			if _, err := keylog.ParseVRFKey(v); err != nil {
				return h, err
			}
		}
	}
	h.kind = kind
	return h, nil
}
