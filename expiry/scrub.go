package expiry

import (
	"runtime"
	"runtime/debug"
	"time"

	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// wipe overwrites with zeros every byte of an envelope that clinkd owns:
// its canonical XML as held and the decoded binary fields. Strings (ids,
// addresses) cannot be overwritten in Go; scrubHeap deals with what the
// garbage collector has freed.
func wipe(raw []byte, env *envelopexml.Envelope) {
	clear(raw)
	if env == nil {
		return
	}
	for _, k := range env.Keys {
		clear(k.Fingerprint)
		clear(k.Key)
	}
	clear(env.KeyID)
	clear(env.Nonce)
	clear(env.Payload)
	clear(env.Signature)
}

// scrubEvery is how often, at most, scrubHeap runs after messages
// expired: it stops the world for a garbage collection and returns memory
// to the operating system, which costs milliseconds per hundred MiB of
// heap, so a stream of expiries is scrubbed in batches. A message's copies
// are therefore overwritten within scrubEvery of its expiry.
const scrubEvery = 30 * time.Second

// scrubSizes are the sizes of the allocator's size classes from 32 bytes
// up, as the runtime reports them (smaller objects cannot hold a telling
// stretch of a message). Objects larger than the largest class have spans
// of their own, which FreeOSMemory returns whole.
func scrubSizes(ms *runtime.MemStats) []int {
	var s []int
	for _, c := range ms.BySize {
		if c.Size >= 32 {
			s = append(s, int(c.Size))
		}
	}
	// MemStats reports the classes up to 27264 bytes; Go's small objects
	// go up to 32 KiB.
	return append(s, 28672, 32768)
}

// scrubHeap overwrites what the process has freed of timed messages: the
// copies that the XMPP library, encoding/xml and the envelope decoder make
// while a message passes (token copies, strings, buffers grown and
// dropped), which clinkd cannot reach to zero. A garbage collection frees
// every unreachable copy; Go's allocator does not clear a freed slot until
// it hands it out again, so scrubHeap then allocates every free slot of the
// heap's partly used spans, class by class, which makes the allocator
// zero it; FreeOSMemory finally returns the wholly free spans to the
// operating system, whose pages then read as zeros. It returns how long it
// took.
//
// What it cannot reach: copies still referenced (the link's read and
// write buffers keep the last stanzas until the next ones overwrite
// them), and the kernel's socket buffers (docs/expiry.md).
//
// procs is the process's GOMAXPROCS, restored afterwards. It is taken
// once when the relay is made rather than from the call that lowers it,
// so that two relays in one process (tests) scrubbing at once cannot
// leave the process on one processor.
func scrubHeap(procs int) time.Duration {
	start := time.Now()
	// One processor while it runs: every goroutine then allocates from the
	// same cache of spans, so no other processor holds spans (and their
	// free slots) out of the scrub's reach; going to one processor hands
	// the others' caches back to the heap.
	runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(procs)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	// The free slots of in-use spans add up to at most this; it bounds the
	// work whatever happens meanwhile.
	budget := int(ms.HeapInuse-ms.HeapAlloc) + 1<<20
	keep := make([][]byte, 256)
	for _, size := range scrubSizes(&ms) {
		perBatch := max(1, (8<<10)/size)
		runtime.ReadMemStats(&ms)
		last, grew := ms.HeapInuse, 0
		for spent := 0; spent < budget && grew < 2; spent += perBatch * size {
			for i := range perBatch {
				// Kept reachable until the class is done, so that none is
				// freed and handed out again meanwhile.
				keep[i%len(keep)] = make([]byte, size)
			}
			runtime.ReadMemStats(&ms)
			// The heap takes new spans once the class has no free slot
			// left; twice in a row, so that another goroutine's
			// allocation does not end a class early.
			if ms.HeapInuse > last {
				grew++
			} else {
				grew = 0
			}
			last = ms.HeapInuse
		}
		clear(keep)
	}
	runtime.KeepAlive(keep)
	debug.FreeOSMemory()
	return time.Since(start)
}
