// Package migrate applies clinkd's versioned SQL migrations, which are
// embedded in the binary by the packages that own the tables.
//
// A Set is one package's migrations: files named NNNN_what.sql, applied in
// version order, each exactly once. Versions are never renumbered and an
// applied file is never edited; a change is a new file. All pending
// migrations of a run apply in one transaction under an advisory lock, so
// two clinkd instances starting together cannot both apply them, and a
// failure leaves the schema as it was.
package migrate

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A Set is the migrations of one package.
type Set struct {
	Name string // e.g. "keydir"; the key in the bookkeeping table
	FS   fs.FS  // holds NNNN_what.sql at its root
}

type file struct {
	version int
	name    string
}

func (s Set) files() ([]file, error) {
	ents, err := fs.ReadDir(s.FS, ".")
	if err != nil {
		return nil, fmt.Errorf("migrate: %s: %w", s.Name, err)
	}
	var files []file
	seen := map[int]string{}
	for _, e := range ents {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migrate: %s: %q is not named NNNN_what.sql", s.Name, e.Name())
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrate: %s: %q and %q share version %d", s.Name, prev, e.Name(), v)
		}
		seen[v] = e.Name()
		files = append(files, file{v, e.Name()})
	}
	slices.SortFunc(files, func(a, b file) int { return a.version - b.version })
	return files, nil
}

// lockKey is an arbitrary constant for pg_advisory_xact_lock; it only has
// to be the same for every clinkd.
const lockKey = 0x636c696e6b64 // "clinkd"

// Apply applies every pending migration of the sets and reports how many
// it applied.
func Apply(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, sets ...Set) (int, error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return 0, fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
		return 0, fmt.Errorf("migrate: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS clinkd_migrations (
		set_name   text        NOT NULL,
		version    integer     NOT NULL,
		file       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (set_name, version))`); err != nil {
		return 0, fmt.Errorf("migrate: bookkeeping table: %w", err)
	}
	applied := 0
	for _, s := range sets {
		files, err := s.files()
		if err != nil {
			return 0, err
		}
		var current int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM clinkd_migrations WHERE set_name = $1`, s.Name).Scan(&current); err != nil {
			return 0, fmt.Errorf("migrate: %s: read version: %w", s.Name, err)
		}
		for _, f := range files {
			if f.version <= current {
				continue
			}
			sql, err := fs.ReadFile(s.FS, f.name)
			if err != nil {
				return 0, fmt.Errorf("migrate: %s: %w", s.Name, err)
			}
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return 0, fmt.Errorf("migrate: %s/%s: %w", s.Name, f.name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO clinkd_migrations (set_name, version, file) VALUES ($1, $2, $3)`, s.Name, f.version, f.name); err != nil {
				return 0, fmt.Errorf("migrate: %s/%s: record: %w", s.Name, f.name, err)
			}
			log.Info("migration applied", "set", s.Name, "file", f.name)
			applied++
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("migrate: commit: %w", err)
	}
	return applied, nil
}
