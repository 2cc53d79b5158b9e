package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

type subcommand struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func keysCommands() []subcommand {
	return []subcommand{
		{"genkey", "make a checkpoint signing key: --name ORIGIN --out FILE", runKeysGenkey},
		{"reset", "end a JID's binding as operator: JID --reason TEXT [--config FILE]", runKeysReset},
		{"audit", "verify a log and flag rebound labels: --url URL --key VKEY [--state FILE]", runKeysAudit},
		{"monitor", "verify one JID's binding and history: JID --url URL --key VKEY [--fingerprint HEX]", runKeysMonitor},
	}
}

// runKeys dispatches `clinkd keys SUBCOMMAND`.
func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, "usage: clinkd keys <subcommand> [flags]\n\nsubcommands:")
		for _, c := range keysCommands() {
			fmt.Fprintf(stderr, "  %-8s %s\n", c.name, c.summary)
		}
		if len(args) == 0 {
			return usageError{"keys needs a subcommand"}
		}
		return flag.ErrHelp
	}
	for _, c := range keysCommands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	return usageError{fmt.Sprintf("unknown keys subcommand %q", args[0])}
}

// parseArgs parses flags wherever they stand among the positional
// arguments (clinkd keys reset JID --reason TEXT) and checks that there
// are exactly npos positional arguments.
func parseArgs(fs *flag.FlagSet, args []string, npos int, what string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != npos {
		if npos == 0 {
			return nil, usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
		}
		return nil, usageError{fmt.Sprintf("want %s, got %d arguments", what, len(pos))}
	}
	return pos, nil
}

func runKeysGenkey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys genkey", stderr)
	name := fs.String("name", "", "the log's origin, e.g. clink.example.org/keydir")
	out := fs.String("out", "", "`file` for the signer key (created 0600; never overwritten)")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	if *name == "" || *out == "" {
		return usageError{"--name and --out are required"}
	}
	vkey, err := keylog.GenerateKey(*name, *out)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, vkey)
	fmt.Fprintf(stderr, "signer key written to %s; give devices and auditors the verifier key above\n", *out)
	return nil
}

