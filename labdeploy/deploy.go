// Package deploy brings up a whole local ClinkMe deployment from real
// programs: PostgreSQL, Prosody or ejabberd with clinkd attached, and
// coturn, all on loopback with generated configs and a private CA. It is
// what clinklab runs, and what a newcomer tries first.
package labdeploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/clinkme/clinkd/client/labfile"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
)

// Options configures Start.
type Options struct {
	Server lab.ServerKind // prosody (default) or ejabberd
	// Dir holds everything the deployment writes, lab.json included.
	Dir string
	// DatabaseURL is an admin URL of an existing PostgreSQL server; empty
	// means CLINK_TEST_DATABASE_URL, else a throwaway cluster in Dir.
	DatabaseURL string
	Logger      *slog.Logger // the servers' progress; nil discards
	// ClinkdLogger is clinkd's own log; nil discards.
	ClinkdLogger *slog.Logger
	// Fast is for measurement only, never for a deployment: it lifts the
	// XMPP server's c2s shapers and rate limits (lab.XMPPOptions.Fast) and
	// sets clinkd's per-sender relay rate, timed-message quotas and key
	// lookup rate to benchmark values (FastLimits), so that a benchmark
	// measures clinkd's work rather than the limits that protect it.
	Fast bool
}

// FastLimits sets cfg's per-sender limits to the benchmark values
// Options.Fast uses: high enough that `clinkctl bench` on a lab is never
// throttled, and far too high for any deployment.
func FastLimits(cfg *daemon.Config) {
	cfg.Relay = daemon.RelayConfig{PerMinute: 1_000_000, Burst: 100_000}
	cfg.KeyDir.LookupPerMinute, cfg.KeyDir.LookupBurst = 1_000_000, 100_000
	cfg.Expiry.PerUserMessages, cfg.Expiry.PerSenderMessages, cfg.Expiry.PerPairMessages = 100_000, 100_000, 100_000
	cfg.Expiry.TotalBytes = 1 << 30
	cfg.Expiry.PerUserBytes, cfg.Expiry.PerSenderBytes = cfg.Expiry.TotalBytes, cfg.Expiry.TotalBytes
	cfg.Receipts.PerUserHeld = 100_000
}

// LabWitnesses is how many witnesses the lab starts; devices and
// auditors given lab.json require all of them. Two, since a litewitness
// costs about 70 ms to start and a few MB: the lab shows a threshold
// above one.
const LabWitnesses = 2

// The lab's names. Everything resolves to loopback: *.localhost names are
// reserved for it (RFC 6761).
const (
	Domain          = "lab.localhost"
	ComponentDomain = "clink.lab.localhost"
	TURNRealm       = "turn.lab.localhost"
)

// A Deployment is a running lab. Close stops it.
type Deployment struct {
	Info   labfile.Info
	CA     *lab.CA
	PG     *lab.Postgres
	XMPP   *lab.XMPPServer
	Coturn *lab.Coturn
	// Witnesses cosign every checkpoint of the key directory (two real
	// litewitness processes; devices given lab.json require both).
	Witnesses []*lab.Witness
	Daemon    *daemon.Daemon

	fast    bool // Options.Fast: limits lifted, for measurement only
	stop    context.CancelFunc
	done    chan error
	closers []func() error
	once    sync.Once
}

