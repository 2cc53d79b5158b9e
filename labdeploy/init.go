package labdeploy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/clinkme/clinkd/lab"
)

// postgresUID is the postgres user of the official postgres image, which
// refuses a TLS key that others can read.
const postgresUID = 999

// LabGID is the group every service of the container lab joins
// (group_add in docker/compose.yaml) to read the secrets in its volume.
const LabGID = 1500

// InitDir fills dir with what the container lab (docker/compose.yaml)
// needs and no repository may hold: a private CA, certificates for the
// XMPP server, coturn, PostgreSQL and clinkd's public listener, and random
// secrets. It is idempotent: a second run keeps what exists, so restarting
// the lab keeps its accounts and keys.
func InitDir(dir, domain, component, turnRealm string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("clinklab init: %w", err)
	}
	if exists(filepath.Join(dir, "database.url")) {
		return nil // done before; the last file written below
	}
	ca, err := lab.NewCA(dir)
	if err != nil {
		return fmt.Errorf("clinklab init: %w", err)
	}
	issue := []struct {
		name  string
		hosts []string
	}{
		{"xmpp", []string{domain, component, "localhost"}},
		{"turn", []string{turnRealm, "localhost"}},
		{"postgres", []string{"postgres"}},
		{"clinkd-public", []string{"localhost", "127.0.0.1", domain}},
	}
	for _, c := range issue {
		if _, _, err := ca.Issue(dir, c.name, c.hosts...); err != nil {
			return fmt.Errorf("clinklab init: %s certificate: %w", c.name, err)
		}
	}
	// Nothing ever needs the CA key again: certificates are issued once.
	if err := os.Remove(filepath.Join(dir, "ca.key")); err != nil {
		return fmt.Errorf("clinklab init: %w", err)
	}
	componentSecret, turnSecret, pgPass := randomSecret(), randomSecret(), randomSecret()
	files := []struct{ name, body string }{
		{"component.secret", componentSecret + "\n"},
		{"turn.secret", turnSecret + "\n"},
		{"postgres.password", pgPass + "\n"},
		{"ejabberd-secrets.yml", fmt.Sprintf("define_macro:\n  COMPONENT_SECRET: %q\n", componentSecret)},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.body), 0o640); err != nil {
			return fmt.Errorf("clinklab init: %w", err)
		}
	}
	url := fmt.Sprintf("postgres://clinkd:%s@postgres:5432/clinkd?sslmode=verify-full&sslrootcert=%s\n", pgPass, filepath.Join(dir, "ca.pem"))
	if err := os.WriteFile(filepath.Join(dir, "database.url"), []byte(url), 0o640); err != nil {
		return fmt.Errorf("clinklab init: %w", err)
	}
	// The services run as different users and each reads some of the
	// volume: secrets and private keys are 0640 root:LabGID, a group every
	// service joins (group_add in compose.yaml), so no other local user
	// reads them; certificates are public. PostgreSQL alone insists on
	// owning its key privately.
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		mode := fs.FileMode(0o640)
		if strings.HasSuffix(p, ".pem") {
			mode = 0o644
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			return os.Chown(p, 0, LabGID)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("clinklab init: %w", err)
	}
	pgKey := filepath.Join(dir, "postgres.key")
	if err := os.Chmod(pgKey, 0o600); err != nil {
		return fmt.Errorf("clinklab init: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(pgKey, postgresUID, postgresUID); err != nil {
			return fmt.Errorf("clinklab init: %w", err)
		}
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return !errors.Is(err, fs.ErrNotExist)
}
