package client

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

var replayNow = time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)

func openTestReplay(t *testing.T) (*replayCache, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.replay")
	c, err := openReplayCache(path, replayNow)
	if err != nil {
		t.Fatal(err)
	}
	return c, path
}

// TestReplayCacheRules: what the device accepts, by its clock and what it
// accepted before.
func TestReplayCacheRules(t *testing.T) {
	t.Parallel()
	const alice, bob = "alice@example.org", "bob@example.org"
	type step struct {
		from, id string
		time     time.Duration // signed time, from replayNow
		now      time.Duration // device clock, from replayNow
		check    bool          // only check, do not record
		want     error
		comment  string
	}
	for _, tt := range []struct {
		name  string
		steps []step
	}{
		{"a replay is refused", []step{
			{from: alice, id: "1", want: nil},
			{from: alice, id: "1", want: ErrReplay},
			{from: alice, id: "1", now: time.Hour, want: ErrReplay, comment: "an hour later"},
			{from: alice, id: "1", time: time.Second, want: ErrReplay, comment: "the same from and id whatever the time"},
			{from: bob, id: "1", want: nil, comment: "another author's id"},
			{from: alice, id: "2", want: nil},
		}},
		{"checking records nothing", []step{
			{from: alice, id: "1", check: true, want: nil},
			{from: alice, id: "1", check: true, want: nil},
			{from: alice, id: "1", want: nil},
			{from: alice, id: "1", check: true, want: ErrReplay},
		}},
		{"the window by the device's clock", []step{
			{from: alice, id: "edge", time: -ReplayWindow - ClockSkew, want: nil, comment: "the oldest accepted"},
			{from: alice, id: "old", time: -ReplayWindow - ClockSkew - time.Second, want: ErrTooOld},
			{from: alice, id: "skew", time: ClockSkew, want: nil, comment: "ahead by the skew"},
			{from: alice, id: "future", time: ClockSkew + time.Second, want: ErrFromFuture},
			{from: alice, id: "edge", time: -ReplayWindow - ClockSkew, now: time.Second, want: ErrTooOld, comment: "its entry is forgotten, and it is refused by its time"},
		}},
		{"the window never goes back", []step{
			{from: alice, id: "1", time: -ReplayWindow, want: nil},
			{from: alice, id: "2", now: 2 * time.Hour, want: nil, comment: "the clock's floor moves on (it is written hourly)"},
			{from: alice, id: "3", time: -ReplayWindow - time.Hour, now: -time.Hour, want: ErrTooOld, comment: "the clock went back: the floor did not"},
		}},
	} {
		c, _ := openTestReplay(t)
		for i, s := range tt.steps {
			f := c.record
			if s.check {
				f = c.check
			}
			if err := f(s.from, s.id, replayNow.Add(s.time), replayNow.Add(s.now)); !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
				t.Errorf("%s, step %d (%s): %s %s at %v, clock %v = %v, want %v", tt.name, i, s.comment, s.from, s.id, s.time, s.now, err, s.want)
			}
		}
	}
}

