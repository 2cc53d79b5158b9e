package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/deploy"
)

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lab", stderr)
	server := fs.String("server", "prosody", "XMPP server to run: prosody or ejabberd")
	dir := fs.String("dir", "", "`directory` for configs, data, logs and lab.json (default: a new temporary one, removed on exit)")
	verbose := fs.Bool("v", false, "log clinkd's own log to stderr too")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *server != string(lab.Prosody) && *server != string(lab.Ejabberd) {
		return usageError{fmt.Sprintf("--server %q: want prosody or ejabberd", *server)}
	}
	d := *dir
	if d == "" {
		tmp, err := os.MkdirTemp("", "clinklab-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		d = tmp
	}
	abs, err := filepath.Abs(d)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	clog := slog.New(slog.DiscardHandler)
	if *verbose {
		clog = log.With("part", "clinkd")
	}
	fmt.Fprintf(stderr, "clinkd lab: starting %s, PostgreSQL, coturn and clinkd in %s ...\n", *server, abs)
	dep, err := deploy.Start(ctx, deploy.Options{Server: lab.ServerKind(*server), Dir: abs, Logger: log, ClinkdLogger: clog})
	if err != nil {
		return err
	}
	labJSON := filepath.Join(abs, "lab.json")
	fmt.Fprint(stdout, dep.Summary(labJSON))
	<-ctx.Done()
	fmt.Fprintln(stderr, "clinkd lab: stopping ...")
	if err := dep.Close(); err != nil {
		return fmt.Errorf("stopping the lab: %w", err)
	}
	fmt.Fprintln(stderr, "clinkd lab: stopped")
	return nil
}

func runLabInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lab-init", stderr)
	dir := fs.String("dir", "", "`directory` to fill (the container lab's volume)")
	domain := fs.String("domain", deploy.Domain, "XMPP user domain")
	component := fs.String("component", deploy.ComponentDomain, "clinkd's component domain")
	realm := fs.String("turn-realm", deploy.TURNRealm, "coturn realm")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{"--dir is required"}
	}
	if err := deploy.InitDir(*dir, *domain, *component, *realm); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab secrets and certificates in %s\n", *dir)
	return nil
}
