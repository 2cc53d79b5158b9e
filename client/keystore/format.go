package keystore

import (
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/argon2"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// Format constants of docs/keystore.md. Both versions have a header of the
// same size; only the first line and the contents differ.
const (
	magicV0     = "clinkme keystore v0\n"
	magicV1     = "clinkme keystore v1\n"
	magicV2     = "clinkme keystore v2\n"
	magicFamily = "clinkme keystore v"
	saltSize    = 16
	nonceSize   = 12
	tagSize     = 16
	headerSize  = len(magicV1) + 4 + 4 + 1 + saltSize + nonceSize
	keySize     = 32
)

// The version a Store writes. Files of versions 0 and 1 are read and
// written as version 2 on their first write.
const currentVersion = 2

// Bounds on what Open reads.
const (
	maxFileSize    = 16 << 20
	maxContactKeys = 1 << 16
	maxKeyDER      = 4096 // PKCS #8 of an RSA-4096 key is about 2.4 KB
	// maxCheckpoints and maxCheckpoint bound the pinned checkpoints: one
	// per key directory log a device talks to, of at most 128 KiB (a
	// checkpoint with many cosignatures).
	maxCheckpoints = 16
	maxCheckpoint  = 128 << 10
	maxOrigin      = 1024
	// maxKeyPins bounds the pinned keys: one per JID the device looked up.
	maxKeyPins = 1 << 16
	// maxTrust bounds the contacts' trust records (version 2), as many as
	// key pins; maxAlarms the alarms kept (the oldest go first),
	// maxAlarmText an alarm's text, maxEndKind the kind of an ending
	// entry.
	maxTrust     = 1 << 16
	maxAlarms    = 64
	maxAlarmText = 4096
	maxEndKind   = 16
)

// Params are the Argon2id parameters of a key store file (RFC 9106): how
// much a guess of the passphrase costs whoever holds the file.
type Params struct {
	Time      uint32 // passes, MinTime ≤ Time ≤ 10
	MemoryKiB uint32 // KiB, MinMemoryKiB ≤ MemoryKiB ≤ 262,144 (256 MiB)
	Threads   uint8  // lanes, 1 ≤ Threads ≤ 16
}

// The floor of the parameters of a file that Create, Export and Import
// write: the minimum that OWASP's Password Storage Cheat Sheet gives for
// Argon2id (m = 19 MiB, t = 2, p = 1). Open still reads files with
// weaker parameters (down to the bounds of docs/keystore.md): only a
// holder of the passphrase can make one.
const (
	MinTime      = 2
	MinMemoryKiB = 19 << 10
)

// DesktopParams are the parameters for desktops and laptops: RFC 9106's
// second recommended option (section 4), t=3, m=64 MiB, p=4. Deriving the
// key takes about a second on a small machine; a Store derives it once.
func DesktopParams() Params { return Params{Time: 3, MemoryKiB: 64 << 10, Threads: 4} }

// MobileParams are the parameters for phones and tablets: half the
// memory of DesktopParams with one more pass (t=4, m=32 MiB, p=2), so
// that an app, or an app extension that opens the store to show a
// notification, stays well within the memory a mobile OS gives it. It is
// above the floor (MinTime, MinMemoryKiB).
func MobileParams() Params { return Params{Time: 4, MemoryKiB: 32 << 10, Threads: 2} }

// Bounds of what Open accepts (docs/keystore.md, "Parameters").
const (
	maxTime    = 10
	maxMemory  = 256 << 10 // KiB
	maxThreads = 16
)

// check applies the bounds of what Open reads.
func (p Params) check() error {
	if p.Time < 1 || p.Time > maxTime || p.Threads < 1 || p.Threads > maxThreads ||
		p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > maxMemory {
		return fmt.Errorf("%w: t=%d m=%d KiB p=%d, want 1 ≤ t ≤ %d, 8p ≤ m ≤ %d KiB, 1 ≤ p ≤ %d",
			ErrBadParams, p.Time, p.MemoryKiB, p.Threads, maxTime, maxMemory, maxThreads)
	}
	return nil
}

// checkFloor applies the floor of what a new file may have, beside the
// bounds of check.
func (p Params) checkFloor() error {
	if err := p.check(); err != nil {
		return err
	}
	if p.Time < MinTime || p.MemoryKiB < MinMemoryKiB {
		return fmt.Errorf("%w: t=%d m=%d KiB is below the floor t ≥ %d, m ≥ %d KiB", ErrBadParams, p.Time, p.MemoryKiB, MinTime, MinMemoryKiB)
	}
	return nil
}

// header is the clear part of a file, its first headerSize bytes.
type header struct {
	version int // 0 or 1: the first line
	Params
	salt  [saltSize]byte
	nonce [nonceSize]byte
}

func (h *header) marshal() []byte {
	b := make([]byte, 0, headerSize)
	switch h.version {
	case 0:
		b = append(b, magicV0...)
	case 1:
		b = append(b, magicV1...)
	default:
		b = append(b, magicV2...)
	}
	b = binary.BigEndian.AppendUint32(b, h.Time)
	b = binary.BigEndian.AppendUint32(b, h.MemoryKiB)
	b = append(b, h.Threads)
	b = append(b, h.salt[:]...)
	return append(b, h.nonce[:]...)
}

// parseHeader splits a file into its header and its sealed contents. It
// checks the magic and the parameter bounds, not the passphrase.
func parseHeader(data []byte) (*header, []byte, error) {
	h := &header{}
	switch {
	case len(data) >= len(magicV2) && string(data[:len(magicV2)]) == magicV2:
		h.version = 2
	case len(data) >= len(magicV1) && string(data[:len(magicV1)]) == magicV1:
		h.version = 1
	case len(data) >= len(magicV0) && string(data[:len(magicV0)]) == magicV0:
		h.version = 0
	case len(data) >= len(magicFamily) && string(data[:len(magicFamily)]) == magicFamily:
		return nil, nil, ErrUnsupportedVersion
	default:
		return nil, nil, fmt.Errorf("%w: no key store header", ErrCorrupt)
	}
	if len(data) < headerSize+tagSize {
		return nil, nil, fmt.Errorf("%w: truncated", ErrCorrupt)
	}
	b := data[len(magicV1):]
	h.Params = Params{
		Time:      binary.BigEndian.Uint32(b[0:4]),
		MemoryKiB: binary.BigEndian.Uint32(b[4:8]),
		Threads:   b[8],
	}
	copy(h.salt[:], b[9:9+saltSize])
	copy(h.nonce[:], b[9+saltSize:9+saltSize+nonceSize])
	if err := h.check(); err != nil {
		return nil, nil, err
	}
	return h, data[headerSize:], nil
}

// deriveKey runs Argon2id. The parameters must have passed check.
func deriveKey(passphrase []byte, h *header) []byte {
	return argon2.IDKey(passphrase, h.salt[:], h.Time, h.MemoryKiB, h.Threads, keySize)
}

type contactEntry struct {
	contact string
	key     envelope.ContactKey
	peer    [32]byte // fingerprint of the contact's identity key it was shared with; zero: unknown
	id      string   // key.ID(), cached for lookups
}

func newEntry(contact string, sk SharedKey) contactEntry {
	return contactEntry{contact: contact, key: sk.Key, peer: sk.PeerKey, id: string(sk.Key.ID())}
}

// contents is what the file seals.
type contents struct {
	id       envelope.Identity
	contacts []contactEntry // in the order added; the last for a contact is its current key
	pins
}

// pins is what the device saw of the key directory (version 1), and
// what its user decided about it (version 2).
type pins struct {
	checkpoints []checkpointPin // by origin, sorted
	keys        []keyPin        // by JID, sorted
	trust       []trustEntry    // by JID, sorted (version 2)
	alarms      []Alarm         // oldest first (version 2)
	ownSeen     int64           // version 2: the own JID's versions reviewed
}

type trustEntry struct {
	jid string
	Trust
}

type checkpointPin struct {
	origin string
	signed []byte
}

type keyPin struct {
	jid string
	KeyPin
}

// marshal encodes c in the current version (docs/keystore.md,
// "Contents").
func (c *contents) marshal() ([]byte, error) { return c.marshalVersion(currentVersion) }

// marshalVersion encodes c in version v (1 or 2): tests use 1 to make
// files of the version before.
func (c *contents) marshalVersion(v int) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.id.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("keystore: encode identity key: %v", err)
	}
	return c.appendRest(appendStr(appendStr(nil, []byte(c.id.JID())), der), v), nil
}

