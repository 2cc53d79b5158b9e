package clinkid

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
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

// hasher computes argon2id hashes, at most cap(sem) at a time: each
// computation holds Memory KiB, so the bound on concurrency is the bound on
// the memory that password checks can take.
type hasher struct {
	params     Params
	sem        chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	dummy      string // a hash of a random password, for unknown accounts

	// computed counts every argon2id computation (hash or verify). Tests
	// read it to see that an unknown account costs one, like a wrong
	// password.
	computed atomic.Int64
	observe  func(time.Duration) // may be nil
}

func newHasher(p Params, concurrency, queue int) (*hasher, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	h := &hasher{params: p, sem: make(chan struct{}, max(concurrency, 1)), maxWaiting: int64(max(queue, 0))}
	var pw [16]byte
	rand.Read(pw[:])
	h.dummy = h.compute(pw[:], p)
	h.computed.Store(0)
	return h, nil
}

// acquire takes a hashing slot, waiting for one if the queue has room.
func (h *hasher) acquire(ctx context.Context) error {
	select {
	case h.sem <- struct{}{}:
		return nil
	default:
	}
	if h.waiting.Add(1) > h.maxWaiting {
		h.waiting.Add(-1)
		return ErrBusy
	}
	defer h.waiting.Add(-1)
	select {
	case h.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("clinkid: waiting for a hashing slot: %w", ctx.Err())
	}
}

func (h *hasher) release() { <-h.sem }

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
func (h *hasher) hash(ctx context.Context, password string) (string, error) {
	if err := h.acquire(ctx); err != nil {
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

// checkNewPassword applies the password policy to a password being set:
// at least minChars characters, at most MaxPasswordBytes bytes, not shaped
// like an app token, and unchanged by both SASLprep (RFC 4013, which
// Prosody applies to PLAIN passwords) and PRECIS OpaqueString (RFC 8265),
// so that whatever an XMPP server does to it, clinkd sees the bytes it
// hashed.
func checkNewPassword(pw string, minChars int) error {
	switch {
	case !utf8.ValidString(pw):
		return fmt.Errorf("%w: not valid UTF-8", ErrWeakPassword)
	case utf8.RuneCountInString(pw) < minChars:
		return fmt.Errorf("%w: shorter than %d characters", ErrWeakPassword, minChars)
	case len(pw) > MaxPasswordBytes:
		return fmt.Errorf("%w: longer than %d bytes", ErrWeakPassword, MaxPasswordBytes)
	case strings.HasPrefix(pw, TokenPrefix):
		return fmt.Errorf("%w: must not start with %s, which marks app tokens", ErrWeakPassword, TokenPrefix)
	}
	if s, err := precis.OpaqueString.String(pw); err != nil || s != pw || norm.NFKC.String(pw) != pw {
		return fmt.Errorf("%w: it holds characters that Unicode normalisation changes or forbids (controls, unassigned or compatibility characters, non-ASCII spaces)", ErrWeakPassword)
	}
	return nil
}
