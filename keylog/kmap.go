package keylog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// The key directory's map (docs/protocol.md, "The map"): a compact binary
// prefix tree from 256-bit indices (a JID's VRF output) to the JID's
// current value. A subtree holding no index is MapEmpty, one holding one
// index is that index's leaf, one holding two or more is the node hash
// of its two halves. Every v1 log record commits to the map's root after
// it, so the map is a function of the log that auditors recompute.

// MapEmpty is the hash of a subtree that holds no index: 32 zero bytes,
// which no SHA-256 output is known to be.
var MapEmpty [32]byte

// MapValueSize is the size of a map value's encoding.
const MapValueSize = 49

// A MapValue is what the map holds for an index: whether a key is bound
// or the binding ended (a tombstone: leaves are never removed), the
// fingerprint of the key bound or ended, the log index of the entry that
// set the value, and the version, which counts every publish, reset and
// delete of the index from 1.
type MapValue struct {
	Ended       bool
	Fingerprint [32]byte
	Entry       int64 // log index, ≥ 0
	Version     int64 // ≥ 1
}

// Status bytes of a map value.
const (
	mapBound byte = 0x01
	mapEnded byte = 0x02
)

// Bytes returns the value's encoding: status (0x01 bound, 0x02 ended) ‖
// fingerprint ‖ uint64be(entry) ‖ uint64be(version).
func (v MapValue) Bytes() [MapValueSize]byte {
	var b [MapValueSize]byte
	b[0] = mapBound
	if v.Ended {
		b[0] = mapEnded
	}
	copy(b[1:33], v.Fingerprint[:])
	binary.BigEndian.PutUint64(b[33:41], uint64(v.Entry))
	binary.BigEndian.PutUint64(b[41:49], uint64(v.Version))
	return b
}

// ErrBadMapProof is wrapped by every error about a map proof's or map
// value's form, as opposed to ErrMapRoot (a well-formed proof that does
// not lead to the root).
var ErrBadMapProof = errors.New("keylog: malformed map proof")

// ErrMapRoot: the proof is well formed but does not rebuild the map root
// it is checked against: the stated value is not the index's value in
// that map (or, for an absence proof, the index is in it).
var ErrMapRoot = errors.New("keylog: map proof does not lead to the map root")

// ParseMapValue decodes a value's encoding.
func ParseMapValue(b []byte) (MapValue, error) {
	if len(b) != MapValueSize || (b[0] != mapBound && b[0] != mapEnded) {
		return MapValue{}, fmt.Errorf("%w: not a map value", ErrBadMapProof)
	}
	v := MapValue{Ended: b[0] == mapEnded, Entry: int64(binary.BigEndian.Uint64(b[33:41])), Version: int64(binary.BigEndian.Uint64(b[41:49]))}
	copy(v.Fingerprint[:], b[1:33])
	if v.Entry < 0 || v.Version < 1 {
		return MapValue{}, fmt.Errorf("%w: map value with entry %d, version %d", ErrBadMapProof, v.Entry, v.Version)
	}
	return v, nil
}

// MapLeaf is the hash of index's leaf: SHA-256(0x02 ‖ index ‖ value).
func MapLeaf(index [32]byte, v MapValue) [32]byte {
	var in [1 + 32 + MapValueSize]byte
	in[0] = 0x02
	copy(in[1:33], index[:])
	vb := v.Bytes()
	copy(in[33:], vb[:])
	return sha256.Sum256(in[:])
}

// MapNode is the hash of a subtree with two or more indices:
// SHA-256(0x03 ‖ left ‖ right).
func MapNode(l, r [32]byte) [32]byte {
	var in [65]byte
	in[0] = 0x03
	copy(in[1:33], l[:])
	copy(in[33:], r[:])
	return sha256.Sum256(in[:])
}

// bit returns bit d of x, most significant bit of byte 0 first.
func bit(x [32]byte, d int) int { return int(x[d/8]>>(7-d%8)) & 1 }

// Map proof types: how the search for an index ends.
const (
	MapProofFound = 1 // at the index's own leaf
	MapProofEmpty = 2 // at an empty subtree: the index is absent
	MapProofOther = 3 // at the leaf of another index sharing the path: absent
)

