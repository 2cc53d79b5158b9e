package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/audit"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab/labtest"
)

// clinkd runs the command in-process as main would and returns its exit
// code and output.
func clinkd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestKeysCommands runs clinkd keys genkey, reset, audit and monitor as an
// operator would, against a real PostgreSQL and the log served by the same
// handler the daemon mounts, and checks exit codes and output.
func TestKeysCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// genkey: the origin from the log's URL, as tlog-tiles recommends.
	keyFile := filepath.Join(dir, "signer.key")
	code, out, stderr := clinkd(t, "keys", "genkey", "--url", "https://clink.lab.localhost:8443/keydir/log/", "--out", keyFile)
	if code != 0 {
		t.Fatalf("keys genkey = %d, %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("keys genkey printed %q, want the verifier key and the VRF key", out)
	}
	vkey, vrfKey := lines[0], lines[1]
	if _, err := keylog.ParseVerifier(vkey); err != nil || !strings.HasPrefix(vkey, "clink.lab.localhost:8443/keydir/log+") {
		t.Fatalf("keys genkey printed %q (%v), want a verifier key named after the URL", vkey, err)
	}
	vk, err := keylog.ParseVRFKey(vrfKey)
	if err != nil || vk.Name != "clink.lab.localhost:8443/keydir/log" {
		t.Fatalf("keys genkey printed VRF key %q (%v)", vrfKey, err)
	}
	for _, f := range []string{keyFile, keyFile + ".vrf"} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("key file %s: %v; want mode 0600", f, err)
		}
	}
	if code, _, stderr := clinkd(t, "keys", "genkey", "--name", "x", "--out", keyFile); code != 1 || !strings.HasPrefix(stderr, "clinkd: error: ") || !strings.Contains(stderr, "exists") {
		t.Errorf("keys genkey over an existing file = %d, %q; want 1 and an error", code, stderr)
	}
	if code, _, stderr := clinkd(t, "keys", "genkey", "--name", "x"); code != 2 || !strings.Contains(stderr, "hint:") {
		t.Errorf("keys genkey without --out = %d, %q; want 2 and a hint", code, stderr)
	}
	if code, _, stderr := clinkd(t, "keys", "genkey", "--url", "http://clink.example.org/keydir/log", "--out", filepath.Join(dir, "x")); code != 2 || !strings.Contains(stderr, "https URL") {
		t.Errorf("keys genkey --url http://… = %d, %q; want 2", code, stderr)
	}

	// verifier: the two lines genkey printed, derived again from the
	// files, from --signer or from the config that names them.
	if code, again, stderr := clinkd(t, "keys", "verifier", "--signer", keyFile); code != 0 || again != out {
		t.Errorf("keys verifier --signer = %d, %q, %s; want genkey's output %q", code, again, stderr, out)
	}
	verifierCfg := filepath.Join(dir, "verifier.yaml")
	cfgText := "keydir:\n  signer_key_file: " + keyFile + "\n  vrf_key_file: " + keyFile + ".vrf\n"
	if err := os.WriteFile(verifierCfg, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, again, stderr := clinkd(t, "keys", "verifier", "--config", verifierCfg); code != 0 || again != out {
		t.Errorf("keys verifier --config = %d, %q, %s; want genkey's output %q", code, again, stderr, out)
	}
	otherKey := filepath.Join(dir, "other-log.key")
	if code, _, stderr := clinkd(t, "keys", "genkey", "--name", "other.example/log", "--out", otherKey); code != 0 {
		t.Fatalf("keys genkey = %d, %s", code, stderr)
	}
	notAKey := filepath.Join(dir, "not-a-key")
	if err := os.WriteFile(notAKey, []byte("PRIVATE+KEY+secret-looking-text\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--signer", keyFile, "--vrf", otherKey + ".vrf"}, 1, "not one log's keys"},
		{[]string{"--signer", notAKey}, 1, "does not hold a note signer key"},
		{[]string{"--signer", keyFile + ".vrf"}, 1, "does not hold a note signer key"},
		{[]string{"--signer", filepath.Join(dir, "missing")}, 1, "no such file"},
		{[]string{"--signer", keyFile, "--config", verifierCfg}, 2, "not both"},
		{[]string{"--vrf", keyFile + ".vrf"}, 2, "--vrf goes with --signer"},
	} {
		code, stdout, stderr := clinkd(t, append([]string{"keys", "verifier"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "secret-looking") {
			t.Errorf("keys verifier %q = %d, %q, %q; want %d and %q", tc.args, code, stdout, stderr, tc.code, tc.want)
		}
	}

	// A database with the schema, the directory started (a new log:
	// genesis and the signer state), two keys published, the log served.
	dbURL := labtest.NewDatabase(t)
	cfgFile := filepath.Join(dir, "clinkd.yaml")
	if err := os.WriteFile(cfgFile, []byte("database:\n  url: "+dbURL+"\nkeydir:\n  signer_key_file: "+keyFile+"\n  vrf_key_file: "+keyFile+".vrf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	migrations := 0
	for _, set := range daemon.MigrationSets() {
		files, _ := fs.Glob(set.FS, "*.sql")
		migrations += len(files)
	}
	if code, out, stderr := clinkd(t, "migrate", "--config", cfgFile); code != 0 || !strings.Contains(out, fmt.Sprintf("%d migrations applied", migrations)) {
		t.Fatalf("migrate = %d, %q, %q", code, out, stderr)
	}
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	srv, store := serveDirectory(ctx, t, db, keyFile)
	alice, _ := keylog.ParseBareJID("alice@lab.localhost")
	bob, _ := keylog.ParseBareJID("bob@lab.localhost")
	if _, _, err := store.Publish(ctx, alice, keydirtest.FakeRSAKey(t, 3072), time.Now()); err != nil {
		t.Fatal(err)
	}
	bobKey := keydirtest.FakeRSAKey(t, 3072)
	if _, _, err := store.Publish(ctx, bob, bobKey, time.Now()); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state", "audit.checkpoint")
	auditArgs := []string{"keys", "audit", "--url", srv.URL, "--key", vkey, "--state", state}

	code, out, stderr = clinkd(t, auditArgs...)
	if code != 0 || !strings.Contains(out, "3 entries") || !strings.Contains(out, "verified:") || !strings.Contains(out, "0 findings") || !strings.Contains(out, "map root") {
		t.Fatalf("keys audit = %d\n%s%s", code, out, stderr)
	}

	// reset
	if code, _, stderr := clinkd(t, "keys", "reset", "alice@lab.localhost", "--config", cfgFile); code != 2 || !strings.Contains(stderr, "--reason is required") {
		t.Errorf("keys reset without --reason = %d, %q; want 2", code, stderr)
	}
	code, out, stderr = clinkd(t, "keys", "reset", "Alice@lab.localhost", "--reason", "lost her phone", "--config", cfgFile)
	if code != 0 || !strings.Contains(out, "reset alice@lab.localhost: log entry 3 appended") {
		t.Fatalf("keys reset = %d, %q, %q", code, out, stderr)
	}
	// The reset is logged as every end of a binding is, without the JID.
	if !strings.Contains(stderr, `msg="keydir: binding ended" part=keydir kind=reset index=3`) || strings.Contains(stderr, "alice") {
		t.Errorf("keys reset logged %q, want the binding ended line without the JID", stderr)
	}
	if code, _, stderr := clinkd(t, "keys", "reset", "alice@lab.localhost", "--reason", "again", "--config", cfgFile); code != 1 || stderr != "clinkd: error: alice@lab.localhost has no key bound: nothing to reset\n" {
		t.Errorf("keys reset (nothing bound) = %d, %q", code, stderr)
	}

	// The audit flags the reset (by the JID's map index: nobody without
	// the VRF key can tell whose) and checks the log grew from the 3
	// entries it kept.
	x, aliceProof := store.Index(alice)
	code, out, stderr = clinkd(t, auditArgs...)
	if code != 0 || !strings.Contains(out, "previous checkpoint: 3 entries") || !strings.Contains(out, "finding: reset label "+hex.EncodeToString(x[:])) {
		t.Fatalf("keys audit after reset = %d\n%s%s", code, out, stderr)
	}

	// monitor, with the JID's VRF proof: the whole history, complete.
	monitor := func(who string, proof []byte, extra ...string) (int, string, string) {
		args := append([]string{"keys", "monitor", who, "--url", srv.URL, "--key", vkey, "--vrf-key", vrfKey,
			"--vrf-proof", base64.StdEncoding.EncodeToString(proof), "--state", filepath.Join(dir, "mon")}, extra...)
		return clinkd(t, args...)
	}
	code, out, stderr = monitor("alice@lab.localhost", aliceProof)
	if code != 0 || !strings.Contains(out, "2 versions") || !strings.Contains(out, "reset") || !strings.Contains(out, "no key in force") || !strings.Contains(out, "history complete") {
		t.Errorf("keys monitor alice = %d\n%s%s", code, out, stderr)
	}
	_, bobProof := store.Index(bob)
	bobFP := keylog.Fingerprint(bobKey)
	code, out, stderr = monitor("bob@lab.localhost", bobProof, "--fingerprint", hex.EncodeToString(bobFP[:]))
	if code != 0 || !strings.Contains(out, "key in force: "+hex.EncodeToString(bobFP[:])) {
		t.Errorf("keys monitor bob --fingerprint (his) = %d\n%s%s", code, out, stderr)
	}
	code, _, stderr = monitor("bob@lab.localhost", bobProof, "--fingerprint", strings.Repeat("ab", 32))
	if code != 1 || !strings.Contains(stderr, "is not yours") {
		t.Errorf("keys monitor bob --fingerprint (another) = %d, %q; want 1", code, stderr)
	}
	if code, _, stderr := monitor("bob@lab.localhost", aliceProof); code != 1 || !strings.Contains(stderr, "VRF proof") {
		t.Errorf("keys monitor bob with alice's VRF proof = %d, %q; want 1", code, stderr)
	}

	// A wrong verifier key, then a tampered row: both fail the audit.
	other := filepath.Join(dir, "other.key")
	_, otherOut, _ := clinkd(t, "keys", "genkey", "--name", "clink.lab.localhost:8443/keydir/log", "--out", other)
	otherV, _, _ := strings.Cut(otherOut, "\n")
	if code, _, stderr := clinkd(t, "keys", "audit", "--url", srv.URL, "--key", otherV, "--state", state); code != 1 || !strings.Contains(stderr, "clinkd: error: audit: failed: checkpoint") {
		t.Errorf("keys audit with another key = %d, %q; want 1", code, stderr)
	}
	// A witness policy this log's checkpoint cannot meet (no witness
	// cosigns it): the audit fails before downloading anything.
	const w1 = "w1.witness.example+57b5d8f6+BHjfZqfjqYviOImvagsQjPGeg9o4T7yLeVQX2OYOCGBl"
	if code, _, stderr := clinkd(t, append(auditArgs, "--witness", w1)...); code != 1 || !strings.Contains(stderr, "clinkd: error: audit: failed: checkpoint: keylog: checkpoint is not cosigned by enough witnesses: 0 valid") {
		t.Errorf("keys audit --witness of an uncosigned log = %d, %q; want 1, not cosigned", code, stderr)
	}
	if _, err := db.Exec(ctx, `UPDATE keydir_entries SET record = overlay(record placing 'abcd' from 115 for 4) WHERE idx = 1`); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := clinkd(t, auditArgs...); code != 1 || !strings.Contains(stderr, "clinkd: error: audit: failed: the entries served do not hash") {
		t.Errorf("keys audit after tampering = %d, %q; want 1", code, stderr)
	}
}

// serveDirectory starts the directory over db with the keys clinkd keys
// genkey wrote at keyFile and serves its log.
func serveDirectory(ctx context.Context, t *testing.T, db *pgxpool.Pool, keyFile string) (*httptest.Server, *logdb.Store) {
	t.Helper()
	signer, verifier, err := keylog.LoadSignerKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	vrf, err := keylog.LoadVRFSigner(keyFile + ".vrf")
	if err != nil {
		t.Fatal(err)
	}
	store, err := logdb.New(logdb.Config{DB: db, Log: slog.New(slog.DiscardHandler), VRF: vrf})
	if err != nil {
		t.Fatal(err)
	}
	d, err := keydir.New(keydir.Config{Signer: signer, Verifier: verifier, StateFile: keyFile + ".state", LocalDomain: "lab.localhost", Accounts: keydir.ServerAccounts{}}, store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if reason := d.Ready(ctx); reason != "" {
		t.Fatalf("directory not ready: %s", reason)
	}
	srv := httptest.NewServer(d.LogHandler())
	t.Cleanup(srv.Close)
	return srv, store
}

// TestKeysMigrate: clinkd keys migrate moves a v0 log (as clinkd wrote it
// before v1) to v1, refusing first when the database does not extend the
// checkpoint an auditor kept; the v0 entries keep verifying (the audit's
// state, kept before, is extended), and the migrated log passes the
// audit with its map; a second run changes nothing.
func TestKeysMigrate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keyFile := filepath.Join(dir, "signer.key")
	if code, _, stderr := clinkd(t, "keys", "genkey", "--name", "clink.lab.localhost/keydir", "--out", keyFile); code != 0 {
		t.Fatal(stderr)
	}
	dbURL := labtest.NewDatabase(t)
	cfgFile := filepath.Join(dir, "clinkd.yaml")
	if err := os.WriteFile(cfgFile, []byte("database:\n  url: "+dbURL+"\n  migrate: true\nkeydir:\n  signer_key_file: "+keyFile+"\n  vrf_key_file: "+keyFile+".vrf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := clinkd(t, "migrate", "--config", cfgFile); code != 0 {
		t.Fatal(stderr)
	}
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	k1, k2 := keydirtest.FakeRSAKey(t, 3072), keydirtest.FakeRSAKey(t, 3072)
	v0 := keydirtest.WriteV0Log(ctx, t, db, []keydirtest.V0Entry{
		{JID: "bob@lab.localhost", Kind: keylog.KindPublish, Key: k1, Time: 1795636700},
		{JID: "carol@lab.localhost", Kind: keylog.KindPublish, Key: k2, Time: 1795636710},
		{JID: "carol@lab.localhost", Kind: keylog.KindReset, Key: k2, Time: 1795636900},
	})
	// An auditor's checkpoint of the v0 log, and one of a log the
	// database does not hold.
	signer, _, err := keylog.LoadSignerKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var mem keylog.Hashes
	for _, r := range v0 {
		mem.Append(r)
	}
	root, _ := keylog.TreeHash(3, &mem)
	kept, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: signer.Name(), Size: 3, Hash: root}, signer)
	keptFile := filepath.Join(dir, "auditor.checkpoint")
	os.WriteFile(keptFile, kept, 0o600)
	forged, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: signer.Name(), Size: 4, Hash: root}, signer)
	forgedFile := filepath.Join(dir, "other.checkpoint")
	os.WriteFile(forgedFile, forged, 0o600)

	if code, _, stderr := clinkd(t, "keys", "migrate", "--config", cfgFile, "--expect", forgedFile); code != 1 || !strings.Contains(stderr, "does not extend") {
		t.Fatalf("keys migrate --expect (a longer log) = %d, %q; want refused", code, stderr)
	}
	code, out, stderr := clinkd(t, "keys", "migrate", "--config", cfgFile, "--expect", keptFile)
	if code != 0 || !strings.Contains(out, "genesis at entry 3, 2 labels moved") {
		t.Fatalf("keys migrate = %d, %q, %q", code, out, stderr)
	}
	if code, out, _ := clinkd(t, "keys", "migrate", "--config", cfgFile); code != 0 || !strings.Contains(out, "migrated already") {
		t.Errorf("keys migrate again = %d, %q", code, out)
	}
	srv, store := serveDirectory(ctx, t, db, keyFile)
	_, v, _ := keylog.LoadSignerKey(keyFile)
	state := filepath.Join(dir, "audit.checkpoint")
	os.WriteFile(state, kept, 0o600)
	rep, err := audit.Run(ctx, audit.Config{URL: srv.URL, Verifier: v, StateFile: state})
	if err != nil || !rep.Migrated || rep.Genesis != 3 || rep.Checkpoint.Size != 6 || rep.Previous == nil || rep.Previous.Size != 3 || rep.Bindings != 1 {
		t.Fatalf("audit after migration = %+v, %v; want a migrated log of 6 entries extending the kept 3, bob bound", rep, err)
	}
	bob, _ := keylog.ParseBareJID("bob@lab.localhost")
	snap, err := store.Lookup(ctx, []jid.JID{bob})
	if err != nil || snap.Entries[0].Value == nil || snap.Entries[0].Value.Entry != 0 || snap.Entries[0].Value.Version != 1 {
		t.Fatalf("Lookup(bob) after migration = %+v, %v; want his v0 entry 0, version 1", snap, err)
	}
}
func TestKeysUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"keys"}, 2, "keys needs a subcommand"},
		{[]string{"keys", "rotate"}, 2, `unknown keys subcommand "rotate"`},
		{[]string{"keys", "audit", "--key", "x"}, 2, "--url is required"},
		{[]string{"keys", "audit", "--url", "http://127.0.0.1:1"}, 2, "--key or --key-file is required"},
		{[]string{"keys", "audit", "--url", "http://127.0.0.1:1", "--key", "nonsense"}, 1, "verifier key"},
		{[]string{"keys", "audit", "--url", "http://127.0.0.1:1", "--key", "clink.example.org/keydir+64f016b5+AW18YgTFSNHPu0dpLLinneuHS3Z5Ty4qy2uy3qcuHUhc", "--witness", "nonsense"}, 2, "malformed witness verifier key"},
		{[]string{"keys", "monitor", "--url", "u", "--key", "k"}, 2, "want one JID"},
		{[]string{"keys", "genkey", "--url", "https://a/b", "--name", "c", "--out", "d"}, 2, "not both"},
		{[]string{"keys", "migrate"}, 2, "no database configured"},
		{[]string{"keys", "reset", "a@b", "c@d", "--reason", "r"}, 2, "want one JID"},
		{[]string{"keys", "reset", "a@b/r", "--reason", "r"}, 1, "not a bare user JID"},
	}
	for _, tt := range tests {
		code, _, stderr := clinkd(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.want) || !strings.HasPrefix(stderr, "clinkd: error: ") && !strings.HasPrefix(stderr, "usage:") {
			t.Errorf("clinkd %s = %d, %q; want %d and %q", strings.Join(tt.args, " "), code, stderr, tt.code, tt.want)
		}
	}
}
