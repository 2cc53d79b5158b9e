package slab_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/clinkme/clinkd/internal/slab"
)

func newSlab(t *testing.T, chunk int) *slab.Slab {
	t.Helper()
	s, err := slab.New(slab.Config{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { freeAll(t, s) })
	return s
}

// freeAll checks that the test freed everything it allocated: a slab
// with nothing live maps at most the chunk Alloc bumps in.
func freeAll(t *testing.T, s *slab.Slab) {
	t.Helper()
	if st := s.Stats(); st.Live != 0 || st.Chunks > 1 {
		t.Errorf("at the end: %+v, want nothing live and at most one chunk", st)
	}
}

func TestNewRejectsChunkSizes(t *testing.T) {
	for _, size := range []int{-1, 100, 4095, 4097, 1<<30 + 4096} {
		if _, err := slab.New(slab.Config{ChunkSize: size}); err == nil {
			t.Errorf("New(ChunkSize %d) = nil error, want one", size)
		}
	}
	for _, size := range []int{0, 4096, 1 << 20} {
		if _, err := slab.New(slab.Config{ChunkSize: size}); err != nil {
			t.Errorf("New(ChunkSize %d) = %v, want nil", size, err)
		}
	}
}

func TestAllocPacksAndFreeZeroes(t *testing.T) {
	s := newSlab(t, 4096)
	a, err := s.Copy([]byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Copy([]byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	if cap(a) != len(a) {
		t.Errorf("cap(a) = %d, want len %d: an append would write into b", cap(a), len(a))
	}
	if st := s.Stats(); st.Live != 11 || st.Used != 11 || st.Chunks != 1 || st.Mapped != 4096 {
		t.Errorf("after two allocations: %+v, want 11 live and used in one 4096-byte chunk", st)
	}
	s.Free(a)
	if !bytes.Equal(a, make([]byte, 5)) {
		t.Errorf("freed string = %q, want zeroes", a)
	}
	if string(b) != "second" {
		t.Errorf("the other string = %q after a free, want %q", b, "second")
	}
	if st := s.Stats(); st.Live != 6 || st.Used != 11 {
		t.Errorf("after a free: %+v, want 6 live of 11 used (a freed range is not handed out again)", st)
	}
	s.Free(b)
	s.Free(nil)
}

func TestChunksAreUnmappedWhenEmpty(t *testing.T) {
	s := newSlab(t, 4096)
	var first [][]byte
	for range 4 { // 4 × 1000 bytes: one chunk
		b, err := s.Alloc(1000)
		if err != nil {
			t.Fatal(err)
		}
		first = append(first, b)
	}
	second, err := s.Alloc(1000) // does not fit: a new chunk
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().Chunks; n != 2 {
		t.Fatalf("chunks = %d, want 2", n)
	}
	for _, b := range first {
		s.Free(b)
	}
	if st := s.Stats(); st.Chunks != 1 || st.Mapped != 4096 || st.Used != 1000 {
		t.Errorf("after emptying the first chunk: %+v, want it unmapped", st)
	}
	big, err := s.Alloc(3000) // over a quarter of a chunk: its own
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Chunks != 2 || st.Mapped != 8192 {
		t.Errorf("with a large string: %+v, want a chunk of its own", st)
	}
	s.Free(big)
	s.Free(second)
}

func TestFreeOfForeignMemoryPanics(t *testing.T) {
	s := newSlab(t, 4096)
	b, err := s.Alloc(10)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Free(b)
	defer func() {
		if recover() == nil {
			t.Error("Free of a heap slice did not panic")
		}
	}()
	s.Free(make([]byte, 10))
}

// TestCompactionBoundsPinnedChunks plays the order of frees an adversary
// would choose: in every chunk one string lives long and the rest expire,
// so that without compaction each chunk stays mapped for one string. After
// each round the owner compacts when asked, as the relay does; what is
// touched must stay within 1.25 times what is held plus a few chunks, and
// every live string keep its bytes.
func TestCompactionBoundsPinnedChunks(t *testing.T) {
	const chunk = 64 << 10
	s := newSlab(t, chunk)
	rng := rand.New(rand.NewPCG(1, 2))
	type str struct {
		b    []byte
		want byte
	}
	var live []*str
	var pinned []*str
	maxRatio := 0.0
	for round := range 50 {
		for i := range 500 {
			n := 500 + rng.IntN(1500)
			b, err := s.Alloc(n)
			if err != nil {
				t.Fatal(err)
			}
			v := byte(round*7 + i)
			for j := range b {
				b[j] = v
			}
			st := &str{b, v}
			if i%40 == 0 {
				pinned = append(pinned, st) // lives on
			} else {
				live = append(live, st)
			}
		}
		// All but the pinned expire.
		for _, st := range live {
			s.Free(st.b)
		}
		live = live[:0]
		if s.NeedsCompaction() {
			if s.Plan() == 0 {
				t.Fatalf("round %d: NeedsCompaction but Plan chose no chunk: %+v", round, s.Stats())
			}
			for _, st := range pinned {
				if s.Evacuating(st.b) {
					nb, err := s.Move(st.b)
					if err != nil {
						t.Fatal(err)
					}
					st.b = nb
				}
			}
		}
		st := s.Stats()
		if ratio := float64(st.Used) / float64(st.Live); ratio > maxRatio {
			maxRatio = ratio
		}
		if limit := st.Live + st.Live/4 + 3*chunk; st.Used > limit {
			t.Fatalf("round %d: %+v: used %d > 1.25 × live + 3 chunks = %d", round, st, st.Used, limit)
		}
	}
	end := s.Stats()
	t.Logf("used/live at most %.2f over the rounds, %.2f at the end (%+v)", maxRatio, float64(end.Used)/float64(end.Live), end)
	for i, st := range pinned {
		if !bytes.Equal(st.b, bytes.Repeat([]byte{st.want}, len(st.b))) {
			t.Fatalf("pinned string %d changed", i)
		}
		s.Free(st.b)
	}
}

// TestWithoutCompactionPinningWorks shows that the order of frees in
// TestCompactionBoundsPinnedChunks is an attack: without Plan and Move
// one string in forty pins its chunk, and what stays touched is many
// times what is held.
func TestWithoutCompactionPinningWorks(t *testing.T) {
	s := newSlab(t, 64<<10)
	var pinned [][]byte
	for i := range 5000 {
		b, err := s.Alloc(1000)
		if err != nil {
			t.Fatal(err)
		}
		if i%40 == 0 {
			pinned = append(pinned, b)
		} else {
			s.Free(b)
		}
	}
	st := s.Stats()
	if ratio := float64(st.Used) / float64(st.Live); ratio < 20 {
		t.Errorf("used/live = %.1f without compaction, want the pinning to leave ≥ 20", ratio)
	}
	if !s.NeedsCompaction() {
		t.Errorf("NeedsCompaction() = false with %+v", st)
	}
	for _, b := range pinned {
		s.Free(b)
	}
}

// TestDeferredUnmaps: while DeferUnmaps is on, a chunk that empties
// leaves the slab's accounts at once but stays mapped (zeroed) until
// TakeRetired hands it over; after TakeRetired, an emptied chunk is
// unmapped at once again.
func TestDeferredUnmaps(t *testing.T) {
	t.Parallel()
	const chunk = 4096
	s := newSlab(t, chunk)
	fill := func() [][]byte {
		var bs [][]byte
		for range 4 { // one chunk: 4 x 1,024 bytes
			b, err := s.Alloc(chunk / 4)
			if err != nil {
				t.Fatal(err)
			}
			for i := range b {
				b[i] = 0xAA
			}
			bs = append(bs, b)
		}
		return bs
	}
	first, second := fill(), fill() // the second Alloc moved on to a new chunk
	third, fourth := fill(), fill()
	s.DeferUnmaps()
	for _, b := range first {
		s.Free(b)
	}
	if st := s.Stats(); st.Chunks != 3 || st.Mapped != 3*chunk {
		t.Fatalf("after the first chunk emptied: %+v, want 3 chunks mapped", st)
	}
	for _, b := range second {
		s.Free(b)
	}
	retired := s.TakeRetired()
	if len(retired) != 2 {
		t.Fatalf("TakeRetired = %d chunks, want 2", len(retired))
	}
	for _, mem := range retired {
		// Still mapped: readable, and zeroed by Free.
		if len(mem) != chunk || !bytes.Equal(mem, make([]byte, chunk)) {
			t.Fatalf("a retired chunk is %d bytes, not all zero", len(mem))
		}
	}
	slab.Unmap(retired)
	if again := s.TakeRetired(); len(again) != 0 {
		t.Fatalf("TakeRetired again = %d chunks, want none", len(again))
	}
	// No longer deferring: a chunk that empties is unmapped at once.
	for _, b := range third {
		s.Free(b)
	}
	if st := s.Stats(); st.Chunks != 1 {
		t.Fatalf("after the third chunk emptied: %+v, want only the fourth mapped", st)
	}
	if got := s.TakeRetired(); len(got) != 0 {
		t.Fatalf("after TakeRetired, freeing retired %d chunks, want them unmapped at once", len(got))
	}
	for _, b := range fourth {
		s.Free(b)
	}
}
