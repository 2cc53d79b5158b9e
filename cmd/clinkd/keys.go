package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keydir"
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
		{"genkey", "make the checkpoint signing key and the VRF key: --url LOG_URL | --name ORIGIN, --out FILE [--vrf-out FILE]", runKeysGenkey},
		{"verifier", "print the verifier key and the VRF key again, derived from the key files: [--config FILE] | --signer FILE [--vrf FILE]", runKeysVerifier},
		{"migrate", "move a v0 log to v1 (clinkd stopped): [--config FILE] [--expect CHECKPOINT_FILE]", runKeysMigrate},
		{"reset", "end a JID's binding as operator: JID --reason TEXT [--config FILE]", runKeysReset},
		{"audit", "verify a log, its map and flag rebound JIDs: --url URL --key VKEY [--state FILE]", runKeysAudit},
		{"monitor", "verify one JID's whole history: JID --url URL --key VKEY --vrf-key KEY --vrf-proof B64 [--fingerprint HEX]", runKeysMonitor},
	}
}

// runKeys dispatches `clinkd keys SUBCOMMAND`.
func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, "usage: clinkd keys <subcommand> [flags]\n\nsubcommands:")
		for _, c := range keysCommands() {
			fmt.Fprintf(stderr, "  %-9s %s\n", c.name, c.summary)
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

// OriginFromURL is the origin C2SP tlog-tiles recommends for a new log:
// its URL prefix without the scheme and without a trailing slash
// (https://clink.example.org:8443/keydir/log becomes
// clink.example.org:8443/keydir/log).
func OriginFromURL(u string) (string, error) {
	p, err := url.Parse(u)
	if err != nil || p.Scheme != "https" || p.Host == "" || p.RawQuery != "" || p.Fragment != "" || p.User != nil {
		return "", usageError{fmt.Sprintf("--url %q is not the https URL of a log (https://HOST[:PORT]/PATH)", u)}
	}
	return p.Host + strings.TrimSuffix(p.EscapedPath(), "/"), nil
}

func runKeysGenkey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys genkey", stderr)
	name := fs.String("name", "", "the log's origin; for a new log prefer --url")
	logURL := fs.String("url", "", "the log's public `URL` (https://clink.example.org:8443/keydir/log): the origin is it without the scheme, as C2SP tlog-tiles recommends")
	out := fs.String("out", "", "`file` for the signer key (created 0600; never overwritten)")
	vrfOut := fs.String("vrf-out", "", "`file` for the private VRF key (default: --out plus .vrf)")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	switch {
	case *name != "" && *logURL != "":
		return usageError{"give --url or --name, not both"}
	case *logURL != "":
		o, err := OriginFromURL(*logURL)
		if err != nil {
			return err
		}
		*name = o
	}
	if *name == "" || *out == "" {
		return usageError{"--url (or --name) and --out are required"}
	}
	if *vrfOut == "" {
		*vrfOut = *out + ".vrf"
	}
	if _, err := os.Stat(*vrfOut); err == nil {
		return fmt.Errorf("%s exists: keys are never overwritten", *vrfOut)
	}
	vkey, err := keylog.GenerateKey(*name, *out)
	if err != nil {
		return err
	}
	vrf, err := keylog.GenerateVRFKey(*name, *vrfOut)
	if err != nil {
		os.Remove(*out)
		return err
	}
	fmt.Fprintln(stdout, vkey)
	fmt.Fprintln(stdout, vrf)
	fmt.Fprintf(stderr, "signer key written to %s, VRF key to %s; give devices and auditors the verifier key and the VRF key above (first and second line); back both files up\n", *out, *vrfOut)
	return nil
}

