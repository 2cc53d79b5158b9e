// Package keystore keeps a device's keys in one local file encrypted at
// rest, in the format specified in docs/keystore.md: the identity (bare JID
// and RSA private key) and the contact keys of ClinkMe Secure.
//
// The file is sealed with AES-256-GCM under a key derived from a passphrase
// with Argon2id; its header, which holds the Argon2id parameters and salt, is
// the additional data, so it cannot be changed unnoticed. Reading bounds the
// file size and the Argon2id parameters, so a hostile file cannot make Open
// allocate gigabytes or run for minutes.
//
// Every write is atomic: the new file is written to a temporary file in the
// same directory, synced, and renamed over the old one, and the directory is
// synced. A crash leaves either the old file or the new one. The file has
// mode 0600. One process at a time may use a key store file: two processes
// writing the same file lose each other's updates.
//
// Store implements envelope.ContactKeys, so it can be passed to
// envelope.Open as it is.
package keystore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"golang.org/x/crypto/argon2"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

var (
	// ErrExists: Create found a file (or anything else) at the path. The
	// error also matches fs.ErrExist.
	ErrExists = errors.New("keystore: key store file already exists")
	// ErrWrongPassphrase: the file does not decrypt with the passphrase.
	// AES-GCM cannot tell a wrong passphrase from an altered file.
	ErrWrongPassphrase = errors.New("keystore: wrong passphrase, or the file was altered")
	// ErrUnsupportedVersion: the file is a key store of a later format
	// version.
	ErrUnsupportedVersion = errors.New("keystore: unsupported key store version")
	// ErrBadParams: the Argon2id parameters in the header are out of the
	// bounds Open accepts.
	ErrBadParams = errors.New("keystore: Argon2id parameters out of bounds")
	// ErrCorrupt: the file is not a key store, is truncated, or its
	// decrypted contents are malformed.
	ErrCorrupt = errors.New("keystore: not a valid key store file")
)

var _ envelope.ContactKeys = (*Store)(nil)

// Format constants of docs/keystore.md.
const (
	magic       = "clinkme keystore v0\n"
	magicFamily = "clinkme keystore v"
	saltSize    = 16
	nonceSize   = 12
	tagSize     = 16
	headerSize  = len(magic) + 4 + 4 + 1 + saltSize + nonceSize
	keySize     = 32
)

// Argon2id parameters. Create uses RFC 9106's second recommended option
// (section 4): t=3 passes, m=64 MiB, p=4 lanes. Open accepts t, m and p in
// the bounds below; 256 MiB and 10 passes stay within what a phone can do.
const (
	defaultTime    = 3
	defaultMemory  = 64 << 10 // KiB
	defaultThreads = 4

	maxTime    = 10
	maxMemory  = 256 << 10 // KiB
	maxThreads = 16
)

// Bounds on what Open reads.
const (
	maxFileSize    = 16 << 20
	maxContactKeys = 1 << 16
	maxKeyDER      = 4096 // PKCS #8 of an RSA-4096 key is about 2.4 KB
)

// MaxKeysPerContact is how many contact keys AddContactKey keeps for one
// contact: adding one more forgets the oldest of that contact. A contact
// has one key in the usual case and two when both users shared at once
// (docs/envelope.md, section 5.4); four leave room for a device of each
// side that shared again, while a contact who shares key after key (every
// share that verifies is stored) cannot grow the file. Messages sealed
// under a forgotten key no longer open (no contact key). Files written
// before the bound, with more keys for a contact, still open; the bound
// applies from the next key added for that contact.
const MaxKeysPerContact = 4

// params are the Argon2id parameters of a file.
type params struct {
	time    uint32 // passes, 1 ≤ time ≤ maxTime
	memory  uint32 // KiB, 8·threads ≤ memory ≤ maxMemory
	threads uint8  // lanes, 1 ≤ threads ≤ maxThreads
}

func (p params) check() error {
	if p.time < 1 || p.time > maxTime || p.threads < 1 || p.threads > maxThreads ||
		p.memory < 8*uint32(p.threads) || p.memory > maxMemory {
		return fmt.Errorf("%w: t=%d m=%d KiB p=%d, want 1 ≤ t ≤ %d, 8p ≤ m ≤ %d KiB, 1 ≤ p ≤ %d",
			ErrBadParams, p.time, p.memory, p.threads, maxTime, maxMemory, maxThreads)
	}
	return nil
}

// header is the clear part of a file, its first headerSize bytes.
type header struct {
	params
	salt  [saltSize]byte
	nonce [nonceSize]byte
}

func (h *header) marshal() []byte {
	b := make([]byte, 0, headerSize)
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint32(b, h.time)
	b = binary.BigEndian.AppendUint32(b, h.memory)
	b = append(b, h.threads)
	b = append(b, h.salt[:]...)
	return append(b, h.nonce[:]...)
}

