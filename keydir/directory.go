// Package keydir is the server of ClinkMe's public-key directory, whose
// every answer can be verified: each binding of a bare JID to a public key
// is a leaf of an append-only Merkle log (RFC 6962, through
// golang.org/x/mod/sumdb/tlog) whose signed checkpoints (C2SP
// tlog-checkpoint, Ed25519 signed notes) let devices and independent
// auditors prove what the server said, and every v1 leaf names the root
// of a map (a compact prefix tree) from each JID's private index (an RFC
// 9381 VRF output) to its current value, so that an answer proves that a
// binding is current, or that a JID has none. docs/protocol.md specifies
// the wire protocol and the formats; docs/keydir.md is the operator's
// guide.
//
// The policy: the first key published for a JID wins and cannot be
// replaced by its owner. Only an operator reset or the account's deletion
// ends a binding (logdb.Store.End), and both append an entry to the log,
// which is never rewritten.
//
// A Directory answers the XMPP payloads (Register), signs checkpoints
// (never one that does not extend the last one signed, which it keeps in
// a state file outside the database) and serves the log read-only over
// HTTP in the C2SP tlog-tiles layout (LogHandler). The formats are
// package keylog's; the log lives in PostgreSQL through keydir/logdb;
// keydir/audit verifies the log from its tiles and links nothing of the
// server but keylog.
package keydir

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/keydirxml"
	"github.com/clinkme/clinkd/internal/ratelimit"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