// TestReplayCacheFile: what was recorded survives reopening, also after
// a crash in the middle of an append; a damaged file is refused.
func TestReplayCacheFile(t *testing.T) {
	t.Parallel()
	const alice = "alice@example.org"
	c, path := openTestReplay(t)
	for i := range 10 {
		if err := c.record(alice, fmt.Sprint(i), replayNow, replayNow); err != nil {
			t.Fatal(err)
		}
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	entry := recordSize(recEntry)
	for _, tt := range []struct {
		name    string
		data    []byte
		err     error
		replays int // of the ids 0..9 refused as replays
	}{
		{"as written", good, nil, 10},
		{"the last append cut short", good[:len(good)-entry/2], nil, 9},
		{"the last record's checksum wrong", flip(good, len(good)-1), nil, 9},
		{"a zero-filled tail", append(bytes.Clone(good), make([]byte, 100)...), nil, 10},
		{"a record in the middle damaged", flip(good, len(replayMagic)+recordSize(recFloor)+3), ErrReplayCache, 0},
		{"an unknown record", append(bytes.Clone(good), 'x', 0, 0, 0), ErrReplayCache, 0},
		{"another version", []byte("clinkme replay v1\n"), ErrReplayCache, 0},
		{"not a replay cache", []byte("clinkme keystore v0\n"), ErrReplayCache, 0},
	} {
		p := filepath.Join(t.TempDir(), "keys.replay")
		if err := os.WriteFile(p, tt.data, 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := openReplayCache(p, replayNow)
		if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("%s: open = %v, want %v", tt.name, err, tt.err)
			continue
		}
		if err != nil {
			continue
		}
		n := 0
		for i := range 10 {
			if errors.Is(o.check(alice, fmt.Sprint(i), replayNow, replayNow), ErrReplay) {
				n++
			}
		}
		if n != tt.replays {
			t.Errorf("%s: %d of 10 recorded envelopes refused as replays after reopening, want %d", tt.name, n, tt.replays)
		}
		// Opening dropped the torn tail: what is appended next is read.
		if err := o.record(alice, "next", replayNow, replayNow); err != nil {
			t.Fatal(err)
		}
		again, err := openReplayCache(p, replayNow)
		if err != nil {
			t.Fatalf("%s: reopen after an append: %v", tt.name, err)
		}
		if !errors.Is(again.check(alice, "next", replayNow, replayNow), ErrReplay) {
			t.Errorf("%s: an envelope recorded after reopening is not remembered", tt.name)
		}
	}
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 1
	return b
}

// TestReplayBounds: one author past its bound forgets its oldest eighth
// and refuses it as too old from then on, never as new; other authors are
// untouched; past the global bound the oldest eighth of all goes the same
// way.
func TestReplayBounds(t *testing.T) {
	t.Parallel()
	a, b := authorHash("mallory@example.org"), authorHash("alice@example.org")
	base := replayNow.Unix()
	st := newReplayState()
	st.add(b, entryHash("alice@example.org", "x"), base-100)
	for i := range replayMaxPerSender + 1 {
		e := entryHash("mallory@example.org", fmt.Sprint(i))
		if err := st.check(a, e, base+int64(i)); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		st.add(a, e, base+int64(i))
	}
	gone := replayMaxPerSender / 8
	if n := len(st.authors[a].ids); n != replayMaxPerSender+1-gone {
		t.Errorf("author past its bound keeps %d entries, want %d", n, replayMaxPerSender+1-gone)
	}
	for _, tt := range []struct {
		who  hash16
		id   string
		t    int64
		want error
	}{
		{a, "0", base, ErrTooOld},
		{a, fmt.Sprint(gone - 1), base + int64(gone-1), ErrTooOld},
		{a, fmt.Sprint(gone), base + int64(gone), ErrReplay},
		{a, "new but old", base + int64(gone-1), ErrTooOld},
		{a, "new", base + int64(gone), nil},
		{b, "x", base - 100, ErrReplay},
		{b, "older than mallory's floor", base, nil},
	} {
		from := "mallory@example.org"
		if tt.who == b {
			from = "alice@example.org"
		}
		if err := st.check(tt.who, entryHash(from, tt.id), tt.t); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
			t.Errorf("check(%s, %s) = %v, want %v", from, tt.id, err, tt.want)
		}
	}

	// The global bound, with many authors.
	st = newReplayState()
	for i := range replayMaxEntries + 1 {
		from := fmt.Sprintf("u%d@example.org", i%100)
		st.add(authorHash(from), entryHash(from, fmt.Sprint(i)), base+int64(i))
	}
	if st.n != replayMaxEntries+1-replayMaxEntries/8 || st.floor != base+replayMaxEntries/8 {
		t.Errorf("past the global bound: %d entries, floor %d; want %d, %d", st.n, st.floor, replayMaxEntries+1-replayMaxEntries/8, base+replayMaxEntries/8)
	}
	if err := st.check(authorHash("u0@example.org"), entryHash("u0@example.org", "0"), base); !errors.Is(err, ErrTooOld) {
		t.Errorf("a forgotten entry = %v, want ErrTooOld", err)
	}
}

