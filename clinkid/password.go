package clinkid

import (
	"container/list"
	"context"
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
	"golang.org/x/text/secure/precis"
	"golang.org/x/text/unicode/norm"
)

// Params are the argon2id cost parameters (RFC 9106 §3.1). Every stored
// hash carries its own parameters (PHC string format), so they can be
// raised at any time: accounts move to the new ones at their next
// successful password login.
type Params struct {
	Memory      uint32 // m, in KiB (8×Parallelism ≤ Memory ≤ 4 GiB)
	Iterations  uint32 // t, passes over memory (1 ≤ t ≤ 64)
	Parallelism uint8  // p, lanes (1 ≤ p ≤ 64)
}

// DefaultParams is RFC 9106's second recommended option (§4): m = 64 MiB,
// t = 3, p = 4, 128-bit salt, 256-bit tag. The first option (m = 2 GiB,
// t = 1) is meant for machines with memory to spare per login; a server
// under a login storm multiplies m by every concurrent check, so clinkd
// uses the second and bounds concurrency (Config.HashConcurrency).
func DefaultParams() Params { return Params{Memory: 64 * 1024, Iterations: 3, Parallelism: 4} }

const (
	saltLen = 16 // RFC 9106 §3.1: 128 bits is sufficient for all applications
	keyLen  = 32 // RFC 9106 §4: 256-bit tag
	// maxMemory bounds m: 4 GiB in KiB. Hashes read from the database are
	// checked against it too, so a corrupt row cannot exhaust memory.
	maxMemory = 4 << 20
)

// Validate reports parameters argon2id cannot use or that are out of the
// documented ranges.
func (p Params) Validate() error {
	switch {
	case p.Parallelism < 1 || p.Parallelism > 64:
		return fmt.Errorf("clinkid: argon2id parallelism %d: want 1 to 64", p.Parallelism)
	case p.Iterations < 1 || p.Iterations > 64:
		return fmt.Errorf("clinkid: argon2id iterations %d: want 1 to 64", p.Iterations)
	case p.Memory < 8*uint32(p.Parallelism) || p.Memory > maxMemory:
		return fmt.Errorf("clinkid: argon2id memory %d KiB: want 8×parallelism to %d", p.Memory, maxMemory)
	}
	return nil
}

// String is the parameter part of a PHC string: m=65536,t=3,p=4.
func (p Params) String() string {
	return fmt.Sprintf("m=%d,t=%d,p=%d", p.Memory, p.Iterations, p.Parallelism)
}

var b64 = base64.RawStdEncoding // PHC strings use unpadded standard base64

// gcAfterKiB is the memory parameter from which every computation is
// followed by a garbage collection (see hasher.key).
const gcAfterKiB = 8 << 10

// encodePHC formats a hash as $argon2id$v=19$m=...,t=...,p=...$salt$key.
func encodePHC(p Params, salt, key []byte) string {
	return "$argon2id$v=19$" + p.String() + "$" + b64.EncodeToString(salt) + "$" + b64.EncodeToString(key)
}

var errBadPHC = errors.New("clinkid: stored password hash is not an argon2id PHC string")

// decodePHC parses what encodePHC wrote. Anything else, including
// parameters out of range, is errBadPHC.
func decodePHC(s string) (p Params, salt, key []byte, err error) {
	f := strings.Split(s, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" || f[2] != "v=19" {
		return p, nil, nil, errBadPHC
	}
	for kv := range strings.SplitSeq(f[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return p, nil, nil, errBadPHC
		}
		switch k {
		case "m":
			p.Memory = uint32(n)
		case "t":
			p.Iterations = uint32(n)
		case "p":
			if n > 255 {
				return p, nil, nil, errBadPHC
			}
			p.Parallelism = uint8(n)
		default:
			return p, nil, nil, errBadPHC
		}
	}
	if p.Validate() != nil {
		return p, nil, nil, errBadPHC
	}
	if salt, err = b64.Strict().DecodeString(f[4]); err != nil || len(salt) < 8 {
		return p, nil, nil, errBadPHC
	}
	if key, err = b64.Strict().DecodeString(f[5]); err != nil || len(key) < 16 || len(key) > 64 {
		return p, nil, nil, errBadPHC
	}
	return p, salt, key, nil
}