// parseHeader splits a file into its header and its sealed contents. It
// checks the magic and the parameter bounds, not the passphrase.
func parseHeader(data []byte) (*header, []byte, error) {
	if len(data) < len(magic) || string(data[:len(magic)]) != magic {
		if len(data) >= len(magicFamily) && string(data[:len(magicFamily)]) == magicFamily {
			return nil, nil, ErrUnsupportedVersion
		}
		return nil, nil, fmt.Errorf("%w: no key store header", ErrCorrupt)
	}
	if len(data) < headerSize+tagSize {
		return nil, nil, fmt.Errorf("%w: truncated", ErrCorrupt)
	}
	b := data[len(magic):]
	h := &header{params: params{
		time:    binary.BigEndian.Uint32(b[0:4]),
		memory:  binary.BigEndian.Uint32(b[4:8]),
		threads: b[8],
	}}
	copy(h.salt[:], b[9:9+saltSize])
	copy(h.nonce[:], b[9+saltSize:9+saltSize+nonceSize])
	if err := h.check(); err != nil {
		return nil, nil, err
	}
	return h, data[headerSize:], nil
}

// deriveKey runs Argon2id. The parameters must have passed check.
func deriveKey(passphrase []byte, h *header) []byte {
	return argon2.IDKey(passphrase, h.salt[:], h.time, h.memory, h.threads, keySize)
}

type contactEntry struct {
	contact string
	key     envelope.ContactKey
	id      string // key.ID(), cached for lookups
}

func newEntry(contact string, k envelope.ContactKey) contactEntry {
	return contactEntry{contact: contact, key: k, id: string(k.ID())}
}

// contents is what the file seals.
type contents struct {
	id       envelope.Identity
	contacts []contactEntry // in the order added; the last for a contact is its current key
}

// marshal encodes c: str(JID) || str(PKCS #8 key) || u32(n) || n × (str(contact) || str(key)).
func (c *contents) marshal() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.id.PrivateKey())
	if err != nil {
		return nil, fmt.Errorf("keystore: encode identity key: %v", err)
	}
	b := appendStr(nil, []byte(c.id.JID()))
	b = appendStr(b, der)
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.contacts)))
	for _, e := range c.contacts {
		b = appendStr(b, []byte(e.contact))
		b = appendStr(b, e.key.Bytes())
	}
	return b, nil
}

// rawContents is contents with the identity not parsed yet.
type rawContents struct {
	jid, der []byte
	contacts []contactEntry
}

// decodeContents decodes the framing of what marshal encodes and checks the
// contacts: bare JIDs, valid keys, nothing left over. It is cheap; the
// identity key is parsed by parseContents.
func decodeContents(b []byte) (*rawContents, error) {
	var r rawContents
	var ok bool
	if r.jid, b, ok = readStr(b, envelopexml.MaxJIDLen); !ok {
		return nil, fmt.Errorf("%w: identity JID", ErrCorrupt)
	}
	if r.der, b, ok = readStr(b, maxKeyDER); !ok {
		return nil, fmt.Errorf("%w: identity key", ErrCorrupt)
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: contact count", ErrCorrupt)
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if n > maxContactKeys || uint64(n)*(4+1+4+envelope.ContactKeySize) > uint64(len(b)) {
		return nil, fmt.Errorf("%w: contact count %d", ErrCorrupt, n)
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
		r.contacts = append(r.contacts, newEntry(string(contact), ck))
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(b))
	}
	return &r, nil
}

// parseContents decodes what marshal encodes and checks it: decodeContents,
// then a valid identity.
func parseContents(b []byte) (*contents, error) {
	r, err := decodeContents(b)
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
	return &contents{id: id, contacts: r.contacts}, nil
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

// A Store is an open key store file. Its methods are safe for concurrent
// use. Formatting a Store with the fmt package prints only its path.
type Store struct {
	path string

	mu       sync.Mutex
	hdr      header   // of the file as last written; the nonce is replaced on each write
	fileKey  []byte   // Argon2id output, kept so that writes need no passphrase
	contents contents // at most MaxKeysPerContact added per contact
}

// Create makes a new key store file at path holding the identity id,
// encrypted under a key derived from passphrase, and returns it open. It
// never replaces anything: if path exists (even as a dangling symbolic
// link), it fails with ErrExists, also when another process creates it at
// the same time. It runs Argon2id with m=64 MiB, which takes a fraction of
// a second.
func Create(path string, passphrase []byte, id envelope.Identity) (*Store, error) {
	return create(path, passphrase, id, params{time: defaultTime, memory: defaultMemory, threads: defaultThreads})
}

func create(path string, passphrase []byte, id envelope.Identity, p params) (*Store, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("keystore: empty passphrase")
	}
	if id.PrivateKey() == nil {
		return nil, errors.New("keystore: zero Identity")
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	// Fail before the expensive Argon2id if the file exists; the link in
	// writeFile closes the race.
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrExists, path, fs.ErrExist)
	}
	s := &Store{path: path, hdr: header{params: p}, contents: contents{id: id}}
	rand.Read(s.hdr.salt[:])
	s.fileKey = deriveKey(passphrase, &s.hdr)
	if err := s.write(false); err != nil {
		return nil, err
	}
	return s, nil
}