// runKeysVerifier prints again what genkey printed once: the verifier
// key and the public VRF key, each derived from its private key file, so
// that an operator who lost them does not have to start a new log.
func runKeysVerifier(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys verifier", stderr)
	path := fs.String("config", "", "YAML config `file` naming keydir.signer_key_file and keydir.vrf_key_file")
	signer := fs.String("signer", "", "the signer key `file` (instead of --config)")
	vrfFile := fs.String("vrf", "", "the private VRF key `file` (default with --signer: that file plus .vrf, when it exists)")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	switch {
	case *signer != "" && *path != "":
		return usageError{"give --config or --signer, not both"}
	case *signer == "" && *vrfFile != "":
		return usageError{"--vrf goes with --signer"}
	case *signer == "":
		cfg, err := loadConfig(*path)
		if err != nil {
			return err
		}
		if cfg.KeyDir.SignerKeyFile == "" {
			return usageError{"the config names no keydir.signer_key_file"}
		}
		*signer, *vrfFile = cfg.KeyDir.SignerKeyFile, cfg.KeyDir.VRFKeyFile
	case *vrfFile == "":
		if _, err := os.Stat(*signer + ".vrf"); err == nil {
			*vrfFile = *signer + ".vrf"
		}
	}
	vkey, err := keylog.VerifierKey(*signer)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, vkey)
	if *vrfFile == "" {
		fmt.Fprintln(stderr, "no VRF key file: printed the verifier key only")
		return nil
	}
	vrf, err := keylog.LoadVRFSigner(*vrfFile)
	if err != nil {
		return err
	}
	if name, _, _ := strings.Cut(vkey, "+"); vrf.Public().Name != name {
		return fmt.Errorf("the VRF key is named %q and the signer key %q: they are not one log's keys", vrf.Public().Name, name)
	}
	fmt.Fprintln(stdout, vrf.Public())
	return nil
}

// openKeyStore opens the key directory's store as clinkd would: the
// database, the VRF key, and the signer state's floor (appends are
// refused below the last signed checkpoint, as in the server).
func openKeyStore(ctx context.Context, path string, stderr io.Writer) (daemon.Config, *logdb.Store, *pgxpool.Pool, error) {
	cfg, log, db, err := openDatabase(ctx, path, stderr)
	if err != nil {
		return cfg, nil, nil, err
	}
	fail := func(err error) (daemon.Config, *logdb.Store, *pgxpool.Pool, error) {
		db.Close()
		return cfg, nil, nil, err
	}
	if cfg.KeyDir.SignerKeyFile == "" || cfg.KeyDir.VRFKeyFile == "" {
		return fail(usageError{"the config names no keydir.signer_key_file and keydir.vrf_key_file"})
	}
	vrf, err := keylog.LoadVRFSigner(cfg.KeyDir.VRFKeyFile)
	if err != nil {
		return fail(err)
	}
	store, err := logdb.New(logdb.Config{DB: db, Log: log.With("part", "keydir"), VRF: vrf})
	if err != nil {
		return fail(err)
	}
	_, v, err := keylog.LoadSignerKey(cfg.KeyDir.SignerKeyFile)
	if err != nil {
		return fail(err)
	}
	if b, err := os.ReadFile(daemon.KeyDirStateFile(cfg.KeyDir)); err == nil {
		cp, _, err := keydir.ParseState(b, v)
		if err != nil {
			return fail(err)
		}
		store.SetFloor(cp.Size)
	}
	return cfg, store, db, nil
}

func runKeysMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys migrate", stderr)
	path := fs.String("config", "", "YAML config `file` (database.url, keydir.signer_key_file, keydir.vrf_key_file)")
	expect := fs.String("expect", "", "a checkpoint `file` an auditor kept: refuse unless the database extends it")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	var want []byte
	if *expect != "" {
		b, err := os.ReadFile(*expect)
		if err != nil {
			return err
		}
		want = b
	}
	cfg, store, db, err := openKeyStore(ctx, *path, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	signer, v, err := keylog.LoadSignerKey(cfg.KeyDir.SignerKeyFile)
	if err != nil {
		return err
	}
	st, err := store.Tree(ctx)
	if err != nil {
		return err
	}
	if want != nil {
		// Before anything is appended: the v0 log must still hold what
		// the auditor saw.
		cp, err := keylog.OpenCheckpoint(want, v)
		if err != nil {
			return fmt.Errorf("--expect: %w", err)
		}
		if root, err := keylog.TreeHash(cp.Size, store.HashReader(ctx)); cp.Size > st.Size || err != nil || root != cp.Hash {
			return fmt.Errorf("the database does not extend the checkpoint in %s (%d entries): it was rolled back or rewritten; restore it before migrating", *expect, cp.Size)
		}
	}
	n := 0
	if st.Genesis < 0 {
		if n, err = store.Migrate(ctx, time.Now()); err != nil {
			return err
		}
	}
	cp, err := keydir.Adopt(ctx, store, signer, v, daemon.KeyDirStateFile(cfg.KeyDir), want)
	if err != nil {
		return err
	}
	if st.Genesis >= 0 {
		fmt.Fprintf(stdout, "the log was migrated already (genesis at entry %d); signer state written at %d entries\n", st.Genesis, cp.Size)
		return nil
	}
	fmt.Fprintf(stdout, "migrated: genesis at entry %d, %d labels moved to their VRF index; %d entries, signer state written\n", st.Size, n, cp.Size)
	return nil
}

