package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/internal/migrate"
)

func loadConfig(path string) (daemon.Config, error) {
	return daemon.LoadConfig(path, os.Environ())
}

// openDatabase loads the config at path and connects to its database, for
// the commands that work on the store directly. Close the pool when done.
func openDatabase(ctx context.Context, path string, stderr io.Writer) (daemon.Config, *slog.Logger, *pgxpool.Pool, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return cfg, nil, nil, err
	}
	if cfg.Database.URL == "" {
		return cfg, nil, nil, usageError{"no database configured (database.url or CLINKD_DATABASE_URL)"}
	}
	log, err := daemon.NewLogger(cfg.Log, stderr)
	if err != nil {
		return cfg, nil, nil, err
	}
	db, err := daemon.OpenDatabase(ctx, cfg.Database)
	if err != nil {
		return cfg, nil, nil, err
	}
	return cfg, log, db, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	path := fs.String("config", "", "YAML config `file` (every key also from CLINKD_* environment variables)")
	takeover := fs.Bool("takeover", false, "take over from the clinkd serving on expiry.handoff_socket, with its timed messages and online devices, if one does (docs/operators.md)")
	if err := parse(fs, args); err != nil {
		return err
	}
	// A reader of clinkd's log that goes away (a closed pipe to a log
	// collector) must not kill it, and every timed message it holds, with
	// SIGPIPE: ignored, the write fails and clinkd goes on.
	signal.Ignore(syscall.SIGPIPE)
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log, level, err := daemon.NewLevelLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	// SIGHUP reloads what can change live (daemon.Reload) and names what
	// needs a restart; a config that does not load is refused whole and
	// the running one stays.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				next, err := loadConfig(*path)
				if err == nil {
					_, err = d.Reload(next, level)
				}
				if err != nil {
					log.Error("SIGHUP: configuration not reloaded; the running one stays", "err", err)
				}
			}
		}
	}()
	if *takeover {
		return d.RunTakeover(ctx)
	}
	return d.Run(ctx)
}

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("migrate", stderr)
	path := fs.String("config", "", "YAML config `file`")
	if err := parse(fs, args); err != nil {
		return err
	}
	_, log, db, err := openDatabase(ctx, *path, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := migrate.Apply(ctx, db, log, daemon.MigrationSets()...)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d migrations applied\n", n)
	return nil
}

func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if err := parse(newFlags("version", stderr), args); err != nil {
		return err
	}
	b := daemon.Build()
	fmt.Fprintf(stdout, "clinkd %s (%s, revision %s)\n", b.Version, b.GoVersion, b.Revision)
	return nil
}

// runCheckConfig loads and checks a configuration as serve would, without
// binding, dialing or connecting to anything, and lists every problem.
func runCheckConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check-config", stderr)
	path := fs.String("config", "", "YAML config `file` (every key also from CLINKD_* environment variables)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err == nil {
		err = cfg.Check()
	}
	if err != nil {
		problems := strings.Split(err.Error(), "\n")
		for _, p := range problems {
			fmt.Fprintf(stderr, "clinkd: error: %s\n", p)
		}
		return fmt.Errorf("check-config: %d problems", len(problems))
	}
	fmt.Fprintf(stdout, "%s: no problem found (nothing was bound, dialed or connected to)\n", orDefault(*path, "the environment"))
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
