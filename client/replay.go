package client

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"
)

// The replay cache: docs/envelope.md, section 9, "Replays and expiry".
//
// A signature says who wrote an envelope, not that it is new. The device
// remembers the (from, id) of every envelope it accepted, for as long as
// it would accept that envelope at all, and refuses what it has seen:
//
//   - An envelope is accepted only if its signed time is within
//     [now − ReplayWindow − ClockSkew, now + ClockSkew] by the device's
//     clock. An entry is forgotten once its time falls out of that window,
//     and a replay of it is refused then by its time, which it cannot
//     change without breaking the signature: ErrTooOld.
//   - The cache is bounded: replayMaxPerSender entries for one author and
//     replayMaxEntries in all. Past a bound the oldest eighth (by signed
//     time) of that author's entries, or of all, is forgotten, and the
//     lower edge of the window is raised past them (for that author, or for
//     all), so that what is forgotten is refused as too old, never accepted
//     again. One author filling the cache with valid envelopes moves only
//     its own edge.
//   - The lower edge never goes back, even when the clock does: it is kept
//     in the file.
//
// The file, beside the key store, is a journal: a header line, then
// fixed-size records, each with a CRC-32C; an accepted envelope appends
// one record and syncs it before the message is shown, so a crash cannot
// make the device forget a message it showed. It is rewritten (atomically:
// temporary file, sync, rename, sync of the directory) when it holds twice
// the records it needs. Authors and ids are stored as 16-byte SHA-256
// hashes, which keeps the records small and lists no message id; they do
// not hide who wrote to the user from someone who can read the file and
// guess JIDs, as the pin file does not either. One process at a time may
// use a replay cache file, as a key store file.
//
//	file   = "clinkme replay v0\n" || record*
//	record = kind || body || u32(CRC-32C of kind || body)
//	kind 'f': i64(floor)                              13 bytes: no envelope older than floor
//	kind 's': author[16] || i64(floor)                29 bytes: none of this author older
//	kind 'e': author[16] || entry[16] || i64(time)    45 bytes: an accepted envelope
//	author = SHA-256("clinkme replay author v0\n" || from)[0:16]
//	entry  = SHA-256("clinkme replay entry v0\n" || str(from) || str(id))[0:16]
//
// Times are Unix seconds, big-endian, 0 ≤ t < 2^40. Reading replays the
// records in order; a record cut short at the end of the file, or the
// last one with a bad CRC, is what a crash while appending leaves, and is
// dropped; anything else wrong is ErrReplayCache.
const (
	// ClockSkew is how far the device's clock and its senders' clocks may
	// differ: an envelope dated up to ClockSkew ahead of the device's clock
	// is accepted, and a timed one up to ClockSkew after its expiry. Five
	// minutes is the customary allowance (Kerberos, RFC 4120 section 1.7)
	// and covers a phone whose clock has not been set from the network for
	// months; a clock off by more is wrong enough to show the user. It is
	// also how long past its expiry a server that kept a timed message can
	// still hand it over; the app deletes it at Message.Expires anyway.
	ClockSkew = 5 * time.Minute
	// ReplayWindow is how old (by its signed time) an envelope may be when
	// it arrives, and so how long the device remembers it. It covers a
	// timed message's whole validity (clinkd's default maximum is 7 days)
	// and an ordinary message that waited in the server's offline store
	// while the device was off for up to a month; receipts of ordinary
	// messages are kept at clinkd for 30 days too (docs/receipts.md). An
	// older envelope is refused as ErrTooOld, reported, never shown.
	ReplayWindow = 30 * 24 * time.Hour

	// At 65,536 entries the file is about 3 MB and the memory about 8 MB.
	replayMaxEntries   = 1 << 16
	replayMaxPerSender = 1 << 13
	replayFloorStep    = int64(time.Hour / time.Second) // the clock's floor is written at most hourly
	replayMaxFile      = 16 << 20
	replayMaxTime      = int64(1) << 40
)

