// Package ctl is clinkctl, the reference ClinkMe device on the command
// line: it logs in, keeps a device key store, publishes and verifies keys,
// sends and receives end-to-end messages through clinkd, and moves keys
// between devices over the local network. cmd/clinkctl is its thin main.
//
// With --lab lab.json (written by clinklab) and --as alice it needs no
// other flag.
package ctl

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/client/labfile"
)

// usageError is a mistake on the command line: exit code 2 and a hint.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// env is what a command may use from the world, so tests run it
// in-process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	json           bool // --json: one JSON object per line on stdout
}

// Run runs clinkctl with args and returns the exit code.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}
	err := e.run(ctx, args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "clinkctl: error: %v\n", err)
	if e.json {
		e.emit(errorJSON(err))
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "hint: run 'clinkctl help' for usage")
		return 2
	}
	if hint := hintFor(err); hint != "" {
		fmt.Fprintln(stderr, "hint: "+hint)
	}
	return 1
}

// hintFor says what to do about an error, where something helps.
func hintFor(err error) string {
	var kc *client.KeyChangeError
	var re *client.RefusedError
	switch {
	case errors.As(err, &kc) && kc.Unaccepted && len(kc.Changes) > 0 && kc.Changes[0].Verified:
		return fmt.Sprintf("compare the new safety code with them (clinkctl keys safety %s), then accept the new key with it (clinkctl keys accept %s CODE)", kc.Changes[0].JID, kc.Changes[0].JID)
	case errors.As(err, &kc) && kc.Unaccepted && len(kc.Changes) > 0:
		return fmt.Sprintf("ask them whether they changed devices; compare safety codes (clinkctl keys safety %s), then accept the new key (clinkctl keys accept %s)", kc.Changes[0].JID, kc.Changes[0].JID)
	case errors.As(err, &kc):
		return "the contact's key changed in the directory; verify it with them (clinkctl keys verify), then accept it (clinkctl keys accept)"
	case errors.Is(err, client.ErrStaleCheckpoint):
		return "the key directory shows this device an older log than it already accepted: it may be hiding newer entries (a rollback); the answer was refused; see 'clinkctl keys status'"
	case errors.Is(err, client.ErrOwnKeyReset):
		return "an operator reset this account's key, or the account was deleted and made again; if you still trust this device, publish its key again with 'clinkctl keys publish --again' (your contacts will see a key change)"
	case errors.Is(err, client.ErrOwnKeyReplaced):
		return "another device's key is bound to this account now; use that device, or move this one's keys to it with 'clinkctl sync'"
	case errors.Is(err, client.ErrNotAuthorized):
		return "check the password or app token ($CLINKCTL_PASSWORD, --password-file)"
	case errors.As(err, &re) && re.MaxValidity > 0:
		if re.MinValidity > 0 {
			return fmt.Sprintf("clinkd accepts a --ttl between %v and %v", re.MinValidity, re.MaxValidity)
		}
		return fmt.Sprintf("clinkd accepts a --ttl of at most %v for this recipient now", re.MaxValidity)
	case errors.As(err, &re) && re.Temporary():
		return "clinkd refused for a limit it may not have later; try again later"
	case errors.Is(err, client.ErrUnconfirmed):
		return "the connection dropped before clinkd answered; sending again may show the message twice, never lose it"
	}
	return ""
}

const usage = `usage: clinkctl [global flags] <command> [flags]

global flags (after --lab lab.json and --as NAME, none is needed):
  --lab FILE          lab.json written by clinklab
  --as NAME           the demo user of lab.json (alice, bob) or its JID
  --jid JID           the account (instead of --as)
  --server ADDR       c2s host:port
  --component DOMAIN  clinkd's component domain
  --ca FILE           CA certificate to verify the server (default: system roots)
  --verifier-key KEY  the key directory's verifier key (--log-key, deprecated, is the same)
  --vrf-key KEY       the key directory's VRF public key
  --witnesses KEYS    witnesses' verifier keys (comma-separated) that must cosign
                      every checkpoint of the key directory
  --witness-threshold N
                      how many of them (default: all of --witnesses)
  --home DIR          where device state lives (default $CLINKCTL_HOME or ~/.clinkctl)
  --json              print one JSON object per line on stdout (for scripts)
  The password comes from lab.json, $CLINKCTL_PASSWORD or --password-file;
  the key store passphrase from $CLINKCTL_PASSPHRASE or --passphrase-file.

commands (run login first on each device):
  login                              log in; on first run create the key store and publish the key
  keys publish [--again]             publish this device's key (--again: after an operator reset)
  keys show                          show this device's key, its verified binding and history
  keys verify JID                    look a contact's key up and verify its proof
  keys verify JID CODE               mark a contact verified: CODE is your safety code with them
  keys safety JID                    show the safety code of you and a contact, to compare
  keys accept JID [CODE]             accept a contact's changed key (a verified contact's needs
                                     the new safety code); sending to them is refused until then
  keys status                        this device's view: pinned checkpoint, own binding,
                                     contacts (unverified, verified, changed) and alarms
  send --to JID [--enhanced] [--ttl D] [--] TEXT
                                     send an end-to-end message through clinkd and wait until
                                     clinkd accepted it (flags go before the text)
  listen [--for D] [--count N]       print messages, receipts, expiries, key changes, first
                                     contacts, alarms, refusals and reconnections as they come
  sync offer [--listen ADDR]         receive this account's keys from another device (LAN only)
  sync accept --to ADDR [--code C]   send this device's keys to the offering device
  call [--to FULL-JID] [--relay-only]
                                     call a device (or wait for a call), check audio both
                                     ways, show the call screen: security, direct or relayed
  bench --to JID [-n N] [--ttl D] [--in-flight K] [--lookups M]
                                     send N messages (default 100), K at a time (default 8),
                                     each waiting for clinkd's acceptance, then look the
                                     recipient's key up M times; print count, rate, p50/p99
                                     latency and errors by condition (docs/operators.md,
                                     "Capacity"); exit 1 if any failed
`