// Open reads the key store file at path with passphrase. It fails with
// ErrWrongPassphrase if the file does not decrypt, with ErrBadParams if its
// Argon2id parameters are out of bounds (before running Argon2id), with
// ErrUnsupportedVersion for a later format, and with ErrCorrupt for anything
// else that is not a valid key store.
func Open(path string, passphrase []byte) (*Store, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("keystore: read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrCorrupt, maxFileSize)
	}
	h, sealed, err := parseHeader(data)
	if err != nil {
		return nil, err
	}
	key := deriveKey(passphrase, h)
	plain, err := newGCM(key).Open(nil, h.nonce[:], sealed, data[:headerSize])
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	c, err := parseContents(plain)
	if err != nil {
		return nil, err
	}
	return &Store{path: path, hdr: *h, fileKey: key, contents: *c}, nil
}

// Identity returns the device's identity.
func (s *Store) Identity() envelope.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.contents.id
}

// ContactKey returns the key shared with contact whose ID is id, and false if
// there is none. It implements envelope.ContactKeys.
func (s *Store) ContactKey(contact string, id []byte) (envelope.ContactKey, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.contents.contacts {
		if e.contact == contact && e.id == string(id) {
			return e.key, true
		}
	}
	return envelope.ContactKey{}, false
}

// CurrentContactKey returns the key to seal with for contact: the one added
// last. It returns false if there is none.
func (s *Store) CurrentContactKey(contact string) (envelope.ContactKey, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.contents.contacts) - 1; i >= 0; i-- {
		if e := s.contents.contacts[i]; e.contact == contact {
			return e.key, true
		}
	}
	return envelope.ContactKey{}, false
}

// AddContactKey stores k for the bare JID contact, as its current key, and
// rewrites the file atomically before it returns. Adding a key already
// stored for contact changes nothing: an old key-share seen again does not
// become current again. When contact has MaxKeysPerContact keys already,
// the oldest of them is forgotten. On an error the store is unchanged in
// memory, and the file holds either the old contents or the new.
func (s *Store) AddContactKey(contact string, k envelope.ContactKey) error {
	if err := envelopexml.CheckJID(contact); err != nil {
		return fmt.Errorf("keystore: contact: %w", err)
	}
	if k.Bytes() == nil {
		return errors.New("keystore: zero ContactKey")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.contents.contacts {
		if e.contact == contact && e.key.Equal(k) {
			return nil
		}
	}
	old := s.contents.contacts
	next := make([]contactEntry, 0, len(old)+1)
	n := 0 // keys of contact in old
	for _, e := range old {
		if e.contact == contact {
			n++
		}
	}
	for _, e := range old {
		if e.contact == contact && n >= MaxKeysPerContact {
			n-- // forget the oldest, in the order added
			continue
		}
		next = append(next, e)
	}
	if len(next) >= maxContactKeys {
		return fmt.Errorf("keystore: more than %d contact keys", maxContactKeys)
	}
	s.contents.contacts = append(next, newEntry(contact, k))
	if err := s.write(true); err != nil {
		s.contents.contacts = old
		return err
	}
	return nil
}

// ContactKeyCount returns how many keys the store holds for contact.
func (s *Store) ContactKeyCount(contact string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.contents.contacts {
		if e.contact == contact {
			n++
		}
	}
	return n
}

// Path returns the file's path. The device keeps its other state (the
// replay cache) beside it.
func (s *Store) Path() string { return s.path }

// String returns the path of the file, never a key.
func (s *Store) String() string { return "keystore.Store(" + s.path + ")" }

// Format makes every fmt verb print String.
func (s *Store) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// write seals the contents under a fresh nonce and writes the file
// atomically: replacing the old one, or (for Create) only if none exists.
// s.mu is held, or s is not shared yet.
func (s *Store) write(replace bool) error {
	plain, err := s.contents.marshal()
	if err != nil {
		return err
	}
	h := s.hdr
	rand.Read(h.nonce[:])
	hb := h.marshal()
	data := newGCM(s.fileKey).Seal(hb, h.nonce[:], plain, hb)
	if len(data) > maxFileSize {
		return fmt.Errorf("keystore: file would exceed %d bytes", maxFileSize)
	}
	if err := writeFile(s.path, data, replace); err != nil {
		return err
	}
	s.hdr = h
	return nil
}

func newGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("keystore: " + err.Error()) // internal: the key is always 32 bytes
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic("keystore: " + err.Error())
	}
	return g
}

// writeFile writes data to path atomically, with mode 0600: to a temporary
// file in the same directory, synced, then renamed over path (replace) or
// hard-linked to path, which fails if path exists (!replace); then the
// directory is synced so that the new name survives a crash.
func writeFile(path string, data []byte, replace bool) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("keystore: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("keystore: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("keystore: sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keystore: close %s: %w", tmp, err)
	}
	if replace {
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("keystore: %w", err)
		}
	} else {
		if err := os.Link(tmp, path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: %s: %w", ErrExists, path, fs.ErrExist)
			}
			return fmt.Errorf("keystore: %w", err)
		}
		os.Remove(tmp)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // Go cannot sync a directory on Windows
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keystore: sync %s: %w", dir, err)
	}
	return nil
}
