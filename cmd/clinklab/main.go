// Command clinklab runs a whole ClinkMe deployment on loopback, from the
// real programs, for trying clinkd and for the tests: PostgreSQL, Prosody
// or ejabberd with clinkd attached, and coturn, with generated configs, a
// private CA and two demo accounts (package labdeploy).
//
//	clinklab [--server prosody|ejabberd] [--dir DIR] [--fast] [-v]
//	                              run the lab until Ctrl-C; writes DIR/lab.json;
//	                              --fast lifts rate limits, for measurement only
//	clinklab init --dir DIR       write the container lab's CA, certificates
//	                              and secrets (docker/compose.yaml)
//
// It is a command of its own, not a clinkd subcommand, so that the
// production clinkd binary links nothing that starts database or XMPP
// server processes (docs/DEVELOPING.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/labdeploy"
)

// usageError is a mistake on the command line: exit code 2 and a hint.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, name := runLab, "clinklab"
	if len(args) > 0 && args[0] == "init" {
		cmd, name, args = runInit, "clinklab init", args[1:]
	}
	err := cmd(ctx, args, stdout, stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintf(stderr, "clinklab: error: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "hint: run '%s -h' for usage\n", name)
		return 2
	}
	return 1
}

// parse parses args into fs and turns flag errors into usage errors.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("clinklab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "prosody", "XMPP server to run: prosody or ejabberd")
	dir := fs.String("dir", "", "`directory` for configs, data, logs and lab.json (default: a new temporary one, removed on exit)")
	verbose := fs.Bool("v", false, "log clinkd's own log to stderr too")
	fast := fs.Bool("fast", false, "for measurement only, never for a deployment: lift the XMPP server's c2s shapers and clinkd's per-sender rates and quotas (clinkctl bench then measures clinkd, not its limits)")
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
	fmt.Fprintf(stderr, "clinklab: starting %s, PostgreSQL, coturn and clinkd in %s ...\n", *server, abs)
	if *fast {
		fmt.Fprintln(stderr, "clinklab: --fast: rate limits lifted, for measurement only, never for a deployment")
	}
	dep, err := labdeploy.Start(ctx, labdeploy.Options{Server: lab.ServerKind(*server), Dir: abs, Fast: *fast, Logger: log, ClinkdLogger: clog})
	if err != nil {
		return err
	}
	labJSON := filepath.Join(abs, "lab.json")
	fmt.Fprint(stdout, dep.Summary(labJSON))
	<-ctx.Done()
	fmt.Fprintln(stderr, "clinklab: stopping ...")
	if err := dep.Close(); err != nil {
		return fmt.Errorf("stopping the lab: %w", err)
	}
	fmt.Fprintln(stderr, "clinklab: stopped")
	return nil
}

func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("clinklab init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "`directory` to fill (the container lab's volume)")
	domain := fs.String("domain", labdeploy.Domain, "XMPP user domain")
	component := fs.String("component", labdeploy.ComponentDomain, "clinkd's component domain")
	realm := fs.String("turn-realm", labdeploy.TURNRealm, "coturn realm")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{"--dir is required"}
	}
	if err := labdeploy.InitDir(*dir, *domain, *component, *realm); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab secrets and certificates in %s\n", *dir)
	return nil
}