// global are the flags before the command.
type global struct {
	lab, as, jid, server, component, ca, verifierKey, vrfKey, home string
	passwordFile, passphraseFile                                   string
	witnesses                                                      string
	witnessThreshold                                               int
}

func (e *env) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("clinkctl", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() { fmt.Fprint(e.stderr, usage) }
	var g global
	fs.StringVar(&g.lab, "lab", "", "")
	fs.StringVar(&g.as, "as", "", "")
	fs.StringVar(&g.jid, "jid", "", "")
	fs.StringVar(&g.server, "server", "", "")
	fs.StringVar(&g.component, "component", "", "")
	fs.StringVar(&g.ca, "ca", "", "")
	fs.StringVar(&g.verifierKey, "verifier-key", "", "")
	fs.StringVar(&g.verifierKey, "log-key", "", "") // deprecated name
	fs.StringVar(&g.vrfKey, "vrf-key", "", "")
	fs.BoolVar(&e.json, "json", false, "")
	fs.StringVar(&g.home, "home", "", "")
	fs.StringVar(&g.witnesses, "witnesses", "", "")
	fs.IntVar(&g.witnessThreshold, "witness-threshold", -1, "")
	fs.StringVar(&g.passwordFile, "password-file", "", "")
	fs.StringVar(&g.passphraseFile, "passphrase-file", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() == 0 || fs.Arg(0) == "help" {
		fmt.Fprint(e.stdout, usage)
		if fs.NArg() == 0 {
			return usageError{"no command"}
		}
		return nil
	}
	p, err := e.profile(g)
	if err != nil {
		return err
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "login":
		return e.login(ctx, p, rest)
	case "keys":
		return e.keys(ctx, p, rest)
	case "send":
		return e.send(ctx, p, rest)
	case "listen":
		return e.listen(ctx, p, rest)
	case "sync":
		return e.sync(ctx, p, rest)
	case "call":
		return e.call(ctx, p, rest)
	case "bench":
		return e.bench(ctx, p, rest)
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

// profile is everything needed to be one device of one account.
type profile struct {
	jid        jid.JID
	password   string
	passphrase string
	server     string
	component  jid.JID
	tls        *tls.Config
	verifier   string // the key directory's verifier key
	vrfKey     string // the key directory's VRF public key
	witnesses  client.WitnessPolicy
	dir        string // this account's state on this device
	lab        bool   // from lab.json: everything on loopback
}

func (e *env) profile(g global) (*profile, error) {
	p := &profile{}
	var info *labfile.Info
	if g.lab != "" {
		i, err := labfile.Read(g.lab)
		if err != nil {
			return nil, err
		}
		info = &i
		p.lab = true
		p.server, p.verifier, p.vrfKey = i.C2S, i.VerifierKey, i.VRFKey
		p.witnesses = client.WitnessPolicy{Keys: i.Witnesses, Threshold: i.WitnessThreshold}
		p.component = jid.MustParse(i.Component)
		if g.ca == "" {
			g.ca = i.CAFile
		}
	}
	who := g.jid
	if g.as != "" {
		if info == nil {
			return nil, usageError{"--as needs --lab"}
		}
		if u, ok := info.User(g.as); ok {
			who, p.password = u.JID, u.Password
		}
		if who == "" {
			return nil, usageError{fmt.Sprintf("no user %q in %s", g.as, g.lab)}
		}
	}
	if who == "" {
		return nil, usageError{"say who you are: --as NAME (with --lab) or --jid JID"}
	}
	j, err := jid.Parse(who)
	if err != nil || j.Localpart() == "" {
		return nil, usageError{fmt.Sprintf("%q is not a user JID", who)}
	}
	p.jid = j.Bare()
	if g.server != "" {
		p.server = g.server
	}
	if g.component != "" {
		if p.component, err = jid.Parse(g.component); err != nil {
			return nil, usageError{fmt.Sprintf("--component: %v", err)}
		}
	}
	if g.verifierKey != "" {
		p.verifier = g.verifierKey
	}
	if g.vrfKey != "" {
		p.vrfKey = g.vrfKey
	}
	if g.witnesses != "" {
		p.witnesses = client.WitnessPolicy{Keys: strings.Split(g.witnesses, ","), Threshold: len(strings.Split(g.witnesses, ","))}
	}
	if g.witnessThreshold >= 0 {
		p.witnesses.Threshold = g.witnessThreshold
	}
	p.tls = &tls.Config{ServerName: p.jid.Domainpart(), MinVersion: tls.VersionTLS12}
	if g.ca != "" {
		pool, err := client.LoadCertPool(g.ca)
		if err != nil {
			return nil, err
		}
		p.tls.RootCAs = pool
	}
	if s := e.getenv("CLINKCTL_PASSWORD"); s != "" {
		p.password = s
	}
	if g.passwordFile != "" {
		if p.password, err = readSecret(g.passwordFile); err != nil {
			return nil, err
		}
	}
	p.passphrase = e.getenv("CLINKCTL_PASSPHRASE")
	if g.passphraseFile != "" {
		if p.passphrase, err = readSecret(g.passphraseFile); err != nil {
			return nil, err
		}
	}
	home := g.home
	if home == "" {
		home = e.getenv("CLINKCTL_HOME")
	}
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return nil, err
		}
		home = filepath.Join(h, ".clinkctl")
	}
	p.dir = filepath.Join(home, p.jid.String())
	return p, nil
}

func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func (p *profile) keystorePath() string { return filepath.Join(p.dir, "keys") }

// need checks that the profile names what a command needs.
func (p *profile) need(server, component, verifier, passphrase bool) error {
	switch {
	case server && p.server == "":
		return usageError{"no server: --server ADDR or --lab"}
	case server && p.password == "":
		return usageError{"no password: $CLINKCTL_PASSWORD, --password-file or --lab"}
	case component && p.component.Domainpart() == "":
		return usageError{"no clinkd component: --component DOMAIN or --lab"}
	case verifier && p.verifier == "":
		return usageError{"no key directory verifier key: --verifier-key KEY or --lab"}
	case verifier && p.vrfKey == "":
		return usageError{"no key directory VRF key: --vrf-key KEY or --lab"}
	case passphrase && p.passphrase == "":
		return usageError{"no key store passphrase: $CLINKCTL_PASSPHRASE or --passphrase-file"}
	}
	return nil
}

// openStore opens this account's key store, or creates it on first run
// (create), with a fresh RSA-3072 identity; an existing one is never
// replaced.
func (p *profile) openStore(create bool) (*keystore.Store, bool, error) {
	s, err := keystore.Open(p.keystorePath(), []byte(p.passphrase))
	if err == nil {
		return s, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || !create {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, errors.New("no key store on this device yet: run 'clinkctl login' (or 'clinkctl sync offer') first")
		}
		return nil, false, err
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, false, err
	}
	id, err := envelope.GenerateIdentity(p.jid.String())
	if err != nil {
		return nil, false, err
	}
	s, err = keystore.Create(p.keystorePath(), []byte(p.passphrase), id)
	return s, true, err
}

// device logs in and returns the device, started unless !start (then
// the caller runs Start's steps itself).
func (p *profile) device(ctx context.Context, create, start bool) (*client.Device, bool, error) {
	if err := p.need(true, true, true, true); err != nil {
		return nil, false, err
	}
	store, created, err := p.openStore(create)
	if err != nil {
		return nil, false, err
	}
	if err := p.importPins(store); err != nil {
		return nil, false, err
	}
	c, err := client.Dial(ctx, client.Config{Addr: p.server, JID: p.jid, Password: p.password, TLS: p.tls})
	if err != nil {
		return nil, false, err
	}
	id, err := p.deviceID()
	if err != nil {
		c.Close()
		return nil, false, err
	}
	d, err := client.NewDevice(client.DeviceConfig{Client: c, Store: store, Component: p.component, VerifierKey: p.verifier, VRFKey: p.vrfKey, Witnesses: p.witnesses, DeviceID: id})
	if err != nil {
		c.Close()
		return nil, false, err
	}
	if start {
		if err := d.Start(ctx); err != nil {
			c.Close()
			return nil, false, err
		}
	}
	return d, created, nil
}

// importPins moves the pin file of an older clinkctl (pins.json beside
// the key store) into the key store, the one state file.
func (p *profile) importPins(store *keystore.Store) error {
	path := filepath.Join(p.dir, "pins.json")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	pins, err := client.OpenFilePins(path)
	if err != nil {
		return err
	}
	if err := client.ImportPins(pins, store); err != nil {
		return err
	}
	return os.Rename(path, path+".imported")
}

// deviceID is this device's stable, random, non-secret name: for sync,
// and announced to clinkd (DeviceConfig.DeviceID).
func (p *profile) deviceID() (string, error) {
	path := filepath.Join(p.dir, "device-id")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return "", err
	}
	b := make([]byte, 8)
	rand.Read(b)
	id := "clinkctl-" + hex.EncodeToString(b)
	return id, os.WriteFile(path, []byte(id+"\n"), 0o600)
}

// prompt reads one line from stdin.
func (e *env) prompt(question string) (string, error) {
	fmt.Fprint(e.stderr, question)
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("no answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}
