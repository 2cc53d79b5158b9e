// Package keystore keeps a device's state in one local file encrypted at
// rest, in the format specified in docs/keystore.md: the identity (bare JID
// and RSA private key), the contact keys of enhanced envelopes (each with
// the contact's identity key it was shared with), and the pins of the key
// directory (the last checkpoint accepted and the key last seen for each
// JID). Device sync carries the whole file (Export, Import), so a second
// device trusts what the first one verified.
//
// The file is sealed with AES-256-GCM under a key derived from a passphrase
// with Argon2id; its header, which holds the Argon2id parameters and salt, is
// the additional data, so it cannot be changed unnoticed. The parameters
// are chosen per device class (DesktopParams, MobileParams), never below a
// floor (MinTime, MinMemoryKiB). Reading bounds the file size and the
// Argon2id parameters, so a hostile file cannot make Open allocate
// gigabytes or run for minutes.
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
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"

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
	// bounds Open accepts, or parameters for a new file are below the
	// floor.
	ErrBadParams = errors.New("keystore: Argon2id parameters out of bounds")
	// ErrCorrupt: the file is not a key store, is truncated, or its
	// decrypted contents are malformed.
	ErrCorrupt = errors.New("keystore: not a valid key store file")
)

var _ envelope.ContactKeys = (*Store)(nil)

// A Store is an open key store file. Its methods are safe for concurrent
// use. Formatting a Store with the fmt package prints only its path.
type Store struct {
	path string

	mu       sync.Mutex
	hdr      header   // of the file as last written; the nonce is replaced on each write
	fileKey  []byte   // Argon2id output, kept so that writes need no passphrase
	contents contents // at most MaxKeysPerContact added per contact
}

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

// Create makes a new key store file at path holding the identity id,
// encrypted under a key derived from passphrase with DesktopParams, and
// returns it open. It never replaces anything: if path exists (even as a
// dangling symbolic link), it fails with ErrExists, also when another
// process creates it at the same time. Argon2id with m=64 MiB takes a
// fraction of a second to a second.
func Create(path string, passphrase []byte, id envelope.Identity) (*Store, error) {
	return CreateParams(path, passphrase, id, DesktopParams())
}

// CreateParams is Create with the Argon2id parameters of the device's
// class (DesktopParams, MobileParams); parameters below the floor
// (MinTime, MinMemoryKiB) are refused with ErrBadParams.
func CreateParams(path string, passphrase []byte, id envelope.Identity, p Params) (*Store, error) {
	if err := p.checkFloor(); err != nil {
		return nil, err
	}
	return create(path, passphrase, id, p)
}

func create(path string, passphrase []byte, id envelope.Identity, p Params) (*Store, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("keystore: empty passphrase")
	}
	if id.PrivateKey() == nil {
		return nil, errors.New("keystore: zero Identity")
	}
	return createContents(path, passphrase, contents{id: id}, p)
}

// createContents writes c as a new file at path.
func createContents(path string, passphrase []byte, c contents, p Params) (*Store, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	// Fail before the expensive Argon2id if the file exists; the link in
	// writeFile closes the race.
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrExists, path, fs.ErrExist)
	}
	s := &Store{path: path, hdr: header{version: currentVersion, Params: p}, contents: c}
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
// else that is not a valid key store. A file of version 0 is written as
// version 1 at its first change.
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
	h, key, c, err := open(data, passphrase)
	if err != nil {
		return nil, err
	}
	return &Store{path: path, hdr: *h, fileKey: key, contents: *c}, nil
}

// open checks and decrypts the bytes of a key store file.
func open(data, passphrase []byte) (*header, []byte, *contents, error) {
	if len(data) > maxFileSize {
		return nil, nil, nil, fmt.Errorf("%w: larger than %d bytes", ErrCorrupt, maxFileSize)
	}
	h, sealed, err := parseHeader(data)
	if err != nil {
		return nil, nil, nil, err
	}
	key := deriveKey(passphrase, h)
	plain, err := newGCM(key).Open(nil, h.nonce[:], sealed, data[:headerSize])
	if err != nil {
		return nil, nil, nil, ErrWrongPassphrase
	}
	c, err := parseContents(plain, h.version)
	if err != nil {
		return nil, nil, nil, err
	}
	return h, key, c, nil
}

// Params returns the Argon2id parameters of the file.
func (s *Store) Params() Params {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hdr.Params
}

// Identity returns the device's identity.
func (s *Store) Identity() envelope.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.contents.id
}

// A SharedKey is a contact key with the fingerprint (SHA-256 of the
// SubjectPublicKeyInfo) of the contact's identity key it was shared with:
// wrapped for it when this device shared it, or verified with it when
// the contact did. When the contact's identity key changes (a new
// device, a reset), a key shared with the old one is replaced before
// anything is sealed with it again (docs/envelope.md, section 5.4). A
// zero PeerKey means it is not known (a key stored by a file of version
// 0, or by AddContactKey).
type SharedKey struct {
	Key     envelope.ContactKey
	PeerKey [32]byte
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
	sk, ok := s.CurrentSharedKey(contact)
	return sk.Key, ok
}

// CurrentSharedKey is CurrentContactKey with the identity key it was
// shared with.
func (s *Store) CurrentSharedKey(contact string) (SharedKey, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.contents.contacts) - 1; i >= 0; i-- {
		if e := s.contents.contacts[i]; e.contact == contact {
			return SharedKey{Key: e.key, PeerKey: e.peer}, true
		}
	}
	return SharedKey{}, false
}

// AddContactKey is AddSharedKey with the contact's identity key not
// known.
func (s *Store) AddContactKey(contact string, k envelope.ContactKey) error {
	return s.AddSharedKey(contact, SharedKey{Key: k})
}

// AddSharedKey stores sk for the bare JID contact, as its current key, and
// rewrites the file atomically before it returns. Adding a key already
// stored for contact changes nothing (but records the PeerKey if it was
// not known): an old key-share seen again does not become current again.
// When contact has MaxKeysPerContact keys already, the oldest of them is
// forgotten. On an error the store is unchanged in memory, and the file
// holds either the old contents or the new.
func (s *Store) AddSharedKey(contact string, sk SharedKey) error {
	if err := envelopexml.CheckJID(contact); err != nil {
		return fmt.Errorf("keystore: contact: %w", err)
	}
	if sk.Key.Bytes() == nil {
		return errors.New("keystore: zero ContactKey")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.contents.contacts
	for i, e := range old {
		if e.contact == contact && e.key.Equal(sk.Key) {
			if e.peer != ([32]byte{}) || sk.PeerKey == ([32]byte{}) {
				return nil
			}
			next := append([]contactEntry(nil), old...)
			next[i].peer = sk.PeerKey
			return s.replaceContacts(old, next)
		}
	}
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
	return s.replaceContacts(old, append(next, newEntry(contact, sk)))
}

// replaceContacts writes next, or keeps old on an error. s.mu is held.
func (s *Store) replaceContacts(old, next []contactEntry) error {
	s.contents.contacts = next
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
	h.version = currentVersion // a file of version 0 or 1 becomes version 2
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
