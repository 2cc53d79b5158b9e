package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
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
	return openDatabase(ctx, cfg, func() string { return cfg.Password })
}

// openDatabase is OpenDatabase with the password asked for at every new
// connection, so that a reload can change it (the pool keeps the
// connections it has: PostgreSQL does not end them when a role's
// password changes).
func openDatabase(ctx context.Context, cfg DatabaseConfig, password func() string) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, errors.New("config: database.url is not a valid PostgreSQL URL")
	}
	// Bounds so that a slow or hung database costs a bounded number of
	// connections and requests fail within a known time, instead of
	// piling up (pgx's defaults are four connections and no timeouts).
	pcfg.MaxConns = int32(cmp.Or(cfg.MaxConns, 16))
	pcfg.ConnConfig.ConnectTimeout = cmp.Or(cfg.ConnectTimeout, 5*time.Second)
	pcfg.HealthCheckPeriod = 15 * time.Second
	if pcfg.ConnConfig.RuntimeParams == nil {
		pcfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	pcfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(cmp.Or(cfg.StatementTimeout, 10*time.Second).Milliseconds(), 10)
	pcfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		if p := password(); p != "" {
			cc.Password = p
		}
		return nil
	}
	db, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	return db, nil
}