// Errors of the replay cache and of the device clock's checks.
var (
	// ErrReplay: an envelope with this from and id was accepted before.
	ErrReplay = errors.New("client: envelope already accepted (a replay)")
	// ErrTooOld: the envelope's signed time is older than this device
	// remembers, so it cannot tell whether it is a replay.
	ErrTooOld = errors.New("client: envelope older than the replay window")
	// ErrFromFuture: the envelope's signed time is later than the device's
	// clock by more than ClockSkew.
	ErrFromFuture = errors.New("client: envelope dated later than the device's clock allows")
	// ErrExpired: the envelope's expiry passed, by the device's clock, more
	// than ClockSkew ago.
	ErrExpired = errors.New("client: envelope expired")
	// ErrReplayCache: the replay cache file is damaged or of an unknown
	// version. Removing it makes the device accept again, once, envelopes
	// it accepted in the last ReplayWindow.
	ErrReplayCache = errors.New("client: replay cache file is not valid")
)

const replayMagic = "clinkme replay v0\n"

const (
	recFloor       = 'f'
	recSenderFloor = 's'
	recEntry       = 'e'
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func recordSize(kind byte) int {
	switch kind {
	case recFloor:
		return 1 + 8 + 4
	case recSenderFloor:
		return 1 + 16 + 8 + 4
	case recEntry:
		return 1 + 16 + 16 + 8 + 4
	}
	return 0
}

type hash16 = [16]byte

func authorHash(from string) hash16 {
	h := sha256.Sum256([]byte("clinkme replay author v0\n" + from))
	return hash16(h[:16])
}

func entryHash(from, id string) hash16 {
	b := []byte("clinkme replay entry v0\n")
	b = binary.BigEndian.AppendUint32(b, uint32(len(from)))
	b = append(b, from...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(id)))
	b = append(b, id...)
	h := sha256.Sum256(b)
	return hash16(h[:16])
}

// replayState is what the file describes. Its methods keep the bounds: no
// entry below a floor, at most replayMaxPerSender per author and
// replayMaxEntries in all. Each method that changes a floor returns the
// records that say so, for the journal.
type replayState struct {
	floor   int64 // no envelope older, for any author
	authors map[hash16]*replayAuthor
	n       int // entries in all
}

type replayAuthor struct {
	floor int64 // no envelope of this author older; only kept above the global floor
	ids   map[hash16]int64
}

func newReplayState() *replayState { return &replayState{authors: map[hash16]*replayAuthor{}} }

// check refuses an envelope of author a with entry e and time t that
// must not be accepted: older than a floor (ErrTooOld), or seen.
func (s *replayState) check(a, e hash16, t int64) error {
	if t < s.floor {
		return ErrTooOld
	}
	if au := s.authors[a]; au != nil {
		if t < au.floor {
			return ErrTooOld
		}
		if _, ok := au.ids[e]; ok {
			return ErrReplay
		}
	}
	return nil
}

// add records an entry that check accepted, then restores the bounds.
func (s *replayState) add(a, e hash16, t int64) (journal []byte) {
	au := s.authors[a]
	if au == nil {
		au = &replayAuthor{floor: s.floor, ids: map[hash16]int64{}}
		s.authors[a] = au
	}
	au.ids[e] = t
	s.n++
	if len(au.ids) > replayMaxPerSender {
		f := cutFloor(slices.Collect(mapValues(au.ids)), replayMaxPerSender/8)
		s.raiseAuthorFloor(a, f)
		journal = appendRecord(journal, recSenderFloor, a[:], be64(f))
	}
	if s.n > replayMaxEntries {
		var ts []int64
		for _, au := range s.authors {
			ts = slices.AppendSeq(ts, mapValues(au.ids))
		}
		f := cutFloor(ts, replayMaxEntries/8)
		s.raiseFloor(f)
		journal = appendRecord(journal, recFloor, be64(f))
	}
	return journal
}

// cutFloor returns the floor that forgets at least k of the times ts
// (the oldest): one second past the k-th oldest.
func cutFloor(ts []int64, k int) int64 {
	slices.Sort(ts)
	return ts[k-1] + 1
}

