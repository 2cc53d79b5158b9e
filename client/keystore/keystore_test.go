package keystore_test

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
)

var loadIdentity = sync.OnceValues(func() (envelope.Identity, error) {
	data, err := os.ReadFile(filepath.Join("testdata", "identity.pem"))
	if err != nil {
		return envelope.Identity{}, err
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return envelope.Identity{}, errors.New("identity.pem: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return envelope.Identity{}, err
	}
	return envelope.NewIdentity("alice@example.org", k.(*rsa.PrivateKey))
})

func identity(t testing.TB) envelope.Identity {
	t.Helper()
	id, err := loadIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

var pass = []byte("correct horse battery staple")

func newStore(t *testing.T) (*keystore.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.clinkks")
	s, err := keystore.CreateFast(path, pass, identity(t))
	if err != nil {
		t.Fatalf("Create() = %v", err)
	}
	return s, path
}

func TestCreateOpen(t *testing.T) {
	t.Parallel()
	id := identity(t)
	s, path := newStore(t)
	if got := s.Identity(); got.JID() != id.JID() || !got.PrivateKey().Equal(id.PrivateKey()) {
		t.Fatalf("Identity() = %v, want %v", got, id)
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	if got := o.Identity(); got.JID() != id.JID() || !got.PrivateKey().Equal(id.PrivateKey()) {
		t.Fatalf("Open().Identity() = %v, want %v", got, id)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	assertNoTemp(t, filepath.Dir(path))
}

// TestDefaultParams creates a store with the real Argon2id parameters once.
func TestDefaultParams(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "keys")
	start := time.Now()
	if _, err := keystore.Create(path, pass, identity(t)); err != nil {
		t.Fatalf("Create() = %v", err)
	}
	created := time.Since(start)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// t=3, m=65536 KiB, p=4 (RFC 9106, second recommended option).
	if got, want := data[20:29], []byte{0, 0, 0, 3, 0, 1, 0, 0, 4}; !bytes.Equal(got, want) {
		t.Errorf("Argon2id parameters = %x, want %x", got, want)
	}
	start = time.Now()
	if _, err := keystore.Open(path, pass); err != nil {
		t.Fatalf("Open() = %v", err)
	}
	t.Logf("Create %v, Open %v with t=3 m=64MiB p=4", created, time.Since(start))
}

func TestWrongPassphrase(t *testing.T) {
	t.Parallel()
	_, path := newStore(t)
	for _, p := range [][]byte{[]byte("Correct horse battery staple"), pass[:len(pass)-1], nil} {
		_, err := keystore.Open(path, p)
		if !errors.Is(err, keystore.ErrWrongPassphrase) {
			t.Errorf("Open(%q) = %v, want ErrWrongPassphrase", p, err)
		}
		if err != nil && strings.Contains(err.Error(), string(pass)) {
			t.Errorf("Open() error %q shows the passphrase", err)
		}
	}
}

func TestCreateRefusesToReplace(t *testing.T) {
	t.Parallel()
	s, path := newStore(t)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = keystore.CreateFast(path, []byte("other"), identity(t))
	if !errors.Is(err, keystore.ErrExists) || !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create(existing) = %v, want ErrExists and fs.ErrExist", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("Create(existing) changed the file")
	}
	if _, err := keystore.Open(path, pass); err != nil {
		t.Fatalf("Open() after refused Create = %v", err)
	}
	_ = s

	// Anything at the path counts: a directory, a dangling symbolic link.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d", "l"} {
		if _, err := keystore.CreateFast(filepath.Join(dir, name), pass, identity(t)); !errors.Is(err, keystore.ErrExists) {
			t.Errorf("Create(%s) = %v, want ErrExists", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "nowhere")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create through a dangling link created its target: %v", err)
	}
	assertNoTemp(t, dir)
}

// TestCreateRace starts several Creates of one path at once: exactly one
// wins, and the file is the winner's.
func TestCreateRace(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "keys")
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = keystore.CreateFast(path, fmt.Appendf(nil, "pass %d", i), identity(t))
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("Create %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, keystore.ErrExists):
			t.Fatalf("Create %d = %v, want nil or ErrExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no Create succeeded")
	}
	if _, err := keystore.Open(path, fmt.Appendf(nil, "pass %d", winner)); err != nil {
		t.Fatalf("Open(winner's passphrase) = %v", err)
	}
	assertNoTemp(t, filepath.Dir(path))
}

func TestContactKeys(t *testing.T) {
	t.Parallel()
	s, path := newStore(t)
	bob, carol := "bob@example.org", "carol@example.net"
	if _, ok := s.CurrentContactKey(bob); ok {
		t.Fatal("CurrentContactKey(bob) found a key in a new store")
	}
	k1, k2, k3 := envelope.NewContactKey(), envelope.NewContactKey(), envelope.NewContactKey()
	for _, a := range []struct {
		contact string
		k       envelope.ContactKey
	}{{bob, k1}, {carol, k3}, {bob, k2}, {bob, k1}} { // k1 again: no change
		if err := s.AddContactKey(a.contact, a.k); err != nil {
			t.Fatalf("AddContactKey(%s) = %v", a.contact, err)
		}
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*keystore.Store{s, o} {
		if k, ok := st.CurrentContactKey(bob); !ok || !k.Equal(k2) {
			t.Errorf("CurrentContactKey(bob) = %v, %v; want k2 %v", k, ok, k2)
		}
		if k, ok := st.CurrentContactKey(carol); !ok || !k.Equal(k3) {
			t.Errorf("CurrentContactKey(carol) = %v, %v; want k3 %v", k, ok, k3)
		}
		for _, c := range []struct {
			contact string
			k       envelope.ContactKey
			want    bool
		}{{bob, k1, true}, {bob, k2, true}, {bob, k3, false}, {carol, k3, true}, {carol, k1, false}, {"dave@example.org", k1, false}} {
			got, ok := st.ContactKey(c.contact, c.k.ID())
			if ok != c.want || (ok && !got.Equal(c.k)) {
				t.Errorf("ContactKey(%s, %v) = %v, %v; want %v", c.contact, c.k, got, ok, c.want)
			}
		}
	}
	if err := s.AddContactKey("bob@example.org/phone", k1); err == nil {
		t.Error("AddContactKey(full JID) = nil error")
	}
	if err := s.AddContactKey(bob, envelope.ContactKey{}); err == nil {
		t.Error("AddContactKey(zero key) = nil error")
	}
	assertNoTemp(t, filepath.Dir(path))
}

// TestContactKeyBound: a contact keeps at most MaxKeysPerContact keys;
// each key past it forgets that contact's oldest, never another
// contact's, and the file does not grow.
func TestContactKeyBound(t *testing.T) {
	t.Parallel()
	s, path := newStore(t)
	bob, carol := "bob@example.org", "carol@example.net"
	carolKey := envelope.NewContactKey()
	if err := s.AddContactKey(carol, carolKey); err != nil {
		t.Fatal(err)
	}
	var bobKeys []envelope.ContactKey
	var size int64
	for i := range 2*keystore.MaxKeysPerContact + 1 {
		k := envelope.NewContactKey()
		bobKeys = append(bobKeys, k)
		if err := s.AddContactKey(bob, k); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if i+1 == keystore.MaxKeysPerContact {
			size = fi.Size()
		} else if i+1 > keystore.MaxKeysPerContact && fi.Size() != size {
			t.Errorf("after %d keys for bob the file has %d bytes, want %d as after %d", i+1, fi.Size(), size, keystore.MaxKeysPerContact)
		}
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*keystore.Store{s, o} {
		if n := st.ContactKeyCount(bob); n != keystore.MaxKeysPerContact {
			t.Errorf("ContactKeyCount(bob) = %d, want %d", n, keystore.MaxKeysPerContact)
		}
		for i, k := range bobKeys {
			want := i >= len(bobKeys)-keystore.MaxKeysPerContact // the latest only
			if _, ok := st.ContactKey(bob, k.ID()); ok != want {
				t.Errorf("ContactKey(bob, key %d of %d) found = %v, want %v", i+1, len(bobKeys), ok, want)
			}
		}
		if k, ok := st.CurrentContactKey(bob); !ok || !k.Equal(bobKeys[len(bobKeys)-1]) {
			t.Errorf("CurrentContactKey(bob) = %v, %v; want the last added", k, ok)
		}
		if _, ok := st.ContactKey(carol, carolKey.ID()); !ok || st.ContactKeyCount(carol) != 1 {
			t.Errorf("carol's key is gone after bob's keys went over the bound")
		}
	}
}

// TestOpenEnvelope uses a store as the ContactKeys of envelope.Open.
func TestOpenEnvelope(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	me := s.Identity()
	k := envelope.NewContactKey()
	if err := s.AddContactKey("bob@example.org", k); err != nil {
		t.Fatal(err)
	}
	// A device of alice (same identity) sealed this to bob.
	e, err := envelope.SealEnhanced(me, "bob@example.org", k, envelope.Header{ID: "1", Time: time.Now()},
		envelope.Content{Kind: envelope.KindText, Text: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := envelope.Open(e, me, me.PublicKey(), s)
	if err != nil || c.Text != "hi" {
		t.Fatalf("Open(with store) = %v, %v", c, err)
	}
}

func TestAtomicReplace(t *testing.T) {
	t.Parallel()
	s, path := newStore(t)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// A reader that has the old file open keeps reading the old file.
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldData, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddContactKey("bob@example.org", envelope.NewContactKey()); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Error("AddContactKey rewrote the file in place; want a new file renamed over it")
	}
	if after.Mode().Perm() != 0o600 {
		t.Errorf("mode after rewrite = %v, want 0600", after.Mode().Perm())
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(old); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), oldData) {
		t.Error("the old file changed under a reader")
	}
	newData, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(newData[keystore.HeaderSize-12:keystore.HeaderSize], oldData[keystore.HeaderSize-12:keystore.HeaderSize]) {
		t.Error("rewrite reused the nonce")
	}
	if !bytes.Equal(newData[:keystore.HeaderSize-12], oldData[:keystore.HeaderSize-12]) {
		t.Error("rewrite changed the parameters or salt")
	}
	assertNoTemp(t, filepath.Dir(path))
}

// TestWriteFailureKeepsFile makes the rewrite fail (the directory is gone)
// and checks that the store in memory is unchanged.
func TestWriteFailureKeepsFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "keys")
	if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := keystore.CreateFast(path, pass, identity(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Dir(path)); err != nil {
		t.Fatal(err)
	}
	k := envelope.NewContactKey()
	if err := s.AddContactKey("bob@example.org", k); err == nil {
		t.Fatal("AddContactKey(directory gone) = nil error")
	}
	if _, ok := s.CurrentContactKey("bob@example.org"); ok {
		t.Error("a failed AddContactKey left the key in memory")
	}
}

// craft writes a file made from a valid one with edit applied.
func craft(t *testing.T, edit func(b []byte) []byte) string {
	t.Helper()
	_, path := newStore(t)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, edit(bytes.Clone(data)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOpenBadFiles(t *testing.T) {
	t.Parallel()
	u32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
	}
	tests := []struct {
		name string
		edit func([]byte) []byte
		want error
	}{
		{"memory 4 TiB", u32(24, 1<<32-1), keystore.ErrBadParams},
		{"memory 257 MiB", u32(24, 257<<10), keystore.ErrBadParams},
		{"memory below 8p", u32(24, 7), keystore.ErrBadParams},
		{"time 0", u32(20, 0), keystore.ErrBadParams},
		{"time 11", u32(20, 11), keystore.ErrBadParams},
		{"time 2^32-1", u32(20, 1<<32-1), keystore.ErrBadParams},
		{"threads 0", func(b []byte) []byte { b[28] = 0; return b }, keystore.ErrBadParams},
		{"threads 17", func(b []byte) []byte { b[28] = 17; return b }, keystore.ErrBadParams},
		{"memory 128 KiB", u32(24, 128), keystore.ErrWrongPassphrase}, // in bounds, but the header is authenticated
		{"salt changed", func(b []byte) []byte { b[30] ^= 1; return b }, keystore.ErrWrongPassphrase},
		{"nonce changed", func(b []byte) []byte { b[keystore.HeaderSize-1] ^= 1; return b }, keystore.ErrWrongPassphrase},
		{"ciphertext changed", func(b []byte) []byte { b[len(b)/2] ^= 1; return b }, keystore.ErrWrongPassphrase},
		{"tag changed", func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, keystore.ErrWrongPassphrase},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, keystore.ErrWrongPassphrase},
		{"header only", func(b []byte) []byte { return b[:keystore.HeaderSize] }, keystore.ErrCorrupt},
		{"empty", func(b []byte) []byte { return nil }, keystore.ErrCorrupt},
		{"not a key store", func(b []byte) []byte { return []byte("-----BEGIN PRIVATE KEY-----\n") }, keystore.ErrCorrupt},
		{"version 3", func(b []byte) []byte { b[18] = '3'; return b }, keystore.ErrUnsupportedVersion},
		{"version 0 header on a version 2 file", func(b []byte) []byte { b[18] = '0'; return b }, keystore.ErrWrongPassphrase}, // the header is authenticated
		{"version 1 header on a version 2 file", func(b []byte) []byte { b[18] = '1'; return b }, keystore.ErrWrongPassphrase},
		{"too large", func(b []byte) []byte { return append(b, make([]byte, 16<<20)...) }, keystore.ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := craft(t, tt.edit)
			start := time.Now()
			_, err := keystore.Open(path, pass)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open() = %v, want %v", err, tt.want)
			}
			if tt.want == keystore.ErrBadParams && time.Since(start) > time.Second {
				t.Errorf("Open(bad parameters) took %v: it must refuse before deriving", time.Since(start))
			}
		})
	}
	if _, err := keystore.Open(filepath.Join(t.TempDir(), "missing"), pass); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want fs.ErrNotExist", err)
	}
}