// Config configures a Directory.
type Config struct {
	// Signer signs checkpoints; its name is the log's origin. Verifier
	// is its own verifier (keylog.LoadSignerKey gives both), with which
	// the state file is read back. Both required.
	Signer   note.Signer
	Verifier note.Verifier
	// StateFile keeps the last checkpoint signed (required): on the
	// host's disk beside the signer key, never in the database.
	StateFile string
	// LocalDomain is the XMPP server's own domain: only its users may
	// publish, and they and the users of the Federated domains may look
	// keys up; the directory serves nobody else. Required.
	LocalDomain string
	Federated   []string
	// Accounts says whether a local account exists: a publish from a name
	// it does not know is refused, so that a session that outlived its
	// account's deletion cannot bind a new key. Required: a
	// *clinkid.Service, or ServerAccounts when the XMPP server alone keeps
	// the accounts.
	Accounts Accounts
	// LookupPerMinute and LookupBurst bound each requester's lookups (a
	// batch costs one token per JID; checkpoint, consistency and history
	// requests one each). Defaults 600 and 100.
	LookupPerMinute float64
	LookupBurst     int
	// PublishPerMinute and PublishBurst bound each requester's publishes.
	// Defaults 6 and 3.
	PublishPerMinute float64
	PublishBurst     int
	// MaxBatch is the most JIDs one lookup may name (default 20).
	MaxBatch int
	// TickInterval: when no v1 record was appended for this long, Run
	// appends a tick, so that the log's head is never older than this
	// plus Run's period (default 1h; devices refuse a head older than
	// their max age, 24h by default).
	TickInterval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Witnesses cosign every checkpoint before it is served (witness.go;
	// the zero value: none).
	Witnesses WitnessConfig
}

// Accounts knows which local accounts exist.
type Accounts interface {
	// AccountExists reports whether the local account bare exists.
	AccountExists(ctx context.Context, bare jid.JID) (bool, error)
}

// ServerAccounts is the Accounts of a clinkd without ClinkID: the XMPP
// server authenticated the sender, and there is no account store to ask,
// so every sender it stamps is taken to exist.
type ServerAccounts struct{}

// AccountExists implements Accounts.
func (ServerAccounts) AccountExists(context.Context, jid.JID) (bool, error) { return true, nil }

// DefaultMaxBatch is the default bound on JIDs per lookup.
const DefaultMaxBatch = 20

// DefaultTickInterval is TickInterval's default.
const DefaultTickInterval = time.Hour

// checkPeriod is how often Run compares the database with the last
// signed checkpoint (a failover to a lagging replica shows without
// traffic) and considers a tick.
const checkPeriod = 30 * time.Second

// A Directory serves the key directory over XMPP and its log over HTTP.
type Directory struct {
	cfg      Config
	served   map[string]bool // domains whose users the directory serves
	store    *logdb.Store
	log      *slog.Logger
	lookups  *ratelimit.Limiter
	pubs     *ratelimit.Limiter
	metrics  *prometheus.CounterVec
	cosigner *cosigner

	mu     sync.Mutex        // serializes signing; guards signed and fault
	signed *signedCheckpoint // the last checkpoint signed (the state file's)
	fault  string            // why the directory refuses to serve; "" when ready

	hmu  sync.Mutex  // guards head, headXML and entries
	head *provenHead // the head of the last answer
	// headXML is the last answer's checkpoint and head, encoded.
	headXML encodedHead
	// entries are the entries of the last answers, proven and checked
	// against one checkpoint and map root (provenEntries).
	entries provenEntries

	bare bareJIDs // the JIDs lookups named, parsed

	unchanged atomic.Int64 // lookups answered "unchanged" (conditional lookups)
}

// bareJIDs remembers what keylog.ParseBareJID made of the JIDs lookups
// named: devices look the same contacts up again and again, and the parse
// (PRECIS and IDNA, twice) was a sixth of a lookup's own work in clinkd.
// The results of a pure function: nothing to invalidate.
type bareJIDs struct {
	mu sync.Mutex
	m  map[string]jid.JID
}

// maxBareJIDs bounds bareJIDs (a few hundred bytes each, at most).
const maxBareJIDs = 10_000

func (c *bareJIDs) parse(s string) (jid.JID, error) {
	c.mu.Lock()
	j, ok := c.m[s]
	c.mu.Unlock()
	if ok {
		return j, nil
	}
	j, err := keylog.ParseBareJID(s)
	if err != nil {
		return jid.JID{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxBareJIDs {
		c.m = make(map[string]jid.JID)
	}
	c.m[s] = j
	return j, nil
}

// provenEntries are v1 entries built, checked and proven against one
// checkpoint and map root. Under the same checkpoint and map root a JID's
// entry is the same: the map gives its value and map proof, the value
// names a record of the log (which never changes once written) and a key
// (likewise), and the checkpoint fixes the inclusion proof. So an entry
// is built once per JID and size rather than for every lookup (issue 15:
// building it was an eighth of a lookup's CPU in clinkd, most of it its
// inclusion proof). A new checkpoint or map root empties it; at
// maxProvenEntries it starts afresh.
type provenEntries struct {
	cp      keylog.Checkpoint
	mapRoot [32]byte
	byJID   map[string]encodedEntry // never modified once stored
}

// encodedEntry is a proven entry and its XML (Entry1.AppendXML), which
// lookups write as it is.
type encodedEntry struct {
	entry keydirxml.Entry1
	xml   []byte
}

// maxProvenEntries bounds provenEntries: with a 4096-bit key an entry is
// about 2 to 3 KB (key, map proof and inclusion proof in base64, the
// proofs growing with the log), and as much again as XML, so at most
// about 16 to 22 MB.
const maxProvenEntries = 4096

// provenEntry returns the entry of jid proven against cp and mapRoot, if
// an earlier answer built it.
func (d *Directory) provenEntry(jid string, cp keylog.Checkpoint, mapRoot [32]byte) (encodedEntry, bool) {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	if d.entries.cp != cp || d.entries.mapRoot != mapRoot {
		return encodedEntry{}, false
	}
	e, ok := d.entries.byJID[jid]
	return e, ok
}

// keepEntry remembers an entry proven against cp and mapRoot.
func (d *Directory) keepEntry(e encodedEntry, cp keylog.Checkpoint, mapRoot [32]byte) {
	d.hmu.Lock()
	defer d.hmu.Unlock()
	if d.entries.cp != cp || d.entries.mapRoot != mapRoot || len(d.entries.byJID) >= maxProvenEntries {
		d.entries = provenEntries{cp: cp, mapRoot: mapRoot, byJID: make(map[string]encodedEntry)}
	}
	d.entries.byJID[e.entry.JID] = e
}

type signedCheckpoint struct {
	cp  keylog.Checkpoint
	msg []byte
}

// New checks cfg and makes a Directory over store. reg may be nil. Start
// must run before it serves.
func New(cfg Config, store *logdb.Store, log *slog.Logger, reg prometheus.Registerer) (*Directory, error) {
	if cfg.Signer == nil || cfg.Verifier == nil {
		return nil, errors.New("keydir: no checkpoint signer and its verifier")
	}
	if cfg.Verifier.Name() != cfg.Signer.Name() || cfg.Verifier.KeyHash() != cfg.Signer.KeyHash() {
		return nil, errors.New("keydir: the verifier is not the signer's")
	}
	if cfg.StateFile == "" {
		return nil, errors.New("keydir: no signer state file (it keeps the last checkpoint signed, outside the database)")
	}
	if store == nil {
		return nil, errors.New("keydir: no store")
	}
	if store.VRF().Public().Name != cfg.Signer.Name() {
		return nil, fmt.Errorf("keydir: the VRF key is named %q, the log %q", store.VRF().Public().Name, cfg.Signer.Name())
	}
	if cfg.LocalDomain == "" {
		return nil, errors.New("keydir: no local domain (whose users it serves)")
	}
	if cfg.Accounts == nil {
		return nil, errors.New("keydir: no Accounts (ServerAccounts when the XMPP server alone keeps them)")
	}
	served := map[string]bool{}
	for _, dom := range append([]string{cfg.LocalDomain}, cfg.Federated...) {
		j, err := jid.Parse(dom)
		if err != nil || j.Localpart() != "" || j.Resourcepart() != "" {
			return nil, fmt.Errorf("keydir: %q is not a domain", dom)
		}
		served[j.Domainpart()] = true
	}
	if cfg.LookupPerMinute <= 0 {
		cfg.LookupPerMinute = 600
	}
	if cfg.LookupBurst <= 0 {
		cfg.LookupBurst = 100
	}
	if cfg.PublishPerMinute <= 0 {
		cfg.PublishPerMinute = 6
	}
	if cfg.PublishBurst <= 0 {
		cfg.PublishBurst = 3
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxBatch > keydirxml.MaxBatchOnWire {
		return nil, fmt.Errorf("keydir: batch bound %d is over %d", cfg.MaxBatch, keydirxml.MaxBatchOnWire)
	}
	if cfg.LookupBurst < cfg.MaxBatch {
		// A full batch must be possible at all.
		return nil, fmt.Errorf("keydir: lookup burst %d is smaller than the batch bound %d", cfg.LookupBurst, cfg.MaxBatch)
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = DefaultTickInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, w := range cfg.Witnesses.Witnesses {
		if w.Verifier != nil && w.Verifier.Name() == cfg.Signer.Name() {
			return nil, fmt.Errorf("keydir: witness %q has the log's own name", w.Verifier.Name())
		}
	}
	cs, err := newCosigner(cfg.Witnesses, log, cfg.Now)
	if err != nil {
		return nil, err
	}
	d := &Directory{
		cosigner: cs,
		cfg:      cfg,
		served:   served,
		store:    store,
		log:      log,
		lookups:  ratelimit.New(cfg.LookupPerMinute/60, cfg.LookupBurst, 100_000),
		pubs:     ratelimit.New(cfg.PublishPerMinute/60, cfg.PublishBurst, 100_000),
		metrics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_keydir_requests_total",
			Help: "Key directory requests by kind and outcome.",
		}, []string{"kind", "outcome"}),
		fault: "not started",
	}
	if reg != nil {
		reg.MustRegister(d.metrics,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "clinkd_keydir_size_lease_held",
				Help: "1 while this clinkd holds its size lease and answers lookups without reading the log's size row (docs/keydir.md, \"Size leases\").",
			}, func() float64 {
				if store.Leased() {
					return 1
				}
				return 0
			}),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "clinkd_keydir_size_row_reads_total",
				Help: "Statements lookups sent that read the log's size row (none for a lookup under the size lease that needs nothing else).",
			}, func() float64 { return float64(store.SizeRowReads()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "clinkd_keydir_lookups_unchanged_total",
				Help: "Conditional lookups answered \"unchanged\": the device held every entry asked at the log's current size (docs/protocol.md, \"Conditional lookups\").",
			}, func() float64 { return float64(d.unchanged.Load()) }))
		cs.register(reg)
	}
	return d, nil
}

