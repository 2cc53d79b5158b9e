package keydir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/mod/sumdb/note"

	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

// The signer's state file keeps the last checkpoint the server signed,
// outside the database and beside the signing key, so that a database
// rolled back (a restored backup, a lagging replica promoted) cannot make
// the signer sign a second tree of a size it already signed, or a tree
// that does not extend it: a fork. docs/keydir.md, "The signer's state".
//
//	clinkme-keydir signer-state v1\n
//	<the signed checkpoint note, byte for byte>
const stateHeader = "clinkme-keydir signer-state v1\n"

// ErrBadState is wrapped by every ParseState error.
var ErrBadState = errors.New("keydir: malformed signer state")

// ParseState parses a signer state file's content: the header, then a
// checkpoint note that v verifies, of v's origin. It returns the
// checkpoint and the note.
func ParseState(b []byte, v note.Verifier) (keylog.Checkpoint, []byte, error) {
	msg, ok := bytes.CutPrefix(b, []byte(stateHeader))
	if !ok {
		return keylog.Checkpoint{}, nil, fmt.Errorf("%w: no %q header", ErrBadState, stateHeader[:len(stateHeader)-1])
	}
	cp, err := keylog.OpenCheckpoint(msg, v)
	if err != nil {
		return keylog.Checkpoint{}, nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	return cp, msg, nil
}

// WriteState replaces the state file at path with the checkpoint note
// msg, durably: a temporary file in the same directory, written and
// synced, renamed over path, and the directory synced, so that after a
// crash the file holds either the old checkpoint or the new one, never
// less than what was served.
func WriteState(path string, msg []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".keydir-state-*")
	if err != nil {
		return fmt.Errorf("keydir: signer state: %w", err)
	}
	name := tmp.Name()
	_, err = tmp.Write(append([]byte(stateHeader), msg...))
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("keydir: signer state %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keydir: signer state: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("keydir: signer state: sync %s: %w", dir, err)
	}
	return nil
}

// advanceState writes msg, a checkpoint of size, as the state at path
// unless the file already holds a larger one. Two clinkds sign for a
// moment at once during a handoff (docs/expiry.md), each from the same
// database but each with its own idea of the last size: without this,
// the one that signed the smaller size, writing last, would put the
// floor below what the other had served. The check and the write hold
// an exclusive lock on path + ".lock", so that they do not interleave.
func advanceState(path string, msg []byte, size int64, v note.Verifier) error {
	unlock, err := lockFile(path + ".lock")
	if err != nil {
		return fmt.Errorf("keydir: signer state: %w", err)
	}
	defer unlock()
	if b, err := os.ReadFile(path); err == nil {
		if cur, _, err := ParseState(b, v); err == nil && cur.Size > size {
			return nil
		}
	}
	return WriteState(path, msg)
}

// Adopt signs the tree the database holds now and makes it the signer's
// state: after clinkd keys migrate (a v0 log had no state file), or to
// recreate a lost state file. With a state file present it refuses
// unless the database extends the checkpoint in it, and with expect (a
// checkpoint an auditor kept, verified by v) unless the database extends
// that too: a database restored to before what devices saw must not be
// adopted. It returns the checkpoint signed.
func Adopt(ctx context.Context, store *logdb.Store, s note.Signer, v note.Verifier, stateFile string, expect []byte) (keylog.Checkpoint, error) {
	size, err := store.Size(ctx)
	if err != nil {
		return keylog.Checkpoint{}, err
	}
	hr := store.HashReader(ctx)
	root, err := keylog.TreeHash(size, hr)
	if err != nil {
		return keylog.Checkpoint{}, fmt.Errorf("keydir: adopt: %w", err)
	}
	extends := func(old keylog.Checkpoint, what string) error {
		if size < old.Size {
			return fmt.Errorf("%w: the database has %d entries, %s %d", ErrRolledBack, size, what, old.Size)
		}
		h, err := keylog.TreeHash(old.Size, hr)
		if err != nil || h != old.Hash {
			return fmt.Errorf("%w: at size %d (%s)", ErrDiverged, old.Size, what)
		}
		return nil
	}
	if b, err := os.ReadFile(stateFile); err == nil {
		cp, _, err := ParseState(b, v)
		if err != nil {
			return keylog.Checkpoint{}, err
		}
		if err := extends(cp, "the state file's checkpoint"); err != nil {
			return keylog.Checkpoint{}, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return keylog.Checkpoint{}, fmt.Errorf("keydir: %w", err)
	}
	if expect != nil {
		cp, err := keylog.OpenCheckpoint(expect, v)
		if err != nil {
			return keylog.Checkpoint{}, fmt.Errorf("keydir: expected checkpoint: %w", err)
		}
		if err := extends(cp, "the expected checkpoint"); err != nil {
			return keylog.Checkpoint{}, err
		}
	}
	cp := keylog.Checkpoint{Origin: s.Name(), Size: size, Hash: root}
	msg, err := keylog.SignCheckpoint(cp, s)
	if err != nil {
		return keylog.Checkpoint{}, err
	}
	if err := WriteState(stateFile, msg); err != nil {
		return keylog.Checkpoint{}, err
	}
	return cp, nil
}
