package keylog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"
)

// TileHeight is the height of every tile, as C2SP tlog-tiles fixes it: a
// full tile holds 256 hashes or 256 entries.
const TileHeight = 8

// TileWidth is the number of hashes in a full tile.
const TileWidth = 1 << TileHeight

// EntriesLevel is the tlog.Tile level that stands for an entry bundle
// (tlog uses -1 for its data tiles).
const EntriesLevel = -1

// TilePath returns the C2SP tlog-tiles path of t, without a leading slash:
// tile/<L>/<N>[.p/<W>] for hashes, tile/entries/<N>[.p/<W>] for entry
// bundles (t.L == EntriesLevel). N is written in groups of three digits,
// every group but the last prefixed with x: 1234067 is x001/x234/067.
// x/mod's Tile.Path puts the height in the path (the sumdb layout), which
// C2SP does not, hence this function.
func TilePath(t tlog.Tile) string {
	var b strings.Builder
	b.WriteString("tile/")
	if t.L == EntriesLevel {
		b.WriteString("entries")
	} else {
		b.WriteString(strconv.Itoa(t.L))
	}
	b.WriteByte('/')
	b.WriteString(encodeTileIndex(t.N))
	if t.W != TileWidth {
		b.WriteString(".p/")
		b.WriteString(strconv.Itoa(t.W))
	}
	return b.String()
}

func encodeTileIndex(n int64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	return s
}

// ErrBadTilePath is wrapped by every ParseTilePath error.
var ErrBadTilePath = errors.New("keylog: not a tile path")

// ParseTilePath parses a path made by TilePath (no leading slash) into a
// tile of height TileHeight. Only the canonical spelling is accepted, so a
// tile has one URL (and one cache entry).
func ParseTilePath(p string) (tlog.Tile, error) {
	bad := func() (tlog.Tile, error) { return tlog.Tile{}, fmt.Errorf("%w: %q", ErrBadTilePath, p) }
	if len(p) > 128 {
		return bad()
	}
	rest, ok := strings.CutPrefix(p, "tile/")
	if !ok {
		return bad()
	}
	lvl, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return bad()
	}
	t := tlog.Tile{H: TileHeight, W: TileWidth}
	if lvl == "entries" {
		t.L = EntriesLevel
	} else {
		l, err := strconv.Atoi(lvl)
		// Level 7 tiles already span 2^64 leaves.
		if err != nil || l < 0 || l > 7 || strconv.Itoa(l) != lvl {
			return bad()
		}
		t.L = l
	}
	if nPart, w, ok := strings.Cut(rest, ".p/"); ok {
		wi, err := strconv.Atoi(w)
		if err != nil || wi < 1 || wi >= TileWidth || strconv.Itoa(wi) != w {
			return bad()
		}
		t.W, rest = wi, nPart
	}
	elems := strings.Split(rest, "/")
	if len(elems) > 7 {
		return bad()
	}
	var n int64
	for i, e := range elems {
		if i < len(elems)-1 {
			var ok bool
			if e, ok = strings.CutPrefix(e, "x"); !ok {
				return bad()
			}
		}
		if len(e) != 3 {
			return bad()
		}
		d, err := strconv.Atoi(e)
		if err != nil || d < 0 || strconv.Itoa(d + 1000)[1:] != e {
			return bad()
		}
		if n > (1<<62)/1000 {
			return bad()
		}
		n = n*1000 + int64(d)
	}
	t.N = n
	if TilePath(t) != p { // leading x000 groups and the like
		return bad()
	}
	return t, nil
}

// MaxEntrySize bounds one entry of a bundle: the larger of the v0 and v1
// record bounds.
const MaxEntrySize = MaxRecordSizeV1

// AppendEntryBundle appends entries in the C2SP entry-bundle encoding:
// each entry prefixed by its length as a big-endian uint16.
func AppendEntryBundle(b []byte, entries ...[]byte) []byte {
	for _, e := range entries {
		if len(e) > 0xffff {
			panic("keylog: entry longer than 65535 bytes") // records are bounded by MaxRecordSize
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(e)))
		b = append(b, e...)
	}
	return b
}

// ErrBadBundle is wrapped by every ParseEntryBundle error.
var ErrBadBundle = errors.New("keylog: malformed entry bundle")

// ParseEntryBundle splits a bundle into its entries. It wants exactly
// want entries (the tile's width), each at most MaxEntrySize bytes, and
// no trailing bytes. The entries alias data.
func ParseEntryBundle(data []byte, want int) ([][]byte, error) {
	if want < 1 || want > TileWidth {
		return nil, fmt.Errorf("%w: want %d entries", ErrBadBundle, want)
	}
	out := make([][]byte, 0, want)
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, fmt.Errorf("%w: truncated length", ErrBadBundle)
		}
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		if n > MaxEntrySize || n > len(data) {
			return nil, fmt.Errorf("%w: entry of %d bytes", ErrBadBundle, n)
		}
		if len(out) == want {
			return nil, fmt.Errorf("%w: more than %d entries", ErrBadBundle, want)
		}
		out = append(out, data[:n:n])
		data = data[n:]
	}
	if len(out) != want {
		return nil, fmt.Errorf("%w: %d entries, want %d", ErrBadBundle, len(out), want)
	}
	return out, nil
}
