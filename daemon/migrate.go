package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/internal/migrate"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/receipts"
)

// MigrationSets lists every package's migrations, in dependency order.
func MigrationSets() []migrate.Set {
	return []migrate.Set{logdb.Migrations(), clinkid.Migrations(), receipts.Migrations()}
}

// Migrate applies every pending migration of every feature.
func Migrate(ctx context.Context, db *pgxpool.Pool, log *slog.Logger) error {
	_, err := migrate.Apply(ctx, db, log, MigrationSets()...)
	return err
}

// OpenDatabase connects a pool to the configured database. Errors never
// quote the URL, which may hold a password.
func OpenDatabase(ctx context.Context, cfg DatabaseConfig) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, errors.New("config: database.url is not a valid PostgreSQL URL")
	}
	db, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	return db, nil
}