// appendRest appends everything after the identity, in version v (1 or
// 2).
func (c *contents) appendRest(b []byte, v int) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.contacts)))
	for _, e := range c.contacts {
		b = appendStr(b, []byte(e.contact))
		b = appendStr(b, e.key.Bytes())
		b = append(b, e.peer[:]...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.checkpoints)))
	for _, p := range c.checkpoints {
		b = appendStr(b, []byte(p.origin))
		b = appendStr(b, p.signed)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.keys)))
	for _, p := range c.keys {
		b = appendStr(b, []byte(p.jid))
		b = append(b, p.Fingerprint[:]...)
		flags := byte(0)
		if p.Ended {
			flags = 1
		}
		b = append(b, flags)
		b = binary.BigEndian.AppendUint64(b, uint64(p.Version))
	}
	if v < 2 {
		return b
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.trust)))
	for _, t := range c.trust {
		b = appendStr(b, []byte(t.jid))
		b = append(b, byte(t.State))
		b = append(b, t.Key[:]...)
		b = append(b, t.New[:]...)
		flags := byte(0)
		if t.WasVerified {
			flags = 1
		}
		b = append(b, flags)
		for _, n := range []int64{t.OldVersion, t.NewVersion, t.NewIndex, t.NewTime, t.EndIndex} {
			b = binary.BigEndian.AppendUint64(b, uint64(n))
		}
		b = appendStr(b, []byte(t.EndKind))
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.alarms)))
	for _, a := range c.alarms {
		b = append(b, byte(a.Kind))
		b = binary.BigEndian.AppendUint64(b, uint64(a.Time))
		b = appendStr(b, []byte(a.JID))
		b = appendStr(b, []byte(a.Text))
		b = appendStr(b, a.Evidence[0])
		b = appendStr(b, a.Evidence[1])
	}
	return binary.BigEndian.AppendUint64(b, uint64(c.ownSeen))
}

