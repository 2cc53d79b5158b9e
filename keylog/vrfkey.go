package keylog

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/keylog/ecvrf"
)

// VRF keys are written like C2SP signed-note keys, so that an operator
// handles them as the checkpoint key: a public key is
//
//	<name>+<8 hex digits of key ID>+base64(type ‖ 32-byte public key)
//
// and a private key file holds PRIVATE+VRF+<name>+<key ID>+base64(type ‖
// 32-byte seed). The type is 0xff followed by the suite's name: C2SP
// reserves 0xff for types it assigns no byte to and recommends a longer
// identifier after it (0x03, which a design draft used, is reserved). The
// key ID is SHA-256(name ‖ "\n" ‖ type ‖ public key)[:4], as for note
// keys; note.NewVerifier refuses these keys, so the two kinds cannot be
// swapped. The name is the log's origin.
const vrfKeyType = "\xffECVRF-EDWARDS25519-SHA512-TAI"

// VRFInputPrefix starts the VRF input of a JID: alpha = prefix ‖ the
// canonical bare JID. The version in it changes if the input's form does.
const VRFInputPrefix = "clinkme-keydir vrf v1\n"

// A VRFKey is a parsed VRF public key.
type VRFKey struct {
	Name   string // the log's origin
	Public [32]byte
}