// ErrBusy is returned when more password checks wait for a hashing slot
// than Config.HashQueue allows: the server sheds load instead of queueing
// without end during a login storm.
var ErrBusy = errors.New("clinkid: too many password checks in progress; try again shortly")

// hasher computes argon2id hashes, at most concurrency at a time: each
// computation holds Memory KiB, so the bound on concurrency is the bound on
// the memory that password checks can take.
//
// Checks wait for a slot in two queues. Trusted checks (from a network the
// account logged in from, or re-authenticating with a live app token) are
// served first: a flood of guesses from strangers fills the other queue,
// and is shed with ErrBusy past its bound, but never keeps the owner
// waiting behind it.
type hasher struct {
	params Params
	dummy  string // a hash of a random password, for unknown accounts

	mu         sync.Mutex
	free       int          // free slots
	queues     [2]list.List // of *waiter: [0] trusted, [1] the others
	maxWaiting int          // bound of each queue
	waiting    atomic.Int64 // checks waiting in both queues (tests read it)

	// computed counts every argon2id computation (hash or verify). Tests
	// read it to see that an unknown account costs one, like a wrong
	// password.
	computed atomic.Int64
	observe  func(time.Duration) // may be nil
}

type waiter struct {
	ready   chan struct{}
	granted bool // set under mu when the slot is handed over
}

func newHasher(p Params, concurrency, queue int) (*hasher, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	h := &hasher{params: p, free: max(concurrency, 1), maxWaiting: max(queue, 0)}
	var pw [16]byte
	rand.Read(pw[:])
	h.dummy = h.compute(pw[:], p)
	h.computed.Store(0)
	return h, nil
}

// acquire takes a hashing slot, waiting in the trusted or the other queue
// if none is free and the queue has room; ErrBusy if it has none.
func (h *hasher) acquire(ctx context.Context, trusted bool) error {
	q := &h.queues[1]
	if trusted {
		q = &h.queues[0]
	}
	h.mu.Lock()
	if h.free > 0 && h.queues[0].Len() == 0 && (trusted || h.queues[1].Len() == 0) {
		h.free--
		h.mu.Unlock()
		return nil
	}
	if q.Len() >= h.maxWaiting {
		h.mu.Unlock()
		return ErrBusy
	}
	w := &waiter{ready: make(chan struct{})}
	e := q.PushBack(w)
	h.waiting.Add(1)
	h.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		h.mu.Lock()
		if w.granted {
			// The slot came as the context ended: pass it on.
			h.mu.Unlock()
			h.release()
		} else {
			q.Remove(e)
			h.waiting.Add(-1)
			h.mu.Unlock()
		}
		return fmt.Errorf("clinkid: waiting for a hashing slot: %w", ctx.Err())
	}
}

// release frees a slot, handing it to the first trusted waiter, else the
// first other one.
func (h *hasher) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.queues {
		if e := h.queues[i].Front(); e != nil {
			w := h.queues[i].Remove(e).(*waiter)
			w.granted = true
			h.waiting.Add(-1)
			close(w.ready)
			return
		}
	}
	h.free++
}

// compute hashes password with a fresh salt. The caller holds a slot
// (or is newHasher).
func (h *hasher) compute(password []byte, p Params) string {
	salt := make([]byte, saltLen)
	rand.Read(salt)
	return encodePHC(p, salt, h.key(password, salt, p, keyLen))
}

func (h *hasher) key(password, salt []byte, p Params, n int) []byte {
	start := time.Now()
	k := argon2.IDKey(password, salt, p.Iterations, p.Memory, p.Parallelism, uint32(n))
	if p.Memory >= gcAfterKiB {
		// The block array (m KiB) is garbage now. Left to the collector's
		// pacing, the next computation allocates its own before this one
		// is freed and the heap reaches about twice the bound; collecting
		// here keeps it at HashConcurrency × m. The array holds no
		// pointers, so the cycle is cheap next to the hash itself.
		runtime.GC()
	}
	h.computed.Add(1)
	if h.observe != nil {
		h.observe(time.Since(start))
	}
	return k
}