// rawContents is contents with the identity not parsed yet.
type rawContents struct {
	jid, der []byte
	contacts []contactEntry
	pins
}

// decodeContents decodes the framing of the contents of a file of version
// v and checks them: bare JIDs, valid keys, pins sorted and unique,
// nothing left over. It is cheap; the identity key is parsed by
// parseContents.
func decodeContents(b []byte, v int) (*rawContents, error) {
	var r rawContents
	var ok bool
	if r.jid, b, ok = readStr(b, envelopexml.MaxJIDLen); !ok {
		return nil, fmt.Errorf("%w: identity JID", ErrCorrupt)
	}
	if r.der, b, ok = readStr(b, maxKeyDER); !ok {
		return nil, fmt.Errorf("%w: identity key", ErrCorrupt)
	}
	n, b, ok := readCount(b, maxContactKeys, 4+1+4+envelope.ContactKeySize)
	if !ok {
		return nil, fmt.Errorf("%w: contact count", ErrCorrupt)
	}
	r.contacts = make([]contactEntry, 0, n)
	for range n {
		var contact, key []byte
		if contact, b, ok = readStr(b, envelopexml.MaxJIDLen); !ok {
			return nil, fmt.Errorf("%w: contact JID", ErrCorrupt)
		}
		if err := envelopexml.CheckJID(string(contact)); err != nil {
			return nil, fmt.Errorf("%w: contact JID: %w", ErrCorrupt, err)
		}
		if key, b, ok = readStr(b, envelope.ContactKeySize); !ok {
			return nil, fmt.Errorf("%w: contact key", ErrCorrupt)
		}
		ck, err := envelope.ParseContactKey(key)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		sk := SharedKey{Key: ck}
		if v >= 1 {
			if len(b) < 32 {
				return nil, fmt.Errorf("%w: contact key's peer", ErrCorrupt)
			}
			sk.PeerKey = [32]byte(b[:32])
			b = b[32:]
		}
		r.contacts = append(r.contacts, newEntry(string(contact), sk))
	}
	if v == 0 {
		if len(b) != 0 {
			return nil, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(b))
		}
		return &r, nil
	}
	if n, b, ok = readCount(b, maxCheckpoints, 8); !ok {
		return nil, fmt.Errorf("%w: checkpoint count", ErrCorrupt)
	}
	for range n {
		var origin, signed []byte
		if origin, b, ok = readStr(b, maxOrigin); !ok || len(origin) == 0 {
			return nil, fmt.Errorf("%w: checkpoint origin", ErrCorrupt)
		}
		if signed, b, ok = readStr(b, maxCheckpoint); !ok || len(signed) == 0 {
			return nil, fmt.Errorf("%w: checkpoint", ErrCorrupt)
		}
		if k := len(r.checkpoints); k > 0 && r.checkpoints[k-1].origin >= string(origin) {
			return nil, fmt.Errorf("%w: checkpoints out of order", ErrCorrupt)
		}
		r.checkpoints = append(r.checkpoints, checkpointPin{origin: string(origin), signed: signed})
	}
	if n, b, ok = readCount(b, maxKeyPins, 4+1+32+1+8); !ok {
		return nil, fmt.Errorf("%w: key pin count", ErrCorrupt)
	}
	r.keys = make([]keyPin, 0, n)
	for range n {
		var j []byte
		if j, b, ok = readStr(b, envelopexml.MaxJIDLen); !ok {
			return nil, fmt.Errorf("%w: key pin JID", ErrCorrupt)
		}
		if err := envelopexml.CheckJID(string(j)); err != nil {
			return nil, fmt.Errorf("%w: key pin JID: %w", ErrCorrupt, err)
		}
		if len(b) < 32+1+8 {
			return nil, fmt.Errorf("%w: key pin", ErrCorrupt)
		}
		p := keyPin{jid: string(j), KeyPin: KeyPin{Fingerprint: [32]byte(b[:32]), Ended: b[32] == 1, Version: int64(binary.BigEndian.Uint64(b[33:41]))}}
		if b[32] > 1 || p.Version < 0 {
			return nil, fmt.Errorf("%w: key pin flags or version", ErrCorrupt)
		}
		b = b[41:]
		if k := len(r.keys); k > 0 && r.keys[k-1].jid >= p.jid {
			return nil, fmt.Errorf("%w: key pins out of order", ErrCorrupt)
		}
		r.keys = append(r.keys, p)
	}
	if v >= 2 {
		var err error
		if b, err = r.decodeV2(b); err != nil {
			return nil, err
		}
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(b))
	}
	return &r, nil
}

