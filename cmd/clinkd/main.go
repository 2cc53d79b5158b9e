// Command clinkd is the ClinkMe server extension: an XEP-0114 component
// for Prosody and ejabberd. See README.md and docs/config.md.
//
//	clinkd serve --config FILE [--takeover]
//	                                run the component; --takeover takes over
//	                                from the clinkd on expiry.handoff_socket
//	clinkd migrate --config FILE    apply database migrations and exit
//	clinkd keys genkey|verifier|migrate|reset|audit|monitor
//	                                key directory: signing and VRF keys,
//	                                their public keys again, v0 to v1,
//	                                operator reset, independent audit and
//	                                monitor
//	clinkd extauth --config FILE    ejabberd's auth bridge for ClinkID (extauth_program)
//	clinkd accounts grant|revoke ACCOUNT ENTITLEMENT, show|unlock|create ACCOUNT,
//	                invite
//	                                manage ClinkID accounts
//	clinkd doctor --lab lab.json | --c2s HOST:PORT --user JID --component DOMAIN ...
//	                                check a deployment end to end
//	clinkd secret [--out FILE]      make a component secret (link.secret)
//	clinkd check-config --config FILE
//	                                check a configuration as serve would, list every problem
//	clinkd version, clinkd --version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// usageError is a mistake on the command line: its message is followed by
// the usage hint and exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the component until SIGINT or SIGTERM", runServe},
		{"migrate", "apply pending database migrations and exit", runMigrate},
		{"keys", "key directory: genkey, verifier, migrate, reset, audit, monitor", runKeys},
		{"extauth", "ejabberd's external auth program for ClinkID accounts", runExtauth},
		{"accounts", "ClinkID accounts: grant, revoke, show, unlock, create, invite", func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			return runAccounts(ctx, args, os.Stdin, stdout, stderr)
		}},
		{"doctor", "check a deployment end to end: TLS, clinkd, key log, ClinkID, STUN and TURN", runDoctor},
		{"secret", "make a component secret (256 random bits, hex): [--out FILE]", runSecret},
		{"check-config", "check a configuration as serve would, listing every problem, and exit", runCheckConfig},
		{"version", "print the version (also --version)", runVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		}
		fmt.Fprintf(stderr, "clinkd: error: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "hint: run 'clinkd %s -h' for usage\n", c.name)
			return 2
		}
		return 1
	}
	fmt.Fprintf(stderr, "clinkd: error: unknown command %q\n", args[0])
	if args[0] == "lab" || args[0] == "lab-init" {
		// The lab left the production binary (docs/DEVELOPING.md).
		fmt.Fprintln(stderr, "hint: the lab is its own command: scripts/lab, or go run ./cmd/clinklab")
		return 2
	}
	fmt.Fprintln(stderr, "hint: run 'clinkd help' for the list of commands")
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: clinkd <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
}

// newFlags makes a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("clinkd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args and turns flag errors into usage errors.
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
