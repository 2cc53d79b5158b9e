package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/daemon"
)

// runExtauth is ejabberd's auth bridge: ejabberd starts it (extauth_program)
// and speaks its external auth protocol on stdin and stdout. Logs go to
// stderr only: stdout carries nothing but answers.
func runExtauth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("extauth", stderr)
	path := fs.String("config", "", "YAML config `file` (database, clinkid and link.server_domain are used)")
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
	ext, closeDB, err := daemon.Extauth(ctx, cfg, log.With("part", "extauth"))
	if err != nil {
		return err
	}
	defer closeDB()
	log.Info("clinkd extauth ready", "domain", ext.Domain, "pid", os.Getpid())
	// Serve blocks reading stdin; on SIGTERM the process returns without
	// waiting for it. ejabberd closes stdin when it stops the pool.
	done := make(chan error, 1)
	go func() { done <- ext.Serve(ctx, os.Stdin, stdout) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}

// runAccounts is the operator's account tool: `clinkd accounts grant
// ACCOUNT secure`, `revoke ACCOUNT secure`, `show ACCOUNT`, `unlock
// ACCOUNT`, `create ACCOUNT` (the password on stdin), `invite [--ttl D]`.
// Its admin token and bridge secret are made by `clinkd secret --out FILE`.
func runAccounts(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	subs := map[string]int{"grant": 2, "revoke": 2, "show": 1, "unlock": 1, "create": 1, "invite": 0}
	if len(args) == 0 {
		return usageError{"want grant, revoke, show, unlock, create or invite"}
	}
	if _, ok := subs[args[0]]; !ok {
		if args[0] == "-h" || args[0] == "--help" {
			accountsUsage(stderr)
			return flag.ErrHelp
		}
		return usageError{"want grant, revoke, show, unlock, create or invite"}
	}
	sub := args[0]
	fs := newFlags("accounts "+sub, stderr)
	path := fs.String("config", "", "YAML config `file`")
	ttl := fs.Duration("ttl", 0, "invite: how long the invite lasts (default clinkid.invite_lifetime)")
	fs.Usage = func() { accountsUsage(stderr); fs.PrintDefaults() }
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != subs[sub] {
		return usageError{fmt.Sprintf("accounts %s takes %d argument(s), got %d", sub, subs[sub], len(pos))}
	}
	cfg, log, db, err := openDatabase(ctx, *path, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	svc, err := daemon.ClinkIDService(cfg, db, log, nil)
	if err != nil {
		return err
	}
	by := "clinkd accounts"
	if u, err := user.Current(); err == nil {
		by += " (" + u.Username + ")"
	}
	switch sub {
	case "grant", "revoke":
		f, verb := svc.Grant, "granted"
		if sub == "revoke" {
			f, verb = svc.Revoke, "revoked"
		}
		if err := f(ctx, pos[0], pos[1], by); err != nil {
			return err
		}
		a, err := svc.Show(ctx, pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s %s; entitlements: %s\n", a.JID, verb, pos[1], listOrNone(a.Entitlements))
	case "show":
		a, err := svc.Show(ctx, pos[0])
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "account\t%s\n", a.Name)
		fmt.Fprintf(tw, "jid\t%s\n", a.JID)
		fmt.Fprintf(tw, "created\t%s\n", a.CreatedAt.UTC().Format(time.RFC3339))
		fmt.Fprintf(tw, "entitlements\t%s\n", listOrNone(a.Entitlements))
		locked := "no"
		if a.LockedUntil != nil {
			locked = "password login locked until " + a.LockedUntil.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "locked\t%s\n", locked)
		tw.Flush()
	case "unlock":
		if _, err := svc.Show(ctx, pos[0]); err != nil {
			return err
		}
		if err := svc.Unlock(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: unlocked\n", pos[0])
	case "create":
		// The password comes on stdin, never on the command line, where
		// every user of the host could read it.
		pw, err := bufio.NewReader(io.LimitReader(stdin, clinkid.MaxPasswordBytes+2)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read the password from standard input: %w", err)
		}
		pw = strings.TrimRight(pw, "\r\n")
		if pw == "" {
			return usageError{"accounts create reads the password from standard input, and got none"}
		}
		a, err := svc.CreateAccount(ctx, pos[0], pw, "")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: created\n", a.JID)
	case "invite":
		if *ttl < 0 {
			return usageError{"--ttl must not be negative"}
		}
		inv, err := svc.CreateInvite(ctx, *ttl, by)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\nexpires %s\n", inv.Code, inv.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}

func accountsUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: clinkd accounts grant|revoke ACCOUNT ENTITLEMENT [--config FILE]")
	fmt.Fprintln(w, "       clinkd accounts show|unlock ACCOUNT [--config FILE]")
	fmt.Fprintln(w, "       clinkd accounts create ACCOUNT [--config FILE] < password")
	fmt.Fprintln(w, "       clinkd accounts invite [--ttl DURATION] [--config FILE]")
	fmt.Fprintf(w, "\nentitlements: %s\n", strings.Join(clinkid.Entitlements(), ", "))
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

// parseInterleaved parses flags that may come before, between or after
// the positional arguments, which it returns.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