// decodeV2 decodes what version 2 adds: trust records, alarms, the own
// history reviewed.
func (r *rawContents) decodeV2(b []byte) ([]byte, error) {
	n, b, ok := readCount(b, maxTrust, 4+1+1+32+32+1+5*8+4)
	if !ok {
		return nil, fmt.Errorf("%w: trust count", ErrCorrupt)
	}
	r.trust = make([]trustEntry, 0, n)
	for range n {
		var j, kind []byte
		if j, b, ok = readStr(b, envelopexml.MaxJIDLen); !ok {
			return nil, fmt.Errorf("%w: trust JID", ErrCorrupt)
		}
		if err := envelopexml.CheckJID(string(j)); err != nil {
			return nil, fmt.Errorf("%w: trust JID: %w", ErrCorrupt, err)
		}
		if len(b) < 1+32+32+1+5*8 {
			return nil, fmt.Errorf("%w: trust record", ErrCorrupt)
		}
		t := trustEntry{jid: string(j), Trust: Trust{State: TrustState(b[0]), Key: [32]byte(b[1:33]), New: [32]byte(b[33:65]), WasVerified: b[65] == 1}}
		if t.State < TrustUnverified || t.State > TrustChanged || b[65] > 1 {
			return nil, fmt.Errorf("%w: trust state or flags", ErrCorrupt)
		}
		b = b[66:]
		for _, p := range []*int64{&t.OldVersion, &t.NewVersion, &t.NewIndex, &t.NewTime, &t.EndIndex} {
			*p = int64(binary.BigEndian.Uint64(b))
			b = b[8:]
			if *p < 0 {
				return nil, fmt.Errorf("%w: trust record number", ErrCorrupt)
			}
		}
		if kind, b, ok = readStr(b, maxEndKind); !ok {
			return nil, fmt.Errorf("%w: trust end kind", ErrCorrupt)
		}
		t.EndKind = string(kind)
		if k := len(r.trust); k > 0 && r.trust[k-1].jid >= t.jid {
			return nil, fmt.Errorf("%w: trust records out of order", ErrCorrupt)
		}
		r.trust = append(r.trust, t)
	}
	if n, b, ok = readCount(b, maxAlarms, 1+8+4+4+4+4); !ok {
		return nil, fmt.Errorf("%w: alarm count", ErrCorrupt)
	}
	for range n {
		if len(b) < 9 {
			return nil, fmt.Errorf("%w: alarm", ErrCorrupt)
		}
		a := Alarm{Kind: AlarmKind(b[0]), Time: int64(binary.BigEndian.Uint64(b[1:9]))}
		if a.Kind < AlarmOwnKey || a.Kind > AlarmRollback || a.Time < 0 {
			return nil, fmt.Errorf("%w: alarm kind or time", ErrCorrupt)
		}
		b = b[9:]
		var j, text []byte
		if j, b, ok = readStr(b, envelopexml.MaxJIDLen); !ok {
			return nil, fmt.Errorf("%w: alarm JID", ErrCorrupt)
		}
		if text, b, ok = readStr(b, maxAlarmText); !ok {
			return nil, fmt.Errorf("%w: alarm text", ErrCorrupt)
		}
		a.JID, a.Text = string(j), string(text)
		for i := range a.Evidence {
			if a.Evidence[i], b, ok = readStr(b, maxCheckpoint); !ok {
				return nil, fmt.Errorf("%w: alarm evidence", ErrCorrupt)
			}
		}
		r.alarms = append(r.alarms, a)
	}
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: own history", ErrCorrupt)
	}
	if r.ownSeen = int64(binary.BigEndian.Uint64(b)); r.ownSeen < 0 {
		return nil, fmt.Errorf("%w: own history", ErrCorrupt)
	}
	return b[8:], nil
}

