package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/internal/migrate"
)

func loadConfig(path string) (daemon.Config, error) {
	return daemon.LoadConfig(path, os.Environ())
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	path := fs.String("config", "", "YAML config `file` (every key also from CLINKD_* environment variables)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log, err := daemon.NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("migrate", stderr)
	path := fs.String("config", "", "YAML config `file`")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	if cfg.Database.URL == "" {
		return usageError{"no database configured (database.url or CLINKD_DATABASE_URL)"}
	}
	log, err := daemon.NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	db, err := daemon.OpenDatabase(ctx, cfg.Database)
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
	fmt.Fprintln(stdout, "clinkd", daemon.Version)
	return nil
}