func runKeysReset(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys reset", stderr)
	path := fs.String("config", "", "YAML config `file` (database.url, keydir.signer_key_file, keydir.vrf_key_file)")
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
	_, store, db, err := openKeyStore(ctx, *path, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
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
		fmt.Fprintf(w, "%d JIDs, %d bindings in force; %d publish, %d reset, %d delete entries\n",
			rep.Labels, rep.Bindings, rep.Counts[keylog.KindPublish], rep.Counts[keylog.KindReset], rep.Counts[keylog.KindDelete])
	}
	if rep.Migrated {
		fmt.Fprintf(w, "v1 from entry %d (%d migrate, %d tick entries); map root %x recomputed, every entry's map line checked\n",
			rep.Genesis, rep.Counts[keylog.KindMigrate], rep.Counts[keylog.KindTick], rep.MapRoot[:])
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
	fmt.Fprintf(stdout, "verified: signature, consistency with the previous checkpoint, every entry and hash tile, the map; %d findings\n", len(rep.Findings))
	return nil
}

func runKeysMonitor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys monitor", stderr)
	lf := addLogFlags(fs)
	want := fs.String("fingerprint", "", "hex SHA-256 of your key's DER: fail unless it is the key in force")
	vrfKey := fs.String("vrf-key", "", "the log's VRF public key, as devices get it")
	vrfProof := fs.String("vrf-proof", "", "the JID's VRF proof, base64 (its owner's device prints it: clinkctl keys)")
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
	if *vrfKey != "" {
		k, err := keylog.ParseVRFKey(strings.TrimSpace(*vrfKey))
		if err != nil {
			return usageError{err.Error()}
		}
		cfg.VRFKey = &k
	}
	var proof []byte
	if *vrfProof != "" {
		if cfg.VRFKey == nil {
			return usageError{"--vrf-proof needs --vrf-key"}
		}
		if proof, err = base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(*vrfProof)); err != nil {
			return usageError{"--vrf-proof is not base64"}
		}
	}
	rep, err := audit.Monitor(ctx, cfg, pos[0], proof, expect)
	if rep != nil {
		printAudit(stdout, rep.Audit, cfg.StateFile)
		if rep.Index != nil {
			fmt.Fprintf(stdout, "%s (label %x, index %x): %d versions\n", rep.JID, rep.Label[:], rep.Index[:], len(rep.History))
		} else {
			fmt.Fprintf(stdout, "%s (label %x): %d log entries\n", rep.JID, rep.Label[:], len(rep.History))
		}
		for i, e := range rep.History {
			fp := e.Fingerprint()
			fmt.Fprintf(stdout, "  version %d  entry %d  %s  %-7s  %x\n", i+1, e.Index, time.Unix(e.Time(), 0).UTC().Format(time.RFC3339), e.Kind(), fp[:])
		}
		if rep.Current != nil {
			fmt.Fprintf(stdout, "key in force: %x\n", rep.Current[:])
		} else if err == nil {
			fmt.Fprintln(stdout, "no key in force")
		}
		if err == nil && rep.Index != nil {
			fmt.Fprintln(stdout, "history complete: every version from 1, the last being the map's value at the checkpoint")
		}
	}
	return err
}