// MaxMapDepth is the deepest a leaf can be: two indices that differ only
// in their last bit part at depth 255, their leaves at 256.
const MaxMapDepth = 256

// A MapProof is the path from the root to where the search for an index
// ends: the siblings along it, root side first (Siblings[i] is the
// sibling at depth i+1), and for MapProofOther the leaf found there.
type MapProof struct {
	Type       int
	Siblings   [][32]byte
	Other      [32]byte // MapProofOther: the other index
	OtherValue MapValue // MapProofOther: its value
}

// Marshal encodes the proof (docs/protocol.md, "Map proofs"):
//
//	type (1 byte) ‖ depth (uint16be) ‖ a bitmap of ⌈depth/8⌉ bytes whose
//	bit i (most significant first) says sibling i is MapEmpty ‖ the
//	non-empty siblings, root side first ‖ for type 3, the other index
//	and its value.
func (p MapProof) Marshal() []byte {
	d := len(p.Siblings)
	b := make([]byte, 3, 3+(d+7)/8+32*d+32+MapValueSize)
	b[0] = byte(p.Type)
	binary.BigEndian.PutUint16(b[1:3], uint16(d))
	bm := make([]byte, (d+7)/8)
	for i, s := range p.Siblings {
		if s == MapEmpty {
			bm[i/8] |= 0x80 >> (i % 8)
		}
	}
	b = append(b, bm...)
	for _, s := range p.Siblings {
		if s != MapEmpty {
			b = append(b, s[:]...)
		}
	}
	if p.Type == MapProofOther {
		vb := p.OtherValue.Bytes()
		b = append(b, p.Other[:]...)
		b = append(b, vb[:]...)
	}
	return b
}

// ParseMapProof decodes a proof, accepting exactly what Marshal makes
// (and only depths up to MaxMapDepth, only types 1 to 3).
func ParseMapProof(b []byte) (MapProof, error) {
	bad := func(what string) (MapProof, error) { return MapProof{}, fmt.Errorf("%w: %s", ErrBadMapProof, what) }
	if len(b) < 3 {
		return bad("shorter than its header")
	}
	p := MapProof{Type: int(b[0])}
	if p.Type < MapProofFound || p.Type > MapProofOther {
		return bad("unknown type")
	}
	d := int(binary.BigEndian.Uint16(b[1:3]))
	if d > MaxMapDepth {
		return bad("deeper than 256")
	}
	rest := b[3:]
	nb := (d + 7) / 8
	if len(rest) < nb {
		return bad("truncated bitmap")
	}
	bm, rest := rest[:nb], rest[nb:]
	if d%8 != 0 && bm[nb-1]&(0xff>>(d%8)) != 0 {
		return bad("bitmap bits past the depth are set")
	}
	p.Siblings = make([][32]byte, d)
	for i := range d {
		if bm[i/8]&(0x80>>(i%8)) != 0 {
			continue // MapEmpty
		}
		if len(rest) < 32 {
			return bad("truncated siblings")
		}
		copy(p.Siblings[i][:], rest[:32])
		if p.Siblings[i] == MapEmpty {
			return bad("an empty sibling written out")
		}
		rest = rest[32:]
	}
	if p.Type == MapProofOther {
		if len(rest) != 32+MapValueSize {
			return bad("wrong length for the other leaf")
		}
		copy(p.Other[:], rest[:32])
		v, err := ParseMapValue(rest[32:])
		if err != nil {
			return MapProof{}, err
		}
		p.OtherValue = v
		rest = nil
	}
	if len(rest) != 0 {
		return bad("trailing bytes")
	}
	return p, nil
}

