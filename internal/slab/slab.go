// Package slab holds byte strings packed into large chunks of memory
// mapped outside Go's heap, for a process that keeps many of them for a
// long time: the timed-message relay's envelopes (docs/expiry.md, "What a
// held message costs in memory").
//
// Held as one heap allocation each, an envelope costs its size class (a
// 1,169-byte envelope takes 1,280 bytes), shares pages with the short-lived
// garbage of relaying every stanza (a page with one live envelope stays
// resident), and counts toward the heap's growth between collections, so
// that a relay holding T bytes was resident at 2 to 3 T at its peak. In a
// slab a string costs its length, the garbage collector neither sees nor
// counts it, and a chunk goes back to the kernel when the last string in it
// is freed.
//
// Freed strings leave holes that the bump allocator never fills, so a
// slab's owner calls Plan when NeedsCompaction says the holes have grown
// past a quarter of what is held, and moves (Move) the strings that
// Evacuating names: the chunks with the most holes are emptied and
// unmapped. What is mapped and touched stays within 1.25 times what is
// held plus a few chunks, whatever the order of frees: an order chosen to
// pin sparse chunks (one long-lived string among many short-lived ones in
// each) is undone by the next compaction.
//
// Two invariants make a use after free loud rather than a leak between
// strings: Free zeroes the string, and a range once freed is never handed
// out again while its chunk is mapped (a chunk's memory is reused only
// after it was unmapped and mapped anew by the kernel). On Linux the
// chunks are excluded from core dumps (MADV_DONTDUMP), so a crash does not
// write what the slab holds to disk.
//
// The race detector does not see accesses to memory outside Go's heap; the
// owner's locking is what keeps a string from being moved or freed while
// it is read.
//
// A Slab is not safe for concurrent use: its owner serialises the calls
// (the relay makes them under its lock).
package slab

import (
	"fmt"
	"slices"
	"unsafe"
)

// DefaultChunkSize is the size of a chunk when Config.ChunkSize is zero:
// large enough that a chunk holds hundreds of envelopes and the mappings
// stay few, small enough that a relay holding a handful of messages maps
// one chunk (of which only the touched pages are resident).
const DefaultChunkSize = 1 << 20

// Config configures a Slab.
type Config struct {
	// ChunkSize is the size of each chunk, a multiple of the page size
	// (4096 ≤ ChunkSize ≤ 1 GiB); zero means DefaultChunkSize. A string
	// longer than a quarter of it gets a chunk of its own.
	ChunkSize int
}

// Slab is a set of chunks from which strings are allocated by bumping a
// pointer.
type Slab struct {
	chunkSize int
	chunks    []*chunk // sorted by base address
	cur       *chunk   // where Alloc bumps; never evacuating
	live      int64    // bytes allocated and not freed
	used      int64    // bytes handed out of the mapped chunks, freed or not
	mapped    int64
	// deferring: chunks that empty are put in retired instead of being
	// unmapped (DeferUnmaps, TakeRetired).
	deferring bool
	retired   [][]byte
}

type chunk struct {
	mem        []byte
	base       uintptr
	used, live int // bytes handed out (used ≤ len(mem)), and not freed of them
	// evacuate: Plan chose this chunk to be emptied; Alloc hands out
	// nothing more from it.
	evacuate bool
}

// New returns an empty slab; it maps nothing until the first Alloc.
func New(cfg Config) (*Slab, error) {
	size := cfg.ChunkSize
	if size == 0 {
		size = DefaultChunkSize
	}
	if size < 4096 || size > 1<<30 || size%4096 != 0 {
		return nil, fmt.Errorf("slab: chunk size %d: want a multiple of 4096 from 4096 to 1 GiB", size)
	}
	return &Slab{chunkSize: size}, nil
}

// Stats is what a slab holds and maps, in bytes.
type Stats struct {
	Live   int64 // allocated and not freed
	Used   int64 // handed out of the chunks mapped now, freed or not: at most what is resident
	Mapped int64 // the chunks' size
	Chunks int
}

// Stats reports what s holds and maps.
func (s *Slab) Stats() Stats {
	return Stats{Live: s.live, Used: s.used, Mapped: s.mapped, Chunks: len(s.chunks)}
}

// Alloc returns n bytes of zeroes that stay where they are until Free or
// Move: the slice's capacity is n, so an append copies rather than writing
// past it. It fails only when the kernel refuses a mapping.
func (s *Slab) Alloc(n int) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	if n > s.chunkSize/4 {
		c, err := s.mapChunk((n + 4095) &^ 4095)
		if err != nil {
			return nil, err
		}
		return s.take(c, n), nil
	}
	if s.cur == nil || len(s.cur.mem)-s.cur.used < n {
		if s.cur != nil && s.cur.live == 0 {
			s.unmap(s.cur)
		}
		s.cur = nil
		c, err := s.mapChunk(s.chunkSize)
		if err != nil {
			return nil, err
		}
		s.cur = c
	}
	return s.take(s.cur, n), nil
}

// Copy returns a copy of b in s.
func (s *Slab) Copy(b []byte) ([]byte, error) {
	nb, err := s.Alloc(len(b))
	if err != nil {
		return nil, err
	}
	copy(nb, b)
	return nb, nil
}

func (s *Slab) take(c *chunk, n int) []byte {
	b := c.mem[c.used : c.used+n : c.used+n]
	c.used += n
	c.live += n
	s.used += int64(n)
	s.live += int64(n)
	return b
}