// hash returns the PHC string of password under the current parameters.
func (h *hasher) hash(ctx context.Context, password string, trusted bool) (string, error) {
	if err := h.acquire(ctx, trusted); err != nil {
		return "", err
	}
	defer h.release()
	return h.compute([]byte(password), h.params), nil
}

// verifyLocked reports whether password matches the PHC string, and
// whether the hash should be recomputed because the parameters changed
// since. The caller holds a slot (acquire). The comparison is
// constant-time.
func (h *hasher) verifyLocked(phc, password string) (ok, rehash bool, err error) {
	p, salt, key, err := decodePHC(phc)
	if err != nil {
		return false, false, err
	}
	got := h.key([]byte(password), salt, p, len(key))
	ok = subtle.ConstantTimeCompare(got, key) == 1
	return ok, ok && p != h.params, nil
}

// MaxPasswordBytes bounds a password. argon2id's cost hardly depends on
// the length, but request bodies and the bridges' frames are bounded too.
const MaxPasswordBytes = 1024

// ErrWeakPassword is wrapped by the errors checkNewPassword returns.
var ErrWeakPassword = errors.New("clinkid: password refused")

// MinPasswordFloor is the least clinkid.min_password_length may be: NIST
// SP 800-63B's minimum for passwords a user chooses.
const MinPasswordFloor = 8

// commonPasswordsFile lists the commonest passwords of 8 characters or
// more, most common first; its header names the source and licence.
//
//go:embed common-passwords.txt
var commonPasswordsFile string

// commonPasswords is the set of commonPasswordsFile, built on first use
// and only read after.
var commonPasswords = sync.OnceValue(func() map[string]struct{} {
	set := make(map[string]struct{}, 4096)
	for line := range strings.SplitSeq(commonPasswordsFile, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			set[line] = struct{}{}
		}
	}
	return set
})

// IsCommonPassword reports whether pw, lower-cased, is on the list of the
// commonest passwords.
func IsCommonPassword(pw string) bool {
	_, ok := commonPasswords()[strings.ToLower(pw)]
	return ok
}

// checkNewPassword applies the password policy to a password being set
// for the account name: at least minChars characters, at most
// MaxPasswordBytes bytes, not one of the commonest passwords (an online
// guesser tries those first, and the per-name delay lets through a few
// guesses a day), not the name itself, not shaped like an app token, and
// unchanged by both SASLprep (RFC 4013, which Prosody applies to PLAIN
// passwords) and PRECIS OpaqueString (RFC 8265), so that whatever an XMPP
// server does to it, clinkd sees the bytes it hashed.
func checkNewPassword(pw string, minChars int, name string) error {
	switch {
	case !utf8.ValidString(pw):
		return fmt.Errorf("%w: not valid UTF-8", ErrWeakPassword)
	case utf8.RuneCountInString(pw) < minChars:
		return fmt.Errorf("%w: shorter than %d characters", ErrWeakPassword, minChars)
	case len(pw) > MaxPasswordBytes:
		return fmt.Errorf("%w: longer than %d bytes", ErrWeakPassword, MaxPasswordBytes)
	case strings.HasPrefix(pw, TokenPrefix):
		return fmt.Errorf("%w: must not start with %s, which marks app tokens", ErrWeakPassword, TokenPrefix)
	case IsCommonPassword(pw):
		return fmt.Errorf("%w: it is one of the 10,000 commonest passwords, which attackers try first", ErrWeakPassword)
	case name != "" && strings.EqualFold(pw, name):
		return fmt.Errorf("%w: it is the account name", ErrWeakPassword)
	}
	if s, err := precis.OpaqueString.String(pw); err != nil || s != pw || norm.NFKC.String(pw) != pw {
		return fmt.Errorf("%w: it holds characters that Unicode normalisation changes or forbids (controls, unassigned or compatibility characters, non-ASCII spaces)", ErrWeakPassword)
	}
	return nil
}