// Root returns the map root that the proof rebuilds for index: with v
// (MapProofFound: the index's value) or without it (the other types: the
// index is absent). It checks the proof's shape: the type matches
// whether v is given, the deepest sibling is not empty (a parent has keys
// on both sides), and another leaf shares the index's path but is not
// the index. A well-formed proof from another map, or for another value,
// returns a root; VerifyMap compares it.
func (p MapProof) Root(index [32]byte, v *MapValue) ([32]byte, error) {
	d := len(p.Siblings)
	if d > MaxMapDepth {
		return [32]byte{}, fmt.Errorf("%w: deeper than 256", ErrBadMapProof)
	}
	var t [32]byte
	switch p.Type {
	case MapProofFound:
		if v == nil {
			return [32]byte{}, fmt.Errorf("%w: a proof of presence for an absent value", ErrBadMapProof)
		}
		t = MapLeaf(index, *v)
	case MapProofEmpty, MapProofOther:
		if v != nil {
			return [32]byte{}, fmt.Errorf("%w: a proof of absence for a value", ErrBadMapProof)
		}
		if p.Type == MapProofOther {
			if p.Other == index || !samePrefix(p.Other, index, d) {
				return [32]byte{}, fmt.Errorf("%w: the other leaf is not on the index's path", ErrBadMapProof)
			}
			t = MapLeaf(p.Other, p.OtherValue)
		}
	default:
		return [32]byte{}, fmt.Errorf("%w: unknown type", ErrBadMapProof)
	}
	if d > 0 && p.Siblings[d-1] == MapEmpty {
		return [32]byte{}, fmt.Errorf("%w: the deepest sibling is empty", ErrBadMapProof)
	}
	return foldPath(index, p.Siblings, t), nil
}

// VerifyMap checks that p proves index's value in the map whose root is
// root: v for a present index, nil for an absent one. It returns nil, an
// error wrapping ErrBadMapProof (the proof's form) or ErrMapRoot (another
// map, or another value).
func VerifyMap(root, index [32]byte, v *MapValue, p MapProof) error {
	got, err := p.Root(index, v)
	if err != nil {
		return err
	}
	if got != root {
		return ErrMapRoot
	}
	return nil
}

// samePrefix reports whether a and b agree on their first d bits.
func samePrefix(a, b [32]byte, d int) bool {
	full := d / 8
	if !bytes.Equal(a[:full], b[:full]) {
		return false
	}
	if r := d % 8; r != 0 {
		mask := byte(0xff << (8 - r))
		return a[full]&mask == b[full]&mask
	}
	return true
}

// foldPath hashes t, the subtree at depth len(siblings) on index's path,
// up to the root.
func foldPath(index [32]byte, siblings [][32]byte, t [32]byte) [32]byte {
	for i := len(siblings) - 1; i >= 0; i-- {
		if bit(index, i) == 0 {
			t = MapNode(t, siblings[i])
		} else {
			t = MapNode(siblings[i], t)
		}
	}
	return t
}

// pairHash is the hash of the subtree at depth d that holds exactly two
// leaves, a (hash ha) and b (hash hb), whose indices agree on bits < d.
func pairHash(d int, a [32]byte, ha [32]byte, b [32]byte, hb [32]byte) [32]byte {
	if bit(a, d) != bit(b, d) {
		if bit(a, d) == 0 {
			return MapNode(ha, hb)
		}
		return MapNode(hb, ha)
	}
	below := pairHash(d+1, a, ha, b, hb)
	if bit(a, d) == 0 {
		return MapNode(below, MapEmpty)
	}
	return MapNode(MapEmpty, below)
}

// A Map is the key directory's map in memory: how the auditor recomputes
// it from the log and how the server proves lookups. The zero Map is
// empty. Set must not run concurrently with another method; the others
// may run concurrently with each other.
type Map struct {
	root *mapNode
	n    int
}

type mapNode struct {
	hash  [32]byte
	child [2]*mapNode // nil: an empty subtree; both nil in a leaf
	leaf  *mapLeaf    // non-nil for a leaf
}

type mapLeaf struct {
	index [32]byte
	value MapValue
}

func (n *mapNode) sum() [32]byte {
	if n == nil {
		return MapEmpty
	}
	return n.hash
}

func newLeaf(x [32]byte, v MapValue) *mapNode {
	return &mapNode{hash: MapLeaf(x, v), leaf: &mapLeaf{index: x, value: v}}
}

func newParent(l, r *mapNode) *mapNode {
	n := &mapNode{child: [2]*mapNode{l, r}}
	n.hash = MapNode(l.sum(), r.sum())
	return n
}

