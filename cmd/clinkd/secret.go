package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/clinkme/clinkd/daemon"
)

// runSecret makes a component secret (link.secret and the XMPP server's
// component password): 256 bits from crypto/rand as 64 hex digits, which
// Prosody's Lua, ejabberd's YAML and environment variables all take as
// they are. It prints it, or writes it to a new file readable only by its
// owner; it never logs it and never takes it on the command line.
func runSecret(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := newFlags("secret", stderr)
	out := fl.String("out", "", "write the secret to `file` (created 0600, never overwritten) instead of printing it")
	if err := parse(fl, args); err != nil {
		return err
	}
	secret := newSecret()
	if *out == "" {
		fmt.Fprintln(stdout, secret)
		return nil
	}
	if err := writeNew(*out, []byte(secret+"\n")); err != nil {
		return err
	}
	// The same command makes every secret clinkd shares (the component's,
	// coturn's, the bridge's, the admin token, the database password), so
	// the note names none in particular.
	fmt.Fprintf(stderr, "a 256-bit secret is in %s (mode 0600): give the same value to the program that shares it (docs/operators.md, \"Rotate a secret\", names each)\n", *out)
	return nil
}

// newSecret returns 32 random bytes in hex. A draw that fails the
// component-secret rule (fewer than 8 different hex digits among 64: a
// chance of about 1 in 10^19) is drawn again, so that what clinkd makes
// clinkd always accepts.
func newSecret() string {
	for {
		b := make([]byte, 32)
		_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
		if s := hex.EncodeToString(b); daemon.CheckLinkSecret(s) == nil {
			return s
		}
	}
}

// writeNew creates path with mode 0600 and writes data, refusing a file
// that exists: an operator who runs the command twice must not lose the
// secret the server already has.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists: clinkd secret never overwrites a secret (remove the file first)", path)
	}
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