func vrfKeyID(name string, pub []byte) uint32 {
	h := sha256.New()
	h.Write([]byte(name + "\n" + vrfKeyType))
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// String returns the key in its text form.
func (k VRFKey) String() string {
	return fmt.Sprintf("%s+%08x+%s", k.Name, vrfKeyID(k.Name, k.Public[:]), base64.StdEncoding.EncodeToString(append([]byte(vrfKeyType), k.Public[:]...)))
}

// ErrBadVRFKey is wrapped by every ParseVRFKey error.
var ErrBadVRFKey = errors.New("keylog: malformed VRF public key")

// ParseVRFKey parses a VRF public key as VRFKey.String writes it (and
// only so): a valid name, the right key ID, the suite's type, and a
// point that ecvrf accepts as a public key.
func ParseVRFKey(s string) (VRFKey, error) {
	bad := func(what string) (VRFKey, error) { return VRFKey{}, fmt.Errorf("%w: %s", ErrBadVRFKey, what) }
	if len(s) > 1024 {
		return bad("too long")
	}
	// Split from the left: a name has no plus sign, base64 may.
	name, rest, ok1 := strings.Cut(s, "+")
	id, b64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 {
		return bad("want name+id+key")
	}
	if !validKeyName(name) {
		return bad("invalid name")
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(raw) != len(vrfKeyType)+ecvrf.PublicKeySize || !bytes.HasPrefix(raw, []byte(vrfKeyType)) {
		return bad("not base64 of an ECVRF-EDWARDS25519-SHA512-TAI key")
	}
	var k VRFKey
	k.Name = name
	copy(k.Public[:], raw[len(vrfKeyType):])
	if n, err := strconv.ParseUint(id, 16, 32); err != nil || len(id) != 8 || strings.ToLower(id) != id || uint32(n) != vrfKeyID(name, k.Public[:]) {
		return bad("key ID does not match")
	}
	if !ecvrf.ValidPublicKey(k.Public[:]) {
		return bad("not a valid public key")
	}
	if k.String() != s {
		return bad("not in canonical form")
	}
	return k, nil
}

// validKeyName is C2SP signed-note's rule for key names: non-empty, valid
// UTF-8, no Unicode spaces and no plus signs.
func validKeyName(name string) bool {
	if name == "" || !utf8.ValidString(name) || strings.ContainsAny(name, "+") {
		return false
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f || r == 0x85 || r == 0xa0 || r == 0x1680 || (r >= 0x2000 && r <= 0x200a) || r == 0x2028 || r == 0x2029 || r == 0x202f || r == 0x205f || r == 0x3000 {
			return false
		}
	}
	return true
}

// VRFInput returns the VRF input of a canonical bare JID.
func VRFInput(bare string) []byte { return []byte(VRFInputPrefix + bare) }

// Index checks proof, the VRF proof of bare (a canonical bare JID), and
// returns bare's map index: the first 32 bytes of the VRF output.
func (k VRFKey) Index(bare string, proof []byte) ([32]byte, error) {
	beta, err := ecvrf.Verify(k.Public[:], VRFInput(bare), proof)
	if err != nil {
		return [32]byte{}, fmt.Errorf("keylog: VRF proof of %s: %w", bare, err)
	}
	return [32]byte(beta[:32]), nil
}

// A VRFSigner holds the private VRF key: it alone can compute a JID's
// index, which is what keeps the log's indices from being tested against
// a list of guessed JIDs.
type VRFSigner struct {
	key  *ecvrf.PrivateKey
	pub  VRFKey
	seed [32]byte
}

// NewVRFSigner makes a signer named name from a 32-byte seed.
func NewVRFSigner(name string, seed []byte) (*VRFSigner, error) {
	if !validKeyName(name) {
		return nil, fmt.Errorf("keylog: VRF key name %q is not a valid key name", name)
	}
	k, err := ecvrf.NewPrivateKey(seed)
	if err != nil {
		return nil, fmt.Errorf("keylog: %w", err)
	}
	s := &VRFSigner{key: k, pub: VRFKey{Name: name}}
	copy(s.pub.Public[:], k.Public())
	copy(s.seed[:], seed)
	return s, nil
}

// Public returns the public key.
func (s *VRFSigner) Public() VRFKey { return s.pub }

// Index returns bare's map index and the VRF proof of it (bare is a
// canonical bare JID, as ParseBareJID returns it).
func (s *VRFSigner) Index(bare jid.JID) (index [32]byte, proof []byte) {
	beta, pi := s.key.Prove(VRFInput(bare.String()))
	return [32]byte(beta[:32]), pi
}

// privateText is the private key file's line.
func (s *VRFSigner) privateText() string {
	return fmt.Sprintf("PRIVATE+VRF+%s+%08x+%s", s.pub.Name, vrfKeyID(s.pub.Name, s.pub.Public[:]), base64.StdEncoding.EncodeToString(append([]byte(vrfKeyType), s.seed[:]...)))
}

// GenerateVRFKey makes a VRF key named origin (the log's origin), writes
// the private key to path, mode 0600, refusing to overwrite a file, and
// returns the public key, which devices and auditors are given.
func GenerateVRFKey(origin, path string) (pub string, err error) {
	seed := make([]byte, ecvrf.SeedSize)
	rand.Read(seed)
	s, err := NewVRFSigner(origin, seed)
	if err != nil {
		return "", err
	}
	if err := writeNewFile(path, s.privateText()+"\n"); err != nil {
		return "", err
	}
	return s.pub.String(), nil
}

// writeNewFile creates path (0600, never over an existing file) with
// text, removing it again if the write fails.
func writeNewFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keylog: %w", err)
	}
	_, err = f.WriteString(text)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("keylog: write %s: %w", path, err)
	}
	return nil
}

// LoadVRFSigner reads a private VRF key written by GenerateVRFKey. The
// error never quotes the file's content.
func LoadVRFSigner(path string) (*VRFSigner, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keylog: %w", err)
	}
	bad := errors.New("keylog: VRF key file does not hold a private VRF key (clinkd keys genkey makes one)")
	text, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "PRIVATE+VRF+")
	if !ok {
		return nil, bad
	}
	name, rest, ok1 := strings.Cut(text, "+")
	_, b64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 {
		return nil, bad
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(raw) != len(vrfKeyType)+ecvrf.SeedSize || !bytes.HasPrefix(raw, []byte(vrfKeyType)) {
		return nil, bad
	}
	s, err := NewVRFSigner(name, raw[len(vrfKeyType):])
	if err != nil {
		return nil, bad
	}
	if s.privateText() != "PRIVATE+VRF+"+text {
		return nil, bad // a key ID that does not match
	}
	return s, nil
}