// Free zeroes b, which Alloc, Copy or Move returned and nothing freed
// since, and gives its bytes back; a chunk left with nothing live is
// unmapped, unless Alloc bumps in it. Free(nil) does nothing. Freeing what
// s did not hand out panics: it is a defect of the caller, and going on
// would corrupt the accounting that bounds the slab's memory.
func (s *Slab) Free(b []byte) {
	if len(b) == 0 {
		return
	}
	c := s.find(b)
	if c == nil {
		panic("slab: free of memory the slab did not hand out")
	}
	clear(b)
	c.live -= len(b)
	s.live -= int64(len(b))
	if c.live < 0 {
		panic("slab: freed more than was allocated from a chunk")
	}
	if c.live == 0 && c != s.cur {
		s.unmap(c)
	}
}

// find returns the chunk that holds b, or nil.
func (s *Slab) find(b []byte) *chunk {
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	i, _ := slices.BinarySearchFunc(s.chunks, p, func(c *chunk, p uintptr) int {
		switch {
		case c.base+uintptr(len(c.mem)) <= p:
			return -1
		case c.base > p:
			return 1
		}
		return 0
	})
	if i == len(s.chunks) {
		return nil
	}
	c := s.chunks[i]
	if p < c.base || p+uintptr(len(b)) > c.base+uintptr(c.used) {
		return nil
	}
	return c
}

func (s *Slab) mapChunk(size int) (*chunk, error) {
	mem, err := mapMemory(size)
	if err != nil {
		return nil, fmt.Errorf("slab: map %d bytes: %w", size, err)
	}
	c := &chunk{mem: mem, base: uintptr(unsafe.Pointer(unsafe.SliceData(mem)))}
	i, _ := slices.BinarySearchFunc(s.chunks, c.base, func(c *chunk, p uintptr) int {
		switch {
		case c.base < p:
			return -1
		case c.base > p:
			return 1
		}
		return 0
	})
	s.chunks = slices.Insert(s.chunks, i, c)
	s.mapped += int64(size)
	return c, nil
}

func (s *Slab) unmap(c *chunk) {
	i := slices.Index(s.chunks, c)
	if i < 0 {
		panic("slab: unmap of a chunk it does not hold")
	}
	s.chunks = slices.Delete(s.chunks, i, i+1)
	s.mapped -= int64(len(c.mem))
	s.used -= int64(c.used)
	if s.deferring {
		s.retired = append(s.retired, c.mem)
	} else {
		Unmap([][]byte{c.mem})
	}
	c.mem = nil
}

// DeferUnmaps makes the chunks that empty from now on wait, instead of
// being unmapped at once, until TakeRetired hands them to the owner, who
// unmaps them (Unmap) after it lets go of the lock that serialises the
// slab: a munmap of a populated chunk costs the kernel tens of
// microseconds, and a compaction empties hundreds. A retired chunk holds
// only zeroes (Free zeroes every string) and nothing of it is handed out
// again; Stats no longer counts it.
func (s *Slab) DeferUnmaps() { s.deferring = true }

// TakeRetired ends DeferUnmaps and returns the chunks that emptied since,
// for Unmap.
func (s *Slab) TakeRetired() [][]byte {
	r := s.retired
	s.deferring, s.retired = false, nil
	return r
}

// Unmap gives chunks that TakeRetired returned back to the kernel. It does
// not touch a Slab, so it needs none of its owner's locking.
func Unmap(chunks [][]byte) {
	for _, mem := range chunks {
		if err := unmapMemory(mem); err != nil {
			// Only a wrong address or length makes munmap fail, and
			// both come from the mapping itself.
			panic(fmt.Sprintf("slab: unmap: %v", err))
		}
	}
}

// NeedsCompaction reports whether the holes freed strings left in the
// mapped chunks exceed a quarter of what is held plus two chunks: then the
// owner should Plan and Move.
func (s *Slab) NeedsCompaction() bool {
	return s.used-s.live > s.live/4+2*int64(s.chunkSize)
}

// Plan chooses the chunks to empty, those with the most holes first,
// until emptying them would leave holes of at most an eighth of what is
// held, and reports how many it chose. Alloc hands out nothing more from
// them; the owner then Moves every string that Evacuating names. A string
// the owner cannot move yet (one being read) keeps its chunk mapped until
// it is freed or a later Plan's Move takes it.
func (s *Slab) Plan() int {
	var candidates []*chunk
	for _, c := range s.chunks {
		if c != s.cur && c.used > c.live {
			candidates = append(candidates, c)
		}
	}
	// Fewest live bytes per byte used first: the cheapest holes to close.
	slices.SortFunc(candidates, func(a, b *chunk) int {
		return cmpFraction(a.live, a.used, b.live, b.used)
	})
	holes := s.used - s.live
	n := 0
	for _, c := range candidates {
		if holes <= s.live/8 {
			break
		}
		c.evacuate = true
		// Emptying c closes its holes; its live bytes move into cur,
		// where they leave none.
		holes -= int64(c.used - c.live)
		n++
	}
	return n
}

// cmpFraction compares a/b with c/d (b, d > 0) without division.
func cmpFraction(a, b, c, d int) int {
	x, y := int64(a)*int64(d), int64(c)*int64(b)
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// Evacuating reports whether b lies in a chunk that Plan chose to empty.
func (s *Slab) Evacuating(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	c := s.find(b)
	return c != nil && c.evacuate
}

// Move copies b to where Alloc bumps now, frees b and returns the copy.
// On error b is left as it was.
func (s *Slab) Move(b []byte) ([]byte, error) {
	nb, err := s.Copy(b)
	if err != nil {
		return b, err
	}
	s.Free(b)
	return nb, nil
}

// Release unmaps every chunk. It is for an owner that is done with the
// slab and everything it handed out (a relay no longer reachable): a
// string used after Release faults.
func (s *Slab) Release() {
	for _, c := range s.chunks {
		Unmap([][]byte{c.mem})
		c.mem = nil
	}
	Unmap(s.TakeRetired())
	*s = Slab{chunkSize: s.chunkSize}
}