// Origin is the log's origin line (the signer's name).
func (d *Directory) Origin() string { return d.cfg.Signer.Name() }

// Store returns the directory's store, whose End is how bindings end.
func (d *Directory) Store() *logdb.Store { return d.store }

// Register routes the directory's payloads on c: the v1 requests, and of
// v0 the checkpoint and consistency requests (the log is the same, so a
// v0 device's pin still extends), while a v0 publish, lookup or history
// gets feature-not-implemented naming v1: an inclusion-only answer cannot
// show that a binding is current.
func (d *Directory) Register(c *component.Component) {
	h := func(ns, local string, f func(context.Context, *component.Stanza) (any, error)) {
		c.HandleIQ(xml.Name{Space: ns, Local: local}, component.IQHandlerFunc(func(ctx context.Context, iq *component.Stanza) (any, error) {
			res, err := d.ready(ctx)
			if err == nil {
				res, err = f(ctx, iq)
			}
			outcome := "ok"
			if err != nil {
				outcome = "error"
				var se stanza.Error
				switch {
				case errors.Is(err, errNotReady):
					outcome = "not_ready"
				case errors.As(err, &se):
					outcome = string(se.Condition)
				}
			}
			d.metrics.WithLabelValues(local, outcome).Inc()
			return res, err
		}))
	}
	h(keydirxml.NS1, "publish", d.handlePublish)
	h(keydirxml.NS1, "lookup", d.handleLookup)
	h(keydirxml.NS1, "checkpoint", d.checkpointHandler(false))
	h(keydirxml.NS1, "consistency", d.consistencyHandler(false))
	h(keydirxml.NS1, "history", d.handleHistory)
	h(keydirxml.NS, "checkpoint", d.checkpointHandler(true))
	h(keydirxml.NS, "consistency", d.consistencyHandler(true))
	for _, local := range []string{"publish", "lookup", "history"} {
		h(keydirxml.NS, local, handleV0)
	}
}

// V0Refusal is the text of the error a v0 publish, lookup or history
// gets.
const V0Refusal = "keydir: this server answers publish, lookup and history only in " + keydirxml.NS1 + " (key directory v1); update ClinkMe"

func handleV0(context.Context, *component.Stanza) (any, error) {
	return nil, component.Error(stanza.FeatureNotImplemented, V0Refusal)
}

// errNotReady is what every request gets while the directory refuses to
// serve (Ready says why): internal-server-error on the wire, as for any
// storage fault.
var errNotReady = errors.New("keydir: not ready")

// ready returns errNotReady (logged with the reason) while the
// directory is faulted, after checking again whether the fault is gone.
// A request does not check a ready directory: every signing does, and
// Run every 30 s.
func (d *Directory) ready(ctx context.Context) (any, error) {
	if reason := d.serving(ctx); reason != "" {
		d.log.Debug("keydir: request refused", "reason", reason)
		return nil, errNotReady
	}
	return nil, nil
}

