package clinkid

import (
	"embed"
	"io/fs"

	"github.com/clinkme/clinkd/internal/migrate"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations are the package's tables, for daemon.MigrationSets.
func Migrations() migrate.Set {
	sub, err := fs.Sub(migrationFS, "migrations")
	if err != nil {
		panic("clinkid: embedded migrations: " + err.Error()) // cannot happen: the directory is embedded
	}
	return migrate.Set{Name: "clinkid", FS: sub}
}