func runKeysReset(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys reset", stderr)
	path := fs.String("config", "", "YAML config `file` (for database.url)")
	reason := fs.String("reason", "", "why the binding is ended (kept in the database, not in the public log)")
	pos, err := parseArgs(fs, args, 1, "one JID")
	if err != nil {
		return err
	}
	if strings.TrimSpace(*reason) == "" {
		return usageError{"--reason is required: a reset is visible to every auditor, so record why"}
	}
	// Checked before connecting, so that a typo needs no database; the
	// store's End canonicalises it again.
	j, err := keylog.ParseBareJID(pos[0])
	if err != nil {
		return err
	}
	_, log, db, err := openDatabase(ctx, *path, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	store, err := logdb.New(logdb.Config{DB: db, Log: log.With("part", "keydir")})
	if err != nil {
		return err
	}
	idx, err := store.End(ctx, j.String(), keylog.KindReset, *reason, time.Now())
	if errors.Is(err, logdb.ErrNoBinding) {
		return fmt.Errorf("%s has no key bound: nothing to reset", j)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "reset %s: log entry %d appended; the user may publish a new key\n", j, idx)
	return nil
}

// logFlags are the flags audit and monitor share.
type logFlags struct {
	url, key, keyFile, state, ca *string
}

func addLogFlags(fs *flag.FlagSet) logFlags {
	return logFlags{
		url:     fs.String("url", "", "the log's base `URL`, e.g. https://clink.example.org/keydir/log"),
		key:     fs.String("key", "", "the log's verifier key, as clinkd keys genkey printed it"),
		keyFile: fs.String("key-file", "", "a `file` holding the verifier key"),
		state:   fs.String("state", "", "`file` keeping the last verified checkpoint (default under the user's config dir)"),
		ca:      fs.String("ca", "", "PEM `file` of CA certificates to trust for https (default: the system's)"),
	}
}

func (f logFlags) config(kind string) (audit.Config, error) {
	var cfg audit.Config
	if *f.url == "" {
		return cfg, usageError{"--url is required"}
	}
	vkey := *f.key
	switch {
	case vkey != "" && *f.keyFile != "":
		return cfg, usageError{"give --key or --key-file, not both"}
	case *f.keyFile != "":
		b, err := os.ReadFile(*f.keyFile)
		if err != nil {
			return cfg, err
		}
		vkey = string(b)
	case vkey == "":
		return cfg, usageError{"--key or --key-file is required"}
	}
	v, err := keylog.ParseVerifier(vkey)
	if err != nil {
		return cfg, err
	}
	cfg.URL, cfg.Verifier, cfg.StateFile = *f.url, v, *f.state
	if cfg.StateFile == "" {
		dir, err := os.UserConfigDir()
		if err != nil {
			return cfg, fmt.Errorf("no --state and no config dir: %w", err)
		}
		id := sha256.Sum256([]byte(v.Name() + "\n" + *f.url))
		cfg.StateFile = filepath.Join(dir, "clinkd", fmt.Sprintf("keydir-%s-%x.checkpoint", kind, id[:8]))
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if *f.ca != "" {
		pool, err := client.LoadCertPool(*f.ca)
		if err != nil {
			return cfg, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	// A whole audit fetches many tiles; each request is bounded, not the
	// run.
	cfg.Client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return cfg, nil
}

func printAudit(w io.Writer, rep *audit.Report, state string) {
	if rep == nil {
		return
	}
	cp := rep.Checkpoint
	fmt.Fprintf(w, "log %s: %d entries, root %x\n", cp.Origin, cp.Size, cp.Hash[:])
	if p := rep.Previous; p != nil {
		fmt.Fprintf(w, "previous checkpoint: %d entries (%s)\n", p.Size, state)
	}
	if rep.Counts != nil {
		fmt.Fprintf(w, "%d labels, %d bindings in force; %d publish, %d reset, %d delete entries\n",
			rep.Labels, rep.Bindings, rep.Counts[keylog.KindPublish], rep.Counts[keylog.KindReset], rep.Counts[keylog.KindDelete])
	}
	for _, f := range rep.Findings {
		fmt.Fprintf(w, "finding: %s\n", f)
	}
}

func runKeysAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys audit", stderr)
	lf := addLogFlags(fs)
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	cfg, err := lf.config("audit")
	if err != nil {
		return err
	}
	rep, err := audit.Run(ctx, cfg)
	printAudit(stdout, rep, cfg.StateFile)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "verified: signature, consistency with the previous checkpoint, every entry and hash tile; %d findings\n", len(rep.Findings))
	return nil
}

func runKeysMonitor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys monitor", stderr)
	lf := addLogFlags(fs)
	want := fs.String("fingerprint", "", "hex SHA-256 of your key's DER: fail unless it is the key in force")
	pos, err := parseArgs(fs, args, 1, "one JID")
	if err != nil {
		return err
	}
	cfg, err := lf.config("monitor")
	if err != nil {
		return err
	}
	var expect *[32]byte
	if *want != "" {
		b, err := hex.DecodeString(strings.ToLower(*want))
		if err != nil || len(b) != 32 {
			return usageError{"--fingerprint must be 64 hex digits"}
		}
		expect = (*[32]byte)(b)
	}
	rep, err := audit.Monitor(ctx, cfg, pos[0], expect)
	if rep != nil {
		printAudit(stdout, rep.Audit, cfg.StateFile)
		fmt.Fprintf(stdout, "%s (label %x): %d log entries\n", rep.JID, rep.Label[:], len(rep.History))
		for _, e := range rep.History {
			fmt.Fprintf(stdout, "  entry %d  %s  %-7s  %x\n", e.Index, time.Unix(e.Record.Time, 0).UTC().Format(time.RFC3339), e.Record.Kind, e.Record.Fingerprint[:])
		}
		if rep.Current != nil {
			fmt.Fprintf(stdout, "key in force: %x\n", rep.Current[:])
		} else if err == nil {
			fmt.Fprintln(stdout, "no key in force")
		}
	}
	return err
}