func TestCreateArguments(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := keystore.CreateFast(filepath.Join(dir, "a"), nil, identity(t)); err == nil {
		t.Error("Create(empty passphrase) = nil error")
	}
	if _, err := keystore.CreateFast(filepath.Join(dir, "b"), pass, envelope.Identity{}); err == nil {
		t.Error("Create(zero Identity) = nil error")
	}
	if _, err := keystore.CreateFast(filepath.Join(dir, "missing", "c"), pass, identity(t)); err == nil {
		t.Error("Create(in a missing directory) = nil error")
	}
	assertNoTemp(t, dir)
}

func TestNoSecretsPrinted(t *testing.T) {
	t.Parallel()
	s, path := newStore(t)
	k := envelope.NewContactKey()
	if err := s.AddContactKey("bob@example.org", k); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%d"} {
		out := fmt.Sprintf(verb, s)
		if out != "keystore.Store("+path+")" {
			t.Errorf("Sprintf(%q, store) = %q", verb, out)
		}
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

// TestVersion0File opens a file that the version 0 code wrote (two
// contact keys, no pins), and writes it as version 2 at its first change.
func TestVersion0File(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("testdata", "v0.clinkks"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatalf("Open(version 0 file) = %v", err)
	}
	bobKey, _ := envelope.ParseContactKey(bytes.Repeat([]byte{7}, envelope.ContactKeySize))
	if sk, ok := s.CurrentSharedKey("bob@example.org"); !ok || !sk.Key.Equal(bobKey) || sk.PeerKey != ([32]byte{}) {
		t.Errorf("CurrentSharedKey(bob) = %v, %v; want the key of the file with no peer key", sk, ok)
	}
	if cp := s.Checkpoint("clink.example.org/keydir"); cp != nil {
		t.Errorf("Checkpoint() of a version 0 file = %q", cp)
	}
	if err := s.SetKeyPin("bob@example.org", keystore.KeyPin{Fingerprint: [32]byte{1}}); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(after, []byte("clinkme keystore v2\n")) {
		t.Fatalf("after a change the file starts %q, want version 2", after[:20])
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := o.ContactKey("bob@example.org", bobKey.ID()); !ok || o.ContactKeyCount("carol@example.net") != 1 {
		t.Error("the contact keys of the version 0 file are gone after it was written as version 2")
	}
	if p, ok := o.KeyPin("bob@example.org"); !ok || p.Fingerprint != ([32]byte{1}) {
		t.Errorf("KeyPin(bob) after reopening = %+v, %v", p, ok)
	}
}

// TestVersion1File opens a file that the version 1 code wrote (a contact
// key, a checkpoint pin, two key pins; testdata/v1.clinkks), keeps all of
// it, has no trust records or alarms, and writes it as version 2 at its
// first change, where trust records, alarms and the own history's count
// survive reopening.
func TestVersion1File(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("testdata", "v1.clinkks"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatalf("Open(version 1 file) = %v", err)
	}
	check := func(s *keystore.Store) {
		t.Helper()
		bobKey, _ := envelope.ParseContactKey(bytes.Repeat([]byte{7}, envelope.ContactKeySize))
		if sk, ok := s.CurrentSharedKey("bob@example.org"); !ok || !sk.Key.Equal(bobKey) || sk.PeerKey != ([32]byte{9}) {
			t.Errorf("CurrentSharedKey(bob) = %v, %v", sk, ok)
		}
		if cp := s.Checkpoint("clink.example.org/keydir"); string(cp) != "clink.example.org/keydir\n3\nAAAA\n\n— sig\n" {
			t.Errorf("Checkpoint() = %q", cp)
		}
		if p, ok := s.KeyPin("carol@example.net"); !ok || p != (keystore.KeyPin{Fingerprint: [32]byte{5}, Ended: true, Version: 3}) {
			t.Errorf("KeyPin(carol) = %+v, %v", p, ok)
		}
	}
	check(s)
	if _, ok := s.Trust("bob@example.org"); ok || len(s.Alarms()) != 0 || s.OwnSeen() != 0 {
		t.Errorf("a version 1 file has trust %v, alarms %v, own seen %d; want none", s.TrustRecords(), s.Alarms(), s.OwnSeen())
	}
	tr := keystore.Trust{State: keystore.TrustChanged, Key: [32]byte{4}, New: [32]byte{6}, WasVerified: true, OldVersion: 2, NewVersion: 4, NewIndex: 12, NewTime: 1764099840, EndKind: "reset", EndIndex: 11}
	alarm := keystore.Alarm{Kind: keystore.AlarmFork, Time: 1764099840, JID: "bob@example.org", Text: "two views", Evidence: [2][]byte{[]byte("a"), []byte("b")}}
	if err := s.SetTrust("bob@example.org", tr); err != nil {
		t.Fatal(err)
	}
	if err := s.AddAlarm(alarm); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOwnSeen(2); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.HasPrefix(after, []byte("clinkme keystore v2\n")) {
		t.Fatalf("after a change the file starts %q, want version 2", after[:20])
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	check(o)
	if got, ok := o.Trust("bob@example.org"); !ok || got != tr {
		t.Errorf("Trust(bob) after reopening = %+v, %v; want %+v", got, ok, tr)
	}
	if a := o.Alarms(); len(a) != 1 || a[0].Text != alarm.Text || string(a[0].Evidence[1]) != "b" {
		t.Errorf("Alarms() after reopening = %+v", a)
	}
	if o.OwnSeen() != 2 {
		t.Errorf("OwnSeen() after reopening = %d, want 2", o.OwnSeen())
	}
}

// TestAlarmsBounded: past 64 alarms the oldest go.
func TestAlarmsBounded(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	for i := range 70 {
		if err := s.AddAlarm(keystore.Alarm{Kind: keystore.AlarmOwnKey, Time: int64(i), Text: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if a := s.Alarms(); len(a) != 64 || a[0].Time != 6 || a[63].Time != 69 {
		t.Fatalf("Alarms() = %d, first at %d; want the newest 64", len(a), a[0].Time)
	}
	if err := s.AddAlarm(keystore.Alarm{Kind: 9}); err == nil {
		t.Error("AddAlarm(kind 9) = nil, want an error")
	}
	if err := s.SetTrust("bob@example.org", keystore.Trust{State: 0}); err == nil {
		t.Error("SetTrust(state 0) = nil, want an error")
	}
}

// TestSharedKeys: a contact key keeps the contact's identity key it was
// shared with, across reopening; adding it again with a peer key that
// was not known records it without making it current again.
func TestSharedKeys(t *testing.T) {
	t.Parallel()
	s, path := newStore(t)
	bob := "bob@example.org"
	k1, k2 := envelope.NewContactKey(), envelope.NewContactKey()
	fp1, fp2 := [32]byte{1}, [32]byte{2}
	if err := s.AddContactKey(bob, k1); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSharedKey(bob, keystore.SharedKey{Key: k2, PeerKey: fp2}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSharedKey(bob, keystore.SharedKey{Key: k1, PeerKey: fp1}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSharedKey(bob, keystore.SharedKey{Key: k2, PeerKey: fp1}); err != nil { // known already: kept
		t.Fatal(err)
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*keystore.Store{s, o} {
		sk, ok := st.CurrentSharedKey(bob)
		if !ok || !sk.Key.Equal(k2) || sk.PeerKey != fp2 {
			t.Errorf("CurrentSharedKey(bob) = %v, %x, %v; want k2 shared with %x", sk.Key, sk.PeerKey[:1], ok, fp2[:1])
		}
		if n := st.ContactKeyCount(bob); n != 2 {
			t.Errorf("ContactKeyCount(bob) = %d, want 2", n)
		}
	}
	if err := s.AddSharedKey(bob, keystore.SharedKey{}); err == nil {
		t.Error("AddSharedKey(zero key) = nil error")
	}
}

// TestPins: checkpoints by origin and key pins by JID are kept in the
// file, and a change that changes nothing does not write it.
func TestPins(t *testing.T) {
	t.Parallel()
	s, path := newStore(t)
	origins := []string{"b.example/keydir", "a.example/keydir"}
	for i, o := range origins {
		if err := s.SetCheckpoint(o, fmt.Appendf(nil, "%s\n%d\n", o, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetCheckpoint("a.example/keydir", []byte("a.example/keydir\n7\n")); err != nil {
		t.Fatal(err)
	}
	pins := map[string]keystore.KeyPin{
		"carol@example.net": {Fingerprint: [32]byte{3}, Version: 4},
		"bob@example.org":   {Fingerprint: [32]byte{2}, Ended: true, Version: 2},
	}
	for j, p := range pins {
		if err := s.SetKeyPin(j, p); err != nil {
			t.Fatal(err)
		}
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyPin("bob@example.org", pins["bob@example.org"]); err != nil {
		t.Fatal(err)
	}
	if after, err := os.Stat(path); err != nil || !os.SameFile(before, after) {
		t.Errorf("setting a pin to what it was rewrote the file (%v)", err)
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*keystore.Store{s, o} {
		if got := string(st.Checkpoint("a.example/keydir")); got != "a.example/keydir\n7\n" {
			t.Errorf("Checkpoint(a) = %q", got)
		}
		if got := string(st.Checkpoint("b.example/keydir")); got != "b.example/keydir\n0\n" {
			t.Errorf("Checkpoint(b) = %q", got)
		}
		for j, want := range pins {
			if p, ok := st.KeyPin(j); !ok || p != want {
				t.Errorf("KeyPin(%s) = %+v, %v; want %+v", j, p, ok, want)
			}
		}
		if _, ok := st.KeyPin("dave@example.org"); ok {
			t.Error("KeyPin(dave) found a pin never set")
		}
	}
	for _, bad := range []struct {
		jid string
		p   keystore.KeyPin
	}{{"bob@example.org/phone", keystore.KeyPin{}}, {"bob@example.org", keystore.KeyPin{Version: -1}}} {
		if err := s.SetKeyPin(bad.jid, bad.p); err == nil {
			t.Errorf("SetKeyPin(%q, %+v) = nil error", bad.jid, bad.p)
		}
	}
	if err := s.SetCheckpoint("", []byte("x")); err == nil {
		t.Error("SetCheckpoint(no origin) = nil error")
	}
}

// TestExportImport: an exported store imports on another device whole:
// identity, contact keys with their peer keys, pins; sealed there with
// that device's parameters. Import never replaces a file, and refuses a
// wrong passphrase.
func TestExportImport(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	k := envelope.NewContactKey()
	if err := s.AddSharedKey("bob@example.org", keystore.SharedKey{Key: k, PeerKey: [32]byte{9}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCheckpoint("clink.example.org/keydir", []byte("checkpoint")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKeyPin("bob@example.org", keystore.KeyPin{Fingerprint: [32]byte{9}}); err != nil {
		t.Fatal(err)
	}
	data, err := s.Export(pass, keystore.MobileParams())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "imported")
	if _, err := keystore.Import(path, data, []byte("not it"), keystore.MobileParams()); !errors.Is(err, keystore.ErrWrongPassphrase) {
		t.Fatalf("Import(wrong passphrase) = %v, want ErrWrongPassphrase", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused Import left a file: %v", err)
	}
	imp, err := keystore.Import(path, data, pass, keystore.MobileParams())
	if err != nil {
		t.Fatal(err)
	}
	o, err := keystore.Open(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*keystore.Store{imp, o} {
		if !st.Identity().PrivateKey().Equal(s.Identity().PrivateKey()) {
			t.Error("the imported identity differs")
		}
		if sk, ok := st.CurrentSharedKey("bob@example.org"); !ok || !sk.Key.Equal(k) || sk.PeerKey != ([32]byte{9}) {
			t.Errorf("imported CurrentSharedKey(bob) = %v, %v", sk, ok)
		}
		if string(st.Checkpoint("clink.example.org/keydir")) != "checkpoint" {
			t.Error("the imported store lost the pinned checkpoint")
		}
		if p, ok := st.KeyPin("bob@example.org"); !ok || p.Fingerprint != ([32]byte{9}) {
			t.Error("the imported store lost bob's key pin")
		}
		if st.Params() != keystore.MobileParams() {
			t.Errorf("imported Params() = %+v, want MobileParams %+v", st.Params(), keystore.MobileParams())
		}
	}
	if _, err := keystore.Import(path, data, pass, keystore.MobileParams()); !errors.Is(err, keystore.ErrExists) {
		t.Errorf("Import(over a file) = %v, want ErrExists", err)
	}
	assertNoTemp(t, filepath.Dir(path))
}

// TestParamsFloor: the parameters of a new file are never below the
// floor, the device classes' parameters are above it, and Open still
// reads what is within its bounds.
func TestParamsFloor(t *testing.T) {
	t.Parallel()
	for _, p := range []keystore.Params{keystore.DesktopParams(), keystore.MobileParams()} {
		if p.Time < keystore.MinTime || p.MemoryKiB < keystore.MinMemoryKiB || p.Threads < 1 {
			t.Errorf("%+v is below the floor", p)
		}
	}
	if p := keystore.DesktopParams(); p != (keystore.Params{Time: 3, MemoryKiB: 64 << 10, Threads: 4}) {
		t.Errorf("DesktopParams() = %+v, want RFC 9106's second recommendation", p)
	}
	s, _ := newStore(t) // below the floor, as tests make them: Open reads it
	dir := t.TempDir()
	for _, p := range []keystore.Params{
		{Time: keystore.MinTime - 1, MemoryKiB: 64 << 10, Threads: 1},
		{Time: 3, MemoryKiB: keystore.MinMemoryKiB - 1, Threads: 1},
		{Time: 3, MemoryKiB: 64 << 10, Threads: 0},
	} {
		if _, err := keystore.CreateParams(filepath.Join(dir, "k"), pass, identity(t), p); !errors.Is(err, keystore.ErrBadParams) {
			t.Errorf("CreateParams(%+v) = %v, want ErrBadParams", p, err)
		}
		if _, err := s.Export(pass, p); !errors.Is(err, keystore.ErrBadParams) {
			t.Errorf("Export(%+v) = %v, want ErrBadParams", p, err)
		}
	}
	assertNoTemp(t, dir)
}