func randomSecret() string {
	b := make([]byte, 24)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Start brings everything up, registers alice and bob, and writes
// Dir/lab.json. On error, whatever started is stopped again.
func Start(ctx context.Context, opts Options) (_ *Deployment, err error) {
	if opts.Server == "" {
		opts.Server = lab.Prosody
	}
	if opts.Server != lab.Prosody && opts.Server != lab.Ejabberd {
		return nil, fmt.Errorf("labdeploy: unknown server %q (want prosody or ejabberd)", opts.Server)
	}
	if opts.Dir == "" {
		return nil, errors.New("labdeploy: no directory")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("labdeploy: %w", err)
	}
	d := &Deployment{fast: opts.Fast}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	log := opts.Logger

	if d.CA, err = lab.NewCA(opts.Dir); err != nil {
		return nil, fmt.Errorf("labdeploy: CA: %w", err)
	}
	comp := lab.Component{Domain: ComponentDomain, Secret: randomSecret()}
	turnSecret := randomSecret()

	// The servers are independent; start them together.
	var wg sync.WaitGroup
	var pgErr, xmppErr, turnErr error
	witnesses := make([]*lab.Witness, LabWitnesses)
	witnessErrs := make([]error, LabWitnesses)
	for i := range witnesses {
		wg.Go(func() {
			witnesses[i], witnessErrs[i] = lab.StartWitness(ctx, lab.WitnessOptions{
				Dir: opts.Dir, Name: fmt.Sprintf("w%d.witness.%s", i+1, Domain), Logger: log,
			})
		})
	}
	wg.Go(func() {
		d.PG, pgErr = lab.StartPostgres(ctx, lab.PostgresOptions{Dir: opts.Dir, AdminURL: opts.DatabaseURL, Logger: log})
	})
	wg.Go(func() {
		d.XMPP, xmppErr = lab.StartXMPP(ctx, lab.XMPPOptions{
			Kind: opts.Server, Dir: opts.Dir, Domain: Domain, CA: d.CA,
			Components: []lab.Component{comp}, Fast: opts.Fast, Logger: log,
		})
	})
	wg.Go(func() {
		d.Coturn, turnErr = lab.StartCoturn(ctx, lab.CoturnOptions{
			Dir: opts.Dir, Realm: TURNRealm, Secret: turnSecret, CA: d.CA,
			AllowLoopbackPeers: true, Logger: log,
		})
	})
	wg.Wait()
	if d.PG != nil {
		d.closers = append(d.closers, d.PG.Close)
	}
	if d.XMPP != nil {
		d.closers = append(d.closers, d.XMPP.Close)
	}
	if d.Coturn != nil {
		d.closers = append(d.closers, d.Coturn.Close)
	}
	for _, w := range witnesses {
		if w != nil {
			d.Witnesses = append(d.Witnesses, w)
			d.closers = append(d.closers, w.Close)
		}
	}
	if err := errors.Join(append([]error{pgErr, xmppErr, turnErr}, witnessErrs...)...); err != nil {
		return nil, fmt.Errorf("labdeploy: %w", err)
	}

	dbURL, err := d.PG.CreateDatabase(ctx, "clinkd_lab")
	if err != nil {
		return nil, fmt.Errorf("labdeploy: database: %w", err)
	}
	d.closers = append(d.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return d.PG.DropDatabase(ctx, dbURL)
	})

	certFile, keyFile, err := d.CA.Issue(opts.Dir, "clinkd-public", "localhost", "127.0.0.1")
	if err != nil {
		return nil, fmt.Errorf("labdeploy: certificate: %w", err)
	}
	// The key directory signs its log with a key made for this lab, and
	// indexes JIDs with a VRF key of its own. (The lab's origin predates
	// the URL-prefix recommendation for new logs, and the lab's URL is a
	// new port each run: it keeps a fixed name.)
	keyOrigin := ComponentDomain + "/keydir"
	vkey, err := keylog.GenerateKey(keyOrigin, filepath.Join(opts.Dir, "keydir-signer.key"))
	if err != nil {
		return nil, fmt.Errorf("labdeploy: key directory signer: %w", err)
	}
	vrfKey, err := keylog.GenerateVRFKey(keyOrigin, filepath.Join(opts.Dir, "keydir.vrf"))
	if err != nil {
		return nil, fmt.Errorf("labdeploy: key directory VRF key: %w", err)
	}
	cfg := daemon.Defaults()
	// Every witness cosigns the log from its first checkpoint on.
	for _, w := range d.Witnesses {
		if err := w.AddLog(ctx, keyOrigin, vkey); err != nil {
			return nil, fmt.Errorf("labdeploy: %w", err)
		}
		cfg.KeyDir.Witness.URLs = append(cfg.KeyDir.Witness.URLs, w.URL)
		cfg.KeyDir.Witness.Keys = append(cfg.KeyDir.Witness.Keys, w.VerifierKey)
	}
	cfg.KeyDir.Witness.Threshold = len(d.Witnesses)
	cfg.KeyDir.SignerKeyFile = filepath.Join(opts.Dir, "keydir-signer.key")
	cfg.KeyDir.VRFKeyFile = filepath.Join(opts.Dir, "keydir.vrf")
	cfg.Link = daemon.LinkConfig{
		Addr: d.XMPP.Components[0].Addr, Domain: comp.Domain, Secret: comp.Secret, ServerDomain: Domain,
	}
	cfg.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
	if opts.Fast {
		FastLimits(&cfg)
	}
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Public = daemon.PublicConfig{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile}
	cfg.TURN = daemon.TURNConfig{
		Secret: turnSecret,
		Services: []string{
			"stun:" + d.Coturn.UDPAddr,
			"turn:" + d.Coturn.UDPAddr + "?transport=udp",
			"turn:" + d.Coturn.TCPAddr + "?transport=tcp",
			"turns:" + d.Coturn.TLSAddr + "?transport=tcp",
		},
	}
	if d.Daemon, err = daemon.New(ctx, cfg, opts.ClinkdLogger); err != nil {
		return nil, fmt.Errorf("labdeploy: clinkd: %w", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	d.stop, d.done = stop, make(chan error, 1)
	go func() { d.done <- d.Daemon.Run(runCtx) }()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := d.Daemon.Component().WaitState(wctx, component.Linked); err != nil {
		return nil, fmt.Errorf("labdeploy: clinkd did not link to %s: %w", opts.Server, err)
	}

	users := []labfile.User{{JID: "alice@" + Domain, Password: randomSecret()[:20]}, {JID: "bob@" + Domain, Password: randomSecret()[:20]}}
	for _, u := range users {
		local, _, _ := strings.Cut(u.JID, "@")
		if err := d.XMPP.Register(ctx, local, u.Password); err != nil {
			return nil, fmt.Errorf("labdeploy: register %s: %w", u.JID, err)
		}
	}
	d.Info = labfile.Info{
		Server:           string(opts.Server),
		Domain:           Domain,
		C2S:              d.XMPP.C2SAddr,
		Component:        comp.Domain,
		CAFile:           d.CA.CertFile,
		AdminURL:         "http://" + d.Daemon.AdminAddr(),
		PublicURL:        d.Daemon.PublicURL(),
		VerifierKey:      vkey,
		VRFKey:           vrfKey,
		KeyLogURL:        d.Daemon.PublicURL() + daemon.KeyDirLogPrefix,
		Witnesses:        cfg.KeyDir.Witness.Keys,
		WitnessThreshold: cfg.KeyDir.Witness.Threshold,
		TURN:             labfile.TURN{Realm: TURNRealm, UDP: d.Coturn.UDPAddr, TCP: d.Coturn.TCPAddr, TLS: d.Coturn.TLSAddr},
		Users:            users,
	}
	if err := labfile.Write(filepath.Join(opts.Dir, "lab.json"), d.Info); err != nil {
		return nil, err
	}
	return d, nil
}

// Close stops clinkd, then the servers, and drops the database. It is
// idempotent.
func (d *Deployment) Close() error {
	var errs []error
	d.once.Do(func() {
		if d.stop != nil {
			d.stop()
			select {
			case err := <-d.done:
				errs = append(errs, err)
			case <-time.After(30 * time.Second):
				errs = append(errs, errors.New("labdeploy: clinkd did not stop"))
			}
		} else if d.Daemon != nil {
			d.Daemon.Close()
		}
		// The database goes before the server it lives on.
		for i := len(d.closers) - 1; i >= 0; i-- {
			errs = append(errs, d.closers[i]())
		}
	})
	return errors.Join(errs...)
}

// Summary is the short text clinklab prints.
func (d *Deployment) Summary(labJSON string) string {
	i := d.Info
	s := fmt.Sprintf(`ClinkMe lab is up (%s with clinkd attached, PostgreSQL, coturn).

  XMPP c2s        %s   domain %s   (StartTLS required; CA %s)
  clinkd          component %s
  admin           %s/metrics  /healthz  /readyz
  public HTTPS    %s   (key log for auditors: %s)
  witnesses       %s   (%d cosignatures required)
  TURN            udp %s  tcp %s  tls %s   realm %s
  demo users      %s, %s   (passwords in %s)
%s
Check it:  clinkd doctor --lab %s
Try it:    clinkctl --lab %s ...   Stop with Ctrl-C.
`, i.Server, i.C2S, i.Domain, i.CAFile, i.Component, i.AdminURL, i.PublicURL, i.KeyLogURL, strings.Join(witnessURLs(d.Witnesses), " "), i.WitnessThreshold,
		i.TURN.UDP, i.TURN.TCP, i.TURN.TLS, i.TURN.Realm, i.Users[0].JID, i.Users[1].JID, labJSON, fastNote(d.fast), labJSON, labJSON)
	return s
}

// fastNote is what the summary says of Options.Fast.
func fastNote(fast bool) string {
	if !fast {
		return ""
	}
	return `
FAST: the XMPP server's c2s shapers and clinkd's per-sender rates and
quotas are lifted. This lab is for measurement only (clinkctl bench);
never configure a deployment like it.
`
}

func witnessURLs(ws []*lab.Witness) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.URL)
	}
	return out
}