// Len returns the number of indices in the map.
func (m *Map) Len() int { return m.n }

// Root returns the map's root hash (MapEmpty for the empty map).
func (m *Map) Root() [32]byte { return m.root.sum() }

// Get returns index's value.
func (m *Map) Get(index [32]byte) (MapValue, bool) {
	n := m.root
	for d := 0; n != nil; d++ {
		if n.leaf != nil {
			if n.leaf.index == index {
				return n.leaf.value, true
			}
			return MapValue{}, false
		}
		n = n.child[bit(index, d)]
	}
	return MapValue{}, false
}

// Set makes v the value of index.
func (m *Map) Set(index [32]byte, v MapValue) { m.root = m.set(m.root, 0, index, v) }

func (m *Map) set(n *mapNode, d int, x [32]byte, v MapValue) *mapNode {
	switch {
	case n == nil:
		m.n++
		return newLeaf(x, v)
	case n.leaf != nil && n.leaf.index == x:
		n.leaf.value = v
		n.hash = MapLeaf(x, v)
		return n
	case n.leaf != nil:
		m.n++
		return split(n, newLeaf(x, v), d)
	}
	b := bit(x, d)
	n.child[b] = m.set(n.child[b], d+1, x, v)
	n.hash = MapNode(n.child[0].sum(), n.child[1].sum())
	return n
}

// split returns the subtree at depth d holding the leaves a and b, whose
// indices differ but agree on bits < d.
func split(a, b *mapNode, d int) *mapNode {
	ba, bb := bit(a.leaf.index, d), bit(b.leaf.index, d)
	var c [2]*mapNode
	if ba == bb {
		c[ba] = split(a, b, d+1)
	} else {
		c[ba], c[bb] = a, b
	}
	return newParent(c[0], c[1])
}

// Prove returns the proof for index: its leaf, or where its absence
// shows.
func (m *Map) Prove(index [32]byte) MapProof {
	var p MapProof
	n := m.root
	for d := 0; ; d++ {
		switch {
		case n == nil:
			p.Type = MapProofEmpty
			return p
		case n.leaf != nil && n.leaf.index == index:
			p.Type = MapProofFound
			return p
		case n.leaf != nil:
			p.Type, p.Other, p.OtherValue = MapProofOther, n.leaf.index, n.leaf.value
			return p
		}
		b := bit(index, d)
		p.Siblings = append(p.Siblings, n.child[1-b].sum())
		n = n.child[b]
	}
}

// RootWith returns the root the map would have with v as index's value,
// without changing the map: what an appender commits to before the
// append is durable.
func (m *Map) RootWith(index [32]byte, v MapValue) [32]byte {
	p := m.Prove(index)
	leaf := MapLeaf(index, v)
	t := leaf
	if p.Type == MapProofOther {
		t = pairHash(len(p.Siblings), index, leaf, p.Other, MapLeaf(p.Other, p.OtherValue))
	}
	return foldPath(index, p.Siblings, t)
}

// A MapEntry is one index and its value.
type MapEntry struct {
	Index [32]byte
	Value MapValue
}

// BuildMap makes a map of entries at once (faster than one Set each: no
// hash is computed twice). Indices must be distinct.
func BuildMap(entries []MapEntry) (*Map, error) {
	e := slices.Clone(entries)
	slices.SortFunc(e, func(a, b MapEntry) int { return bytes.Compare(a.Index[:], b.Index[:]) })
	for i := 1; i < len(e); i++ {
		if e[i].Index == e[i-1].Index {
			return nil, fmt.Errorf("keylog: index %x twice in a map", e[i].Index)
		}
	}
	return &Map{root: build(e, 0), n: len(e)}, nil
}

// build makes the subtree at depth d of sorted entries that agree on
// their first d bits.
func build(e []MapEntry, d int) *mapNode {
	switch len(e) {
	case 0:
		return nil
	case 1:
		return newLeaf(e[0].Index, e[0].Value)
	}
	// The first entry whose bit d is 1.
	k, _ := slices.BinarySearchFunc(e, 1, func(x MapEntry, _ int) int { return bit(x.Index, d) - 1 })
	return newParent(build(e[:k], d+1), build(e[k:], d+1))
}