// TestReplayFileLayout: the records are those of the format in replay.go,
// rebuilt here byte by byte.
func TestReplayFileLayout(t *testing.T) {
	t.Parallel()
	st := newReplayState()
	st.raiseFloor(1000)
	a, e := authorHash("alice@example.org"), entryHash("alice@example.org", "m1")
	st.add(a, e, 2000)
	st.raiseAuthorFloor(a, 1500)
	got, records := st.marshal()

	sum := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:16] }
	wantA := sum("clinkme replay author v0\nalice@example.org")
	wantE := sum("clinkme replay entry v0\n\x00\x00\x00\x11alice@example.org\x00\x00\x00\x02m1")
	rec := func(fields ...[]byte) []byte {
		b := bytes.Join(fields, nil)
		return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
	}
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	want := bytes.Join([][]byte{
		[]byte("clinkme replay v0\n"),
		rec([]byte("f"), u64(1000)),
		rec([]byte("s"), wantA, u64(1500)),
		rec([]byte("e"), wantA, wantE, u64(2000)),
	}, nil)
	if !bytes.Equal(got, want) || records != 3 {
		t.Fatalf("marshal() = %x (%d records)\nwant       %x (3)", got, records, want)
	}
	back, n, valid, err := parseReplayFile(got)
	if err != nil || n != 3 || valid != len(got) || !reflect.DeepEqual(back, st) {
		t.Fatalf("parseReplayFile(marshal()) = %+v, %d, %d, %v; want %+v", back, n, valid, err, st)
	}
}

// FuzzReplayFile: whatever the file holds, reading it never panics, and
// what it reads is within the bounds and survives a rewrite unchanged.
func FuzzReplayFile(f *testing.F) {
	for _, seed := range replaySeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, _, valid, err := parseReplayFile(data)
		if err != nil {
			return
		}
		if valid > len(data) || st.n > replayMaxEntries {
			t.Fatalf("parse: valid %d of %d, %d entries", valid, len(data), st.n)
		}
		n := 0
		for _, au := range st.authors {
			if len(au.ids) > replayMaxPerSender || au.floor < st.floor {
				t.Fatalf("author with %d entries, floor %d under %d", len(au.ids), au.floor, st.floor)
			}
			for _, ts := range au.ids {
				if ts < au.floor {
					t.Fatalf("entry at %d under its author's floor %d", ts, au.floor)
				}
			}
			n += len(au.ids)
		}
		if n != st.n {
			t.Fatalf("%d entries counted, %d held", st.n, n)
		}
		b, records := st.marshal()
		back, r2, v2, err := parseReplayFile(b)
		if err != nil || r2 != records || v2 != len(b) || !reflect.DeepEqual(back, st) {
			t.Fatalf("rewrite does not read back: %v, %d/%d records, %d/%d bytes", err, r2, records, v2, len(b))
		}
	})
}

// replaySeeds are the files of testdata/fuzz/FuzzReplayFile, made here
// too so that TestReplaySeeds can check they are up to date.
func replaySeeds() [][]byte {
	st := newReplayState()
	st.raiseFloor(1000)
	for i := range 3 {
		st.add(authorHash("alice@example.org"), entryHash("alice@example.org", fmt.Sprint(i)), int64(2000+i))
	}
	st.raiseAuthorFloor(authorHash("alice@example.org"), 2001)
	st.add(authorHash("bob@example.org"), entryHash("bob@example.org", "x"), 1500)
	full, _ := st.marshal()
	empty, _ := newReplayState().marshal()
	return [][]byte{empty, full, full[:len(full)-20], append(bytes.Clone(full), 0, 0, 0), flip(full, len(replayMagic)+2)}
}

// TestReplaySeeds: the committed fuzz seeds are the ones replaySeeds makes.
func TestReplaySeeds(t *testing.T) {
	t.Parallel()
	names := []string{"empty", "entries", "torn", "zero-tail", "bad-checksum"}
	for i, seed := range replaySeeds() {
		b, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzReplayFile", names[i]))
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)
		if string(b) != want {
			t.Errorf("seed %s is out of date:\n got %s\nwant %s", names[i], b, want)
		}
	}
}