func (d *Directory) serving(ctx context.Context) string {
	d.mu.Lock()
	faulted := d.fault != ""
	d.mu.Unlock()
	if faulted {
		d.check(ctx)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fault
}

// Ready checks the database against the last signed checkpoint (two
// queries) and returns "" when the directory serves, else why not: for
// /readyz, which is polled, so that a rollback shows there without
// traffic. A restored database makes it ready again.
func (d *Directory) Ready(ctx context.Context) string {
	d.check(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fault
}

// setFault records why the directory refuses to serve, logging the
// reason and what to do once per change. Called with mu held.
func (d *Directory) setFault(reason string) {
	if reason == d.fault {
		return
	}
	if reason == "" {
		d.log.Info("keydir: ready")
	} else {
		d.log.Error("keydir: refusing to serve lookups and publishes", "reason", reason,
			"do", "restore the database to at least the last signed checkpoint; docs/keydir.md, \"After a database rollback\"")
	}
	d.fault = reason
}

// Start reads the signer state and checks the database against it: the
// start-up half of "never sign a fork". An empty database with no state
// starts a new log (genesis record, first checkpoint, state file).
// Whatever it finds wrong it keeps as the fault that Ready reports; it
// returns an error only for a state file it cannot read at all.
func (d *Directory) Start(ctx context.Context) error {
	b, err := os.ReadFile(d.cfg.StateFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		st, err := d.store.Tree(ctx)
		if err != nil {
			return fmt.Errorf("keydir: start: %w", err)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		switch {
		case st.Size == 0:
			if _, err := d.store.Init(ctx, d.cfg.Now()); err != nil {
				return fmt.Errorf("keydir: start: %w", err)
			}
			size, err := d.store.Size(ctx)
			if err != nil {
				return fmt.Errorf("keydir: start: %w", err)
			}
			if _, err := d.signLocked(ctx, size); err != nil {
				return fmt.Errorf("keydir: start: %w", err)
			}
			d.setFault("")
		case st.Genesis < 0:
			d.setFault("not migrated: run clinkd keys migrate (docs/keydir.md, \"Migrate a v0 log\")")
		default:
			d.setFault(fmt.Sprintf("no signer state: %s is missing and the log is not empty (restore it from the backup kept with the signer key; docs/keydir.md)", d.cfg.StateFile))
		}
		return nil
	case err != nil:
		return fmt.Errorf("keydir: signer state: %w", err)
	}
	cp, msg, err := ParseState(b, d.cfg.Verifier)
	d.mu.Lock()
	if err != nil {
		d.setFault(fmt.Sprintf("signer state unreadable: %s: %v", d.cfg.StateFile, err))
		d.mu.Unlock()
		return nil
	}
	d.signed = &signedCheckpoint{cp: cp, msg: msg}
	d.store.SetFloor(cp.Size)
	d.mu.Unlock()
	d.check(ctx)
	return nil
}

// check compares the database with the last signed checkpoint and sets
// or clears the fault.
func (d *Directory) check(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.signed == nil {
		// Not started, or Start found no usable state: nothing to
		// compare with. A state written meanwhile (clinkd keys migrate)
		// is read at the next start.
		return
	}
	st, err := d.store.Tree(ctx)
	if err != nil {
		d.setFault("database unreadable: " + err.Error())
		return
	}
	s := d.signed.cp
	switch {
	case st.Size < s.Size:
		d.setFault(fmt.Sprintf("rolled back: the database log has %d entries, the last signed checkpoint %d (restore the database to at least %d entries; docs/keydir.md, \"After a database rollback\")", st.Size, s.Size, s.Size))
		return
	case st.Genesis < 0:
		d.setFault("not migrated: run clinkd keys migrate (docs/keydir.md, \"Migrate a v0 log\")")
		return
	}
	root, err := keylog.TreeHash(s.Size, d.store.HashReader(ctx))
	if err != nil || root != s.Hash {
		d.setFault(fmt.Sprintf("diverged: the database log differs from the last signed checkpoint at size %d", s.Size))
		return
	}
	d.setFault("")
}

// Run checks the database against the last signed checkpoint and appends
// a tick when one is due, every 30 s, until ctx ends.
func (d *Directory) Run(ctx context.Context) error {
	t := time.NewTicker(checkPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if d.Ready(ctx) != "" {
			continue
		}
		if _, err := d.store.Tick(ctx, d.cfg.Now(), d.cfg.TickInterval); err != nil && ctx.Err() == nil {
			d.log.Error("keydir: tick", "err", err)
		}
		if len(d.cfg.Witnesses.Witnesses) > 0 {
			// Have the current size cosigned (a tick's, or one a witness
			// missed) before a request waits for it.
			if _, _, err := d.Checkpoint(ctx); err != nil && ctx.Err() == nil {
				d.log.Error("keydir: checkpoint", "err", err)
			}
		}
	}
}

// Checkpoint returns the signed checkpoint for the log's current size,
// with the witnesses' cosignatures.
func (d *Directory) Checkpoint(ctx context.Context) ([]byte, keylog.Checkpoint, error) {
	for range 3 {
		size, err := d.store.Size(ctx)
		if err != nil {
			return nil, keylog.Checkpoint{}, err
		}
		sc, err := d.checkpointAt(ctx, size)
		var msg []byte
		if err == nil {
			msg, err = d.cosign(ctx, sc)
		}
		if errors.Is(err, errGrew) {
			continue
		}
		if err != nil {
			return nil, keylog.Checkpoint{}, err
		}
		return msg, sc.cp, nil
	}
	return nil, keylog.Checkpoint{}, errors.New("keydir: the log kept growing")
}

// errGrew: the size asked for is below the last signed one but the
// database has grown past it meanwhile (another request signed): ask
// again at the current size.
var errGrew = errors.New("keydir: the log grew meanwhile")

// ErrRolledBack is returned when the database has fewer entries than the
// last checkpoint signed, ErrDiverged when it has a different tree at a
// size already signed: the signer refuses both, since signing would fork
// the log.
var (
	ErrRolledBack = errors.New("keydir: the database was rolled back below the last signed checkpoint")
	ErrDiverged   = errors.New("keydir: the database log is not an extension of the last signed checkpoint")
)

// checkpointAt returns a signed checkpoint for exactly size leaves: the
// last one signed if it has that size, else a new one, which must extend
// it (checked with a consistency proof from the database against the
// state's root), and which is written to the state file before it is
// returned.
func (d *Directory) checkpointAt(ctx context.Context, size int64) (*signedCheckpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fault != "" {
		return nil, errNotReady
	}
	return d.signLocked(ctx, size)
}

func (d *Directory) signLocked(ctx context.Context, size int64) (*signedCheckpoint, error) {
	cur := d.signed
	if cur != nil && size < cur.cp.Size {
		now, err := d.store.Size(ctx)
		if err != nil {
			return nil, err
		}
		if now >= cur.cp.Size {
			return nil, errGrew
		}
		d.setFault(fmt.Sprintf("rolled back: the database log has %d entries, the last signed checkpoint %d (restore the database to at least %d entries; docs/keydir.md, \"After a database rollback\")", now, cur.cp.Size, cur.cp.Size))
		return nil, fmt.Errorf("%w: %d entries, %d signed", ErrRolledBack, now, cur.cp.Size)
	}
	if cur != nil && size == cur.cp.Size {
		return cur, nil
	}
	hr := d.store.HashReader(ctx)
	root, err := keylog.TreeHash(size, hr)
	if err != nil {
		return nil, fmt.Errorf("keydir: tree hash at %d: %w", size, err)
	}
	if cur != nil && cur.cp.Size > 0 {
		p, err := tlog.ProveTree(size, cur.cp.Size, hr)
		if err == nil {
			err = tlog.CheckTree(p, size, root, cur.cp.Size, cur.cp.Hash)
		}
		if err != nil {
			d.setFault(fmt.Sprintf("diverged: the database log differs from the last signed checkpoint at size %d", cur.cp.Size))
			return nil, fmt.Errorf("%w: the tree of %d does not extend the one of %d signed before: %v", ErrDiverged, size, cur.cp.Size, err)
		}
	}
	cp := keylog.Checkpoint{Origin: d.Origin(), Size: size, Hash: root}
	msg, err := keylog.SignCheckpoint(cp, d.cfg.Signer)
	if err != nil {
		return nil, err
	}
	// Durable before it is served: a checkpoint that a device may have
	// seen is never forgotten by the signer.
	if err := advanceState(d.cfg.StateFile, msg, cp.Size, d.cfg.Verifier); err != nil {
		return nil, err
	}
	sc := &signedCheckpoint{cp: cp, msg: msg}
	d.signed = sc
	d.store.SetFloor(size)
	return sc, nil
}

// cosign returns sc with the witnesses' cosignatures (witness.go).
func (d *Directory) cosign(ctx context.Context, sc *signedCheckpoint) ([]byte, error) {
	return d.cosigner.cosign(ctx, sc, d.store.HashReader(ctx), d.store.Size)
}

// prove returns the inclusion proof of leaf idx, whose record text is
// rec, in the tree of cp. It checks the proof before returning it: data
// read from the database is suspect until a check passes, and a device
// must never be handed a proof that fails.
//
// The hashes come from the store's cache first (they never change once
// written, and a lookup would otherwise read them in a round trip of its
// own); a proof that fails from it is made again from the database, with
// the cache dropped, since a database restored from a backup may hold
// other hashes than the ones kept. cp's root was computed from the
// database (signLocked), so the check is against the database's tree.
func (d *Directory) prove(ctx context.Context, idx int64, rec []byte, cp keylog.Checkpoint) (tlog.RecordProof, error) {
	leaf := tlog.RecordHash(rec)
	p, err := tlog.ProveRecord(cp.Size, idx, d.store.ProofHashReader(ctx)) // tree size first
	if err == nil && tlog.CheckRecord(p, cp.Size, cp.Hash, idx, leaf) == nil {
		return p, nil
	}
	d.store.Forget()
	p, err = tlog.ProveRecord(cp.Size, idx, d.store.HashReader(ctx))
	if err != nil {
		return nil, fmt.Errorf("keydir: prove leaf %d in %d: %w", idx, cp.Size, err)
	}
	if err := tlog.CheckRecord(p, cp.Size, cp.Hash, idx, leaf); err != nil {
		return nil, fmt.Errorf("%w: leaf %d does not verify against the tree of %d: %v", logdb.ErrCorrupt, idx, cp.Size, err)
	}
	return p, nil
}

// requester returns the sender's bare JID, which must be a user's of a
// domain the directory serves.
func (d *Directory) requester(iq *component.Stanza) (jid.JID, error) {
	if iq.From.Localpart() == "" {
		return jid.JID{}, component.Error(stanza.Forbidden, "the key directory serves user accounts only")
	}
	if !d.served[iq.From.Domainpart()] {
		return jid.JID{}, component.Errorf(stanza.Forbidden, "the key directory serves users of %s (and the federated domains its operator lists) only", d.cfg.LocalDomain)
	}
	return iq.From.Bare(), nil
}

func wantType(iq *component.Stanza, t stanza.IQType) error {
	if iq.Type != string(t) {
		return component.Errorf(stanza.BadRequest, "this request is an IQ %s", t)
	}
	return nil
}

func (d *Directory) allowLookups(who jid.JID, n int) error {
	if !d.lookups.AllowN(who.String(), d.cfg.Now(), n) {
		return component.Error(stanza.ResourceConstraint, "too many key directory lookups; slow down")
	}
	return nil
}

// internal logs err and returns what goes on the wire for it.
func (d *Directory) internal(what string, err error) error {
	if errors.Is(err, errNotReady) {
		return err
	}
	d.log.Error("keydir: "+what, "err", err)
	return component.Error(stanza.InternalServerError, "")
}

// answer is a snapshot proven against a signed checkpoint: the header and
// entries of a v1 result.
type answer struct {
	checkpoint string
	head       *keydirxml.Head
	entries    []keydirxml.Entry1
	cp         keylog.Checkpoint
	// The same, encoded: checkpoint and head (keydirxml.AppendAnswerHead),
	// then each entry (Entry1.AppendXML); shared, never modified.
	headXML    []byte
	entriesXML [][]byte
}

// prove signs (or reuses) the checkpoint of snap's size and builds the
// v1 answer: the head and every entry with its VRF, map and inclusion
// proofs, each checked here first.
func (d *Directory) proveSnapshot(ctx context.Context, snap *logdb.Snapshot) (*answer, error) {
	sc, err := d.checkpointAt(ctx, snap.Size)
	if err != nil {
		return nil, err
	}
	msg, err := d.cosign(ctx, sc)
	if err != nil {
		return nil, err
	}
	head, err := d.provenHead(ctx, snap, sc.cp)
	if err != nil {
		return nil, err
	}
	a := &answer{checkpoint: string(msg), cp: sc.cp, head: head}
	a.headXML = d.answerHeadXML(a.checkpoint, head)
	for _, e := range snap.Entries {
		ent, ok := d.provenEntry(e.JID, sc.cp, snap.MapRoot)
		if !ok {
			if ent.entry, err = d.entry(ctx, e, snap.MapRoot, sc.cp); err != nil {
				return nil, err
			}
			ent.xml = ent.entry.AppendXML(nil)
			d.keepEntry(ent, sc.cp, snap.MapRoot)
		}
		a.entries = append(a.entries, ent.entry)
		a.entriesXML = append(a.entriesXML, ent.xml)
	}
	return a, nil
}

// answerHeadXML returns checkpoint and head encoded
// (keydirxml.AppendAnswerHead), the last encoding again when they are the
// same: every answer at one size (and set of cosignatures) opens alike.
func (d *Directory) answerHeadXML(checkpoint string, head *keydirxml.Head) []byte {
	d.hmu.Lock()
	last := d.headXML
	d.hmu.Unlock()
	if last.head == head && last.checkpoint == checkpoint {
		return last.xml
	}
	x := keydirxml.AppendAnswerHead(nil, checkpoint, head)
	d.hmu.Lock()
	d.headXML = encodedHead{checkpoint: checkpoint, head: head, xml: x}
	d.hmu.Unlock()
	return x
}

// encodedHead is the opening of an answer, encoded.
type encodedHead struct {
	checkpoint string
	head       *keydirxml.Head // provenHead's, never modified
	xml        []byte
}

// provenHead is a head proven against a checkpoint: every answer at an
// unchanged size carries the same, so it is parsed, proven, checked and
// encoded once per size rather than for every lookup.
type provenHead struct {
	cp      keylog.Checkpoint
	record  []byte
	mapRoot [32]byte
	head    *keydirxml.Head // shared by the answers: never modified
}

// provenHead returns snap's head with its inclusion proof in the tree of
// cp, checked, reusing the last one when it is the same record proven
// against the same checkpoint.
func (d *Directory) provenHead(ctx context.Context, snap *logdb.Snapshot, cp keylog.Checkpoint) (*keydirxml.Head, error) {
	d.hmu.Lock()
	last := d.head
	d.hmu.Unlock()
	if last != nil && last.cp == cp && last.mapRoot == snap.MapRoot && bytes.Equal(last.record, snap.Head) {
		return last.head, nil
	}
	rec, err := keylog.ParseRecordV1(snap.Head)
	if err != nil || rec.Map != snap.MapRoot {
		return nil, fmt.Errorf("%w: the head record %d does not name the map root", logdb.ErrCorrupt, snap.Size-1)
	}
	hp, err := d.prove(ctx, snap.Size-1, snap.Head, cp)
	if err != nil {
		return nil, err
	}
	h := &keydirxml.Head{Index: snap.Size - 1, Record: keydirxml.EncodeBlob(snap.Head), Proof: keydirxml.EncodeHashBlob(hp)}
	d.hmu.Lock()
	d.head = &provenHead{cp: cp, record: bytes.Clone(snap.Head), mapRoot: snap.MapRoot, head: h}
	d.hmu.Unlock()
	return h, nil
}

// entry builds and checks one JID's v1 entry.
func (d *Directory) entry(ctx context.Context, e logdb.Entry, mapRoot [32]byte, cp keylog.Checkpoint) (keydirxml.Entry1, error) {
	out := keydirxml.Entry1{JID: e.JID, Status: keydirxml.StatusNone, VRF: keydirxml.EncodeBlob(e.VRFProof), Map: keydirxml.EncodeBlob(e.MapProof.Marshal())}
	if err := keylog.VerifyMap(mapRoot, e.Index, e.Value, e.MapProof); err != nil {
		return out, fmt.Errorf("%w: the map proof of %s: %v", logdb.ErrCorrupt, e.JID, err)
	}
	if e.Value == nil {
		return out, nil
	}
	v := *e.Value
	out.Version, out.Index, out.Fingerprint = v.Version, v.Entry, hex.EncodeToString(v.Fingerprint[:])
	kind, t, root, err := recordFields(e.Record)
	if err != nil {
		return out, fmt.Errorf("%w: entry %d: %v", logdb.ErrCorrupt, v.Entry, err)
	}
	out.Time = t
	if root != nil {
		out.Record, out.Root = keydirxml.RecordV1, base64.StdEncoding.EncodeToString(root[:])
	} else {
		out.Record = keydirxml.RecordV0
	}
	if v.Ended {
		out.Status, out.Kind = keydirxml.StatusEnded, string(kind)
	} else {
		out.Status, out.Key = keydirxml.StatusFound, base64.StdEncoding.EncodeToString(e.Key)
	}
	if (kind == keylog.KindPublish) == v.Ended {
		return out, fmt.Errorf("%w: entry %d is a %s, the map says ended=%v", logdb.ErrCorrupt, v.Entry, kind, v.Ended)
	}
	p, err := d.prove(ctx, v.Entry, e.Record, cp)
	if err != nil {
		return out, err
	}
	out.Proof = keydirxml.EncodeHashBlob(p)
	return out, nil
}

// recordFields reads kind, time and (v1) the map root of an entry's
// record.
func recordFields(text []byte) (keylog.Kind, int64, *[32]byte, error) {
	ver, err := keylog.RecordVersion(text)
	if err != nil {
		return "", 0, nil, err
	}
	if ver == 0 {
		r, err := keylog.ParseRecord(text)
		return r.Kind, r.Time, nil, err
	}
	r, err := keylog.ParseRecordV1(text)
	if err != nil {
		return "", 0, nil, err
	}
	switch r.Kind {
	case keylog.KindPublish, keylog.KindReset, keylog.KindDelete:
	default:
		return "", 0, nil, fmt.Errorf("a %s record sets no value", r.Kind)
	}
	return r.Kind, r.Time, &r.Map, nil
}

// lookupAnswer reads jids and proves the answer, again if the log grew
// between the read and the signing.
func (d *Directory) lookupAnswer(ctx context.Context, read func() (*logdb.Snapshot, error)) (*logdb.Snapshot, *answer, error) {
	for range 3 {
		snap, err := read()
		if err != nil {
			if errors.Is(err, logdb.ErrBelowFloor) {
				d.check(ctx)
			}
			return nil, nil, err
		}
		a, err := d.proveSnapshot(ctx, snap)
		if errors.Is(err, errGrew) {
			continue
		}
		return snap, a, err
	}
	return nil, nil, errors.New("keydir: the log kept growing under the lookup")
}

func (d *Directory) handlePublish(ctx context.Context, iq *component.Stanza) (any, error) {
	if err := wantType(iq, stanza.SetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	if who.Domainpart() != d.cfg.LocalDomain {
		return nil, component.Errorf(stanza.Forbidden, "only users of %s may publish keys here", d.cfg.LocalDomain)
	}
	var req keydirxml.Publish1
	if err := iq.Decode(xml.Name{Space: keydirxml.NS1, Local: "publish"}, &req); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, component.BadRequest(err.Error())
	}
	if !d.pubs.Allow(who.String()) {
		return nil, component.Error(stanza.ResourceConstraint, "too many key publishes; try again in a minute")
	}
	der, _, err := keylog.ParsePublicKey(req.Key)
	switch {
	case errors.Is(err, keylog.ErrWeakKey):
		return nil, component.Error(stanza.NotAcceptable, err.Error())
	case err != nil:
		return nil, component.BadRequest(err.Error())
	}
	// The JID bound is the one the server stamped, canonicalised; nothing
	// in the payload names it.
	bare, err := keylog.ParseBareJID(who.String())
	if err != nil {
		return nil, component.Error(stanza.JIDMalformed, err.Error())
	}
	exists, err := d.cfg.Accounts.AccountExists(ctx, bare)
	if err != nil {
		return nil, d.internal("account", err)
	}
	if !exists {
		return nil, component.Errorf(stanza.Forbidden, "%s is not an account here (deleted?): no key can be bound to it", bare)
	}
	b, created, err := d.store.Publish(ctx, bare, der, d.cfg.Now())
	if errors.Is(err, logdb.ErrConflict) {
		return nil, component.Errorf(stanza.Conflict, "%s already has a different key; the first key published stays until an operator reset or the account's deletion", bare)
	}
	if errors.Is(err, logdb.ErrBelowFloor) {
		d.check(ctx)
		return nil, d.internal("publish", errNotReady)
	}
	if err != nil {
		return nil, d.internal("publish", err)
	}
	if created {
		d.log.Info("keydir: key published", "index", b.Value.Entry)
	}
	_, a, err := d.lookupAnswer(ctx, func() (*logdb.Snapshot, error) { return d.store.Lookup(ctx, []jid.JID{bare}) })
	if err != nil {
		return nil, d.internal("publish", err)
	}
	e := a.entries[0]
	if e.Status != keydirxml.StatusFound || e.Fingerprint != hex.EncodeToString(b.Value.Fingerprint[:]) {
		// Ended meanwhile (an operator reset in the same instant): the
		// device sees the truth and may publish again.
		d.log.Info("keydir: binding changed right after its publish", "index", b.Value.Entry)
	}
	return d.marshalResult("publish", keydirxml.Publish1{Checkpoint: a.checkpoint, Head: a.head, Entry: &e})
}

func (d *Directory) handleLookup(ctx context.Context, iq *component.Stanza) (any, error) {
	if err := wantType(iq, stanza.GetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	var req keydirxml.Lookup1
	if err := iq.Decode(xml.Name{Space: keydirxml.NS1, Local: "lookup"}, &req); err != nil {
		return nil, err
	}
	if len(req.JIDs) > d.cfg.MaxBatch {
		return nil, component.Errorf(stanza.PolicyViolation, "a lookup names at most %d JIDs; this one names %d", d.cfg.MaxBatch, len(req.JIDs))
	}
	if err := req.Validate(d.cfg.MaxBatch); err != nil {
		return nil, component.BadRequest(err.Error())
	}
	// Canonicalise and de-duplicate: case variants are one JID.
	var (
		jids []jid.JID
		seen = map[string]bool{}
	)
	for _, s := range req.JIDs {
		j, err := d.bare.parse(s)
		if err != nil {
			return nil, component.Errorf(stanza.JIDMalformed, "%q is not a bare user JID", s)
		}
		if seen[j.String()] {
			continue
		}
		seen[j.String()] = true
		jids = append(jids, j)
	}
	// A conditional lookup costs the requester what any lookup of these
	// JIDs costs: it is no way around the rate limit.
	if err := d.allowLookups(who, len(jids)); err != nil {
		return nil, err
	}
	if req.Known > 0 {
		same, err := d.unchangedAt(ctx, req.Known)
		if err != nil {
			return nil, d.internal("lookup", err)
		}
		if same {
			d.unchanged.Add(1)
			return component.RawXML((&keydirxml.Lookup1{Unchanged: req.Known}).AppendXML(nil)), nil
		}
	}
	_, a, err := d.lookupAnswer(ctx, func() (*logdb.Snapshot, error) { return d.store.Lookup(ctx, jids) })
	if err != nil {
		return nil, d.internal("lookup", err)
	}
	// The answer's parts are written as they were encoded when first
	// proven at this size: the bytes xml.Marshal writes for the answer
	// (keydirxml.TestAppendXMLMatchesMarshal, FuzzDecode).
	n := len(a.headXML) + 64
	for _, e := range a.entriesXML {
		n += len(e)
	}
	return component.RawXML(keydirxml.AppendLookup1Answer(make([]byte, 0, n), a.headXML, a.entriesXML...)), nil
}

// unchangedAt reports whether the log is still of size known, the size
// a device holds with every entry it asks for (a conditional lookup,
// docs/protocol.md): the size is read as a full answer's would be (from
// memory under the size lease, else from the size row), and the signer
// is asked for its checkpoint as for a full answer, so that a faulted
// directory or a database rolled back below the last checkpoint signed
// refuses here too. An answer "unchanged" tells the device no more than
// a full answer at that size would.
func (d *Directory) unchangedAt(ctx context.Context, known int64) (bool, error) {
	snap, err := d.store.Lookup(ctx, nil)
	if err != nil {
		if errors.Is(err, logdb.ErrBelowFloor) {
			d.check(ctx)
		}
		return false, err
	}
	if snap.Size != known {
		return false, nil
	}
	switch _, err := d.checkpointAt(ctx, snap.Size); {
	case errors.Is(err, errGrew):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

// marshalResult marshals an answer once, to be written as it is
// (component.RawXML): handing the component the value instead costs a
// marshal, a parse of that back into tokens and their encoding, which
// was most of a lookup's CPU in clinkd after its round trips to
// PostgreSQL (issue 15). A lookup, the answer sent most, skips
// encoding/xml altogether (keydirxml.Lookup1.AppendXML).
func (d *Directory) marshalResult(what string, v any) (any, error) {
	b, err := xml.Marshal(v)
	if err != nil {
		return nil, d.internal(what, fmt.Errorf("keydir: encode %T: %w", v, err))
	}
	return component.RawXML(b), nil
}

func (d *Directory) checkpointHandler(v0 bool) func(context.Context, *component.Stanza) (any, error) {
	return func(ctx context.Context, iq *component.Stanza) (any, error) { return d.handleCheckpoint(ctx, iq, v0) }
}

func (d *Directory) consistencyHandler(v0 bool) func(context.Context, *component.Stanza) (any, error) {
	return func(ctx context.Context, iq *component.Stanza) (any, error) { return d.handleConsistency(ctx, iq, v0) }
}

func (d *Directory) handleCheckpoint(ctx context.Context, iq *component.Stanza, v0 bool) (any, error) {
	if err := wantType(iq, stanza.GetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	if err := d.allowLookups(who, 1); err != nil {
		return nil, err
	}
	msg, _, err := d.Checkpoint(ctx)
	if err != nil {
		return nil, d.internal("checkpoint", err)
	}
	if v0 {
		return keydirxml.Checkpoint{Text: string(msg)}, nil
	}
	return keydirxml.Checkpoint1{Text: string(msg)}, nil
}

func (d *Directory) handleConsistency(ctx context.Context, iq *component.Stanza, v0 bool) (any, error) {
	if err := wantType(iq, stanza.GetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	var req keydirxml.Consistency1
	if v0 {
		var r keydirxml.Consistency
		if err := iq.Decode(xml.Name{Space: keydirxml.NS, Local: "consistency"}, &r); err != nil {
			return nil, err
		}
		if err := r.Validate(); err != nil {
			return nil, component.BadRequest(err.Error())
		}
		req = keydirxml.Consistency1{Old: r.Old, New: r.New}
	} else {
		if err := iq.Decode(xml.Name{Space: keydirxml.NS1, Local: "consistency"}, &req); err != nil {
			return nil, err
		}
		if err := req.Validate(); err != nil {
			return nil, component.BadRequest(err.Error())
		}
	}
	if err := d.allowLookups(who, 1); err != nil {
		return nil, err
	}
	size, err := d.store.Size(ctx)
	if err != nil {
		return nil, d.internal("size", err)
	}
	if req.New > size {
		return nil, component.Errorf(stanza.ItemNotFound, "the log has %d entries, fewer than %d", size, req.New)
	}
	// tlog's argument order: the larger tree first.
	p, err := tlog.ProveTree(req.New, req.Old, d.store.HashReader(ctx))
	if err != nil {
		return nil, d.internal("prove tree", err)
	}
	if v0 {
		res := keydirxml.Consistency{Old: req.Old, New: req.New, Hashes: make([]string, len(p))}
		for i, h := range p {
			res.Hashes[i] = keydirxml.EncodeHash(h)
		}
		return res, nil
	}
	return keydirxml.Consistency1{Old: req.Old, New: req.New, Proof: keydirxml.EncodeHashBlob(p)}, nil
}

func (d *Directory) handleHistory(ctx context.Context, iq *component.Stanza) (any, error) {
	if err := wantType(iq, stanza.GetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	var req keydirxml.History1
	if err := iq.Decode(xml.Name{Space: keydirxml.NS1, Local: "history"}, &req); err != nil {
		return nil, err
	}
	bare, err := keylog.ParseBareJID(who.String())
	if err != nil {
		return nil, component.Error(stanza.JIDMalformed, err.Error())
	}
	if req.JID != "" {
		j, err := keylog.ParseBareJID(req.JID)
		if err != nil {
			return nil, component.Errorf(stanza.JIDMalformed, "%q is not a bare user JID", req.JID)
		}
		if !j.Equal(bare) {
			return nil, component.Error(stanza.Forbidden, "history is served only for your own JID")
		}
	}
	if req.From < 0 {
		return nil, component.BadRequest("from is a version, 1 or more")
	}
	from := max(req.From, 1)
	if err := d.allowLookups(who, 1); err != nil {
		return nil, err
	}
	snap, a, err := d.lookupAnswer(ctx, func() (*logdb.Snapshot, error) {
		return d.store.History(ctx, bare, from, keydirxml.MaxHistoryItems)
	})
	if err != nil {
		return nil, d.internal("history", err)
	}
	res := keydirxml.History1{JID: bare.String(), From: from, Checkpoint: a.checkpoint, Head: a.head, Entry: &a.entries[0]}
	for _, h := range snap.History {
		kind, t, root, err := recordFields(h.Record)
		if err != nil {
			return nil, d.internal("history", fmt.Errorf("%w: entry %d: %v", logdb.ErrCorrupt, h.Index, err))
		}
		fp, err := recordFingerprint(h.Record)
		if err != nil {
			return nil, d.internal("history", err)
		}
		p, err := d.prove(ctx, h.Index, h.Record, a.cp)
		if err != nil {
			return nil, d.internal("history", err)
		}
		r := keydirxml.Record1{Version: h.Version, Index: h.Index, Kind: string(kind), Time: t,
			Fingerprint: hex.EncodeToString(fp[:]), Record: keydirxml.RecordV0, Proof: keydirxml.EncodeHashBlob(p)}
		if root != nil {
			r.Record, r.Root = keydirxml.RecordV1, base64.StdEncoding.EncodeToString(root[:])
		}
		res.Records = append(res.Records, r)
	}
	return d.marshalResult("history", res)
}

func recordFingerprint(text []byte) ([32]byte, error) {
	if r, err := keylog.ParseRecord(text); err == nil {
		return r.Fingerprint, nil
	}
	r, err := keylog.ParseRecordV1(text)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: %v", logdb.ErrCorrupt, err)
	}
	return r.Fingerprint, nil
}