func mapValues(m map[hash16]int64) func(func(int64) bool) {
	return func(yield func(int64) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// raiseFloor forgets every entry older than f, and the authors' floors it
// makes redundant. A lower f changes nothing.
func (s *replayState) raiseFloor(f int64) {
	if f <= s.floor {
		return
	}
	s.floor = f
	for a, au := range s.authors {
		for e, t := range au.ids {
			if t < f {
				delete(au.ids, e)
				s.n--
			}
		}
		if au.floor < f {
			au.floor = f
		}
		if len(au.ids) == 0 && au.floor <= s.floor {
			delete(s.authors, a)
		}
	}
}

// raiseAuthorFloor forgets every entry of author a older than f.
func (s *replayState) raiseAuthorFloor(a hash16, f int64) {
	if f <= s.floor {
		return
	}
	au := s.authors[a]
	if au == nil {
		au = &replayAuthor{floor: s.floor, ids: map[hash16]int64{}}
		s.authors[a] = au
	}
	if f <= au.floor {
		return
	}
	au.floor = f
	for e, t := range au.ids {
		if t < f {
			delete(au.ids, e)
			s.n--
		}
	}
}

// marshal writes the state as a compact file: the global floor, the
// authors' floors above it, the entries; sorted, so equal states give
// equal files.
func (s *replayState) marshal() ([]byte, int) {
	b := []byte(replayMagic)
	b = appendRecord(b, recFloor, be64(s.floor))
	records := 1
	as := slices.SortedFunc(func(yield func(hash16) bool) {
		for a := range s.authors {
			if !yield(a) {
				return
			}
		}
	}, func(x, y hash16) int { return bytes.Compare(x[:], y[:]) })
	for _, a := range as {
		au := s.authors[a]
		if au.floor > s.floor {
			b = appendRecord(b, recSenderFloor, a[:], be64(au.floor))
			records++
		}
		es := make([]hash16, 0, len(au.ids))
		for e := range au.ids {
			es = append(es, e)
		}
		slices.SortFunc(es, func(x, y hash16) int { return bytes.Compare(x[:], y[:]) })
		for _, e := range es {
			b = appendRecord(b, recEntry, a[:], e[:], be64(au.ids[e]))
			records++
		}
	}
	return b, records
}

func be64(t int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(t)) }

func appendRecord(b []byte, kind byte, fields ...[]byte) []byte {
	start := len(b)
	b = append(b, kind)
	for _, f := range fields {
		b = append(b, f...)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// parseReplayFile reads a replay cache file. It returns the state, the
// number of records read, and the length of the part of data that holds
// them: less than len(data) when a torn last record was dropped.
func parseReplayFile(data []byte) (st *replayState, records, valid int, err error) {
	if len(data) > replayMaxFile {
		return nil, 0, 0, fmt.Errorf("%w: larger than %d bytes", ErrReplayCache, replayMaxFile)
	}
	if !bytes.HasPrefix(data, []byte(replayMagic)) {
		if bytes.HasPrefix(data, []byte("clinkme replay v")) {
			return nil, 0, 0, fmt.Errorf("%w: unsupported version", ErrReplayCache)
		}
		return nil, 0, 0, fmt.Errorf("%w: no header", ErrReplayCache)
	}
	st = newReplayState()
	off := len(replayMagic)
	for off < len(data) {
		kind := data[off]
		size := recordSize(kind)
		if size == 0 {
			if kind == 0 && !slices.ContainsFunc(data[off:], func(c byte) bool { return c != 0 }) {
				break // a zero-filled tail: a crash while the file grew
			}
			return nil, 0, 0, fmt.Errorf("%w: unknown record %#x at byte %d", ErrReplayCache, kind, off)
		}
		if off+size > len(data) {
			break // cut short by a crash
		}
		rec := data[off : off+size]
		if crc32.Checksum(rec[:size-4], castagnoli) != binary.BigEndian.Uint32(rec[size-4:]) {
			if off+size == len(data) {
				break // the last record, torn
			}
			return nil, 0, 0, fmt.Errorf("%w: bad checksum at byte %d", ErrReplayCache, off)
		}
		t := int64(binary.BigEndian.Uint64(rec[size-12 : size-4]))
		if t < 0 || t >= replayMaxTime {
			return nil, 0, 0, fmt.Errorf("%w: time out of range at byte %d", ErrReplayCache, off)
		}
		switch kind {
		case recFloor:
			st.raiseFloor(t)
		case recSenderFloor:
			st.raiseAuthorFloor(hash16(rec[1:17]), t)
		case recEntry:
			a, e := hash16(rec[1:17]), hash16(rec[17:33])
			if st.check(a, e, t) == nil {
				st.add(a, e, t)
			}
		}
		records++
		off += size
	}
	return st, records, off, nil
}

// replayCache is the device's replay cache: the state and its file.
type replayCache struct {
	path string

	mu      sync.Mutex
	st      *replayState
	records int  // in the file
	dirty   bool // the file may not hold st (a failed write): rewrite it
}

// openReplayCache opens the cache file at path, or starts one.
func openReplayCache(path string, now time.Time) (*replayCache, error) {
	c := &replayCache{path: path, st: newReplayState()}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.dirty = true
	case err != nil:
		return nil, fmt.Errorf("client: replay cache: %w", err)
	default:
		st, records, valid, err := parseReplayFile(data)
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, path)
		}
		c.st, c.records = st, records
		c.dirty = valid < len(data) // drop the torn tail
	}
	c.st.raiseFloor(c.clockFloor(now))
	if c.dirty || c.records > 2*(c.st.n+len(c.st.authors))+1024 {
		if err := c.compact(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// clockFloor is the lower edge of the window by the clock.
func (c *replayCache) clockFloor(now time.Time) int64 {
	return max(0, now.Add(-ReplayWindow-ClockSkew).Unix())
}

// check returns the error for an envelope of from with id and the signed
// time t that the device must refuse now, without recording anything:
// ErrTooOld, ErrFromFuture or ErrReplay.
func (c *replayCache) check(from, id string, t, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkLocked(from, id, t, now)
}

func (c *replayCache) checkLocked(from, id string, t, now time.Time) error {
	ts := t.Unix()
	if ts < c.clockFloor(now) {
		return ErrTooOld
	}
	if t.After(now.Add(ClockSkew)) {
		return ErrFromFuture
	}
	return c.st.check(authorHash(from), entryHash(from, id), ts)
}

// record checks an envelope as check does and, if it passes, records it
// and writes it to the file before it returns. Two concurrent calls for
// one envelope: one records it, the other gets ErrReplay. If the file
// cannot be written the envelope is not recorded, and the error says so.
func (c *replayCache) record(from, id string, t, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked(from, id, t, now); err != nil {
		return err
	}
	var journal []byte
	if f := c.clockFloor(now); f >= c.st.floor+replayFloorStep {
		c.st.raiseFloor(f)
		journal = appendRecord(journal, recFloor, be64(f))
	}
	a, e, ts := authorHash(from), entryHash(from, id), t.Unix()
	journal = appendRecord(journal, recEntry, a[:], e[:], be64(ts))
	journal = append(journal, c.st.add(a, e, ts)...)
	var err error
	if c.dirty || c.records > 2*(c.st.n+len(c.st.authors))+1024 {
		err = c.compact()
	} else if err = c.append(journal); err == nil {
		for off := 0; off < len(journal); off += recordSize(journal[off]) {
			c.records++
		}
	}
	if err != nil {
		// Not on disk, so not accepted: forget it (what the bounds
		// forgot on the way stays forgotten, which only refuses more),
		// and rewrite the whole file at the next chance.
		if au := c.st.authors[a]; au != nil {
			if _, ok := au.ids[e]; ok {
				delete(au.ids, e)
				c.st.n--
			}
		}
		c.dirty = true
	}
	return err
}

// append adds records to the file and syncs it. On an error it cuts the
// file back to where it was, so no torn record is followed by others.
func (c *replayCache) append(journal []byte) error {
	f, err := os.OpenFile(c.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("client: replay cache: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("client: replay cache: %w", err)
	}
	if _, err := f.Write(journal); err != nil {
		f.Truncate(fi.Size())
		return fmt.Errorf("client: replay cache: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Truncate(fi.Size())
		return fmt.Errorf("client: replay cache: %w", err)
	}
	return nil
}

// compact rewrites the file from the state, atomically.
func (c *replayCache) compact() error {
	data, records := c.st.marshal()
	if err := writeFileAtomic(c.path, data); err != nil {
		c.dirty = true
		return fmt.Errorf("client: replay cache: %w", err)
	}
	c.records, c.dirty = records, false
	return nil
}

// writeFileAtomic replaces path with data, mode 0600: a temporary file in
// the same directory, synced, renamed over path, then the directory
// synced, so that a crash leaves the old file or the new one.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if runtime.GOOS == "windows" {
		return nil // Go cannot sync a directory on Windows
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