// parseContents decodes the contents of a file of version v and checks
// them: decodeContents, then a valid identity.
func parseContents(b []byte, v int) (*contents, error) {
	r, err := decodeContents(b, v)
	if err != nil {
		return nil, err
	}
	if err := checkKeySizes(r.der); err != nil {
		return nil, fmt.Errorf("%w: identity key: %v", ErrCorrupt, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(r.der)
	if err != nil {
		return nil, fmt.Errorf("%w: identity key: %v", ErrCorrupt, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: identity key is not RSA", ErrCorrupt)
	}
	id, err := envelope.NewIdentity(string(r.jid), rk)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return &contents{id: id, contacts: r.contacts, pins: r.pins}, nil
}

// checkKeySizes bounds the numbers of a PKCS #8 RSA private key before
// crypto/x509 checks it: the checks are constant-time and cost the cube of a
// prime's size, so a prime of tens of thousands of bits would take minutes.
func checkKeySizes(der []byte) error {
	var p8 struct {
		Version    int
		Algo       pkix.AlgorithmIdentifier
		PrivateKey []byte
		Attributes asn1.RawValue `asn1:"optional,tag:0"`
	}
	if rest, err := asn1.Unmarshal(der, &p8); err != nil || len(rest) != 0 {
		return errors.New("malformed PKCS #8")
	}
	var p1 struct {
		Version                     int
		N, E, D, P, Q, Dp, Dq, Qinv *big.Int
		AdditionalPrimes            []asn1.RawValue `asn1:"optional,omitempty"`
	}
	if rest, err := asn1.Unmarshal(p8.PrivateKey, &p1); err != nil || len(rest) != 0 {
		return errors.New("malformed PKCS #1")
	}
	n := p1.N.BitLen()
	if n < envelope.MinKeyBits || n > envelope.MaxKeyBits || p1.E.BitLen() > 32 || len(p1.AdditionalPrimes) != 0 {
		return fmt.Errorf("RSA key of %d bits, exponent of %d bits, %d extra primes", n, p1.E.BitLen(), len(p1.AdditionalPrimes))
	}
	for _, x := range []*big.Int{p1.D, p1.P, p1.Q, p1.Dp, p1.Dq, p1.Qinv} {
		if x.BitLen() > n {
			return errors.New("RSA key number larger than its modulus")
		}
	}
	return nil
}

func appendStr(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// readStr reads a str of at most max bytes from b.
func readStr(b []byte, max int) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(max) || uint64(n) > uint64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}

// readCount reads a u32 count of at most max items, each at least min
// bytes long, that the rest of b can hold.
func readCount(b []byte, max, min int) (n uint32, rest []byte, ok bool) {
	if len(b) < 4 {
		return 0, nil, false
	}
	n = binary.BigEndian.Uint32(b)
	b = b[4:]
	if uint64(n) > uint64(max) || uint64(n)*uint64(min) > uint64(len(b)) {
		return 0, nil, false
	}
	return n, b, true
}
