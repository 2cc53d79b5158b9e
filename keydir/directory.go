// Package keydir is the server of ClinkMe's public-key directory, whose
// every answer can be verified: each binding of a bare JID to a public key
// is a leaf of an append-only Merkle log (RFC 6962, through
// golang.org/x/mod/sumdb/tlog) whose signed checkpoints (C2SP
// tlog-checkpoint, Ed25519 signed notes) let devices and independent
// auditors prove what the server said. docs/protocol.md specifies the wire
// protocol and the formats; docs/keydir.md is the operator's guide.
//
// The policy: the first key published for a JID wins and cannot be
// replaced by its owner. Only an operator reset or the account's deletion
// ends a binding (logdb.Store.End), and both append an entry to the log,
// which is never rewritten.
//
// A Directory answers the XMPP payloads (Register), signs checkpoints and
// serves the log read-only over HTTP in the C2SP tlog-tiles layout
// (LogHandler). The formats are package keylog's; the log lives in
// PostgreSQL through keydir/logdb; keydir/audit verifies the log from its
// tiles and links nothing of the server but keylog.
package keydir

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
	// Signer signs checkpoints; its name is the log's origin.
	Signer note.Signer
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
	// Now is the clock (default time.Now).
	Now func() time.Time
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

// A Directory serves the key directory over XMPP and its log over HTTP.
type Directory struct {
	cfg     Config
	served  map[string]bool // domains whose users the directory serves
	store   *logdb.Store
	log     *slog.Logger
	lookups *ratelimit.Limiter
	pubs    *ratelimit.Limiter
	metrics *prometheus.CounterVec

	mu     sync.Mutex
	latest *signedCheckpoint // the largest size signed so far
}

type signedCheckpoint struct {
	cp  keylog.Checkpoint
	msg []byte
}

// New checks cfg and makes a Directory over store. reg may be nil.
func New(cfg Config, store *logdb.Store, log *slog.Logger, reg prometheus.Registerer) (*Directory, error) {
	if cfg.Signer == nil {
		return nil, errors.New("keydir: no checkpoint signer")
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Directory{
		cfg:     cfg,
		served:  served,
		store:   store,
		log:     log,
		lookups: ratelimit.New(cfg.LookupPerMinute/60, cfg.LookupBurst, 100_000),
		pubs:    ratelimit.New(cfg.PublishPerMinute/60, cfg.PublishBurst, 100_000),
		metrics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_keydir_requests_total",
			Help: "Key directory requests by kind and outcome.",
		}, []string{"kind", "outcome"}),
	}
	if reg != nil {
		reg.MustRegister(d.metrics)
	}
	return d, nil
}

// Origin is the log's origin line (the signer's name).
func (d *Directory) Origin() string { return d.cfg.Signer.Name() }

// Store returns the directory's store, whose End is how bindings end.
func (d *Directory) Store() *logdb.Store { return d.store }

// Register routes the directory's payloads on c.
func (d *Directory) Register(c *component.Component) {
	h := func(local string, f func(context.Context, *component.Stanza) (any, error)) {
		c.HandleIQ(xml.Name{Space: keydirxml.NS, Local: local}, component.IQHandlerFunc(func(ctx context.Context, iq *component.Stanza) (any, error) {
			res, err := f(ctx, iq)
			outcome := "ok"
			if err != nil {
				outcome = "error"
				var se stanza.Error
				if errors.As(err, &se) {
					outcome = string(se.Condition)
				}
			}
			d.metrics.WithLabelValues(local, outcome).Inc()
			return res, err
		}))
	}
	h("publish", d.handlePublish)
	h("lookup", d.handleLookup)
	h("checkpoint", d.handleCheckpoint)
	h("consistency", d.handleConsistency)
	h("history", d.handleHistory)
}

// Checkpoint returns the signed checkpoint for the log's current size.
func (d *Directory) Checkpoint(ctx context.Context) ([]byte, keylog.Checkpoint, error) {
	size, err := d.store.Size(ctx)
	if err != nil {
		return nil, keylog.Checkpoint{}, err
	}
	sc, err := d.checkpointAt(ctx, size)
	if err != nil {
		return nil, keylog.Checkpoint{}, err
	}
	return sc.msg, sc.cp, nil
}

// checkpointAt returns a signed checkpoint for exactly size leaves. Only
// the largest is cached: readers ask for the current size.
func (d *Directory) checkpointAt(ctx context.Context, size int64) (*signedCheckpoint, error) {
	d.mu.Lock()
	cur := d.latest
	d.mu.Unlock()
	if cur != nil && cur.cp.Size == size {
		return cur, nil
	}
	hr := d.store.HashReader(ctx)
	root, err := keylog.TreeHash(size, hr)
	if err != nil {
		return nil, fmt.Errorf("keydir: tree hash at %d: %w", size, err)
	}
	// Never sign a tree that does not extend the last one signed: stored
	// hashes changed under a running server must not turn into a signed
	// fork. (After a restart the auditors' stored checkpoints catch it.)
	if cur != nil && cur.cp.Size > 0 && size > cur.cp.Size {
		p, err := tlog.ProveTree(size, cur.cp.Size, hr)
		if err == nil {
			err = tlog.CheckTree(p, size, root, cur.cp.Size, cur.cp.Hash)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: the tree of %d does not extend the one of %d signed before: %v", logdb.ErrCorrupt, size, cur.cp.Size, err)
		}
	}
	cp := keylog.Checkpoint{Origin: d.Origin(), Size: size, Hash: root}
	msg, err := keylog.SignCheckpoint(cp, d.cfg.Signer)
	if err != nil {
		return nil, err
	}
	sc := &signedCheckpoint{cp: cp, msg: msg}
	d.mu.Lock()
	if d.latest == nil || d.latest.cp.Size < size {
		d.latest = sc
	}
	d.mu.Unlock()
	return sc, nil
}

// prove returns the inclusion proof of leaf idx, whose record is rec, in
// the tree of cp. It checks the proof before returning it: data read from
// the database is suspect until a check passes, and a device must never
// be handed a proof that fails.
func (d *Directory) prove(ctx context.Context, idx int64, rec keylog.Record, cp keylog.Checkpoint) (tlog.RecordProof, error) {
	p, err := tlog.ProveRecord(cp.Size, idx, d.store.HashReader(ctx)) // tree size first
	if err != nil {
		return nil, fmt.Errorf("keydir: prove leaf %d in %d: %w", idx, cp.Size, err)
	}
	if err := tlog.CheckRecord(p, cp.Size, cp.Hash, idx, tlog.RecordHash(rec.Marshal())); err != nil {
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
	d.log.Error("keydir: "+what, "err", err)
	return component.Error(stanza.InternalServerError, "")
}

func entryFor(b logdb.Binding, p tlog.RecordProof) keydirxml.Entry {
	return keydirxml.Entry{
		JID: b.JID, Status: keydirxml.StatusFound, Index: b.Index, Time: b.Time,
		Fingerprint: hex.EncodeToString(b.Fingerprint[:]),
		Key:         base64.StdEncoding.EncodeToString(b.Key),
		Proof:       keydirxml.NewProof(p),
	}
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
	var req keydirxml.Publish
	if err := iq.Decode(xml.Name{Space: keydirxml.NS, Local: "publish"}, &req); err != nil {
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
	if err != nil {
		return nil, d.internal("publish", err)
	}
	if created {
		d.log.Info("keydir: key published", "index", b.Index)
	}
	sc, err := d.checkpointAtLeast(ctx, b.Index+1)
	if err != nil {
		return nil, d.internal("checkpoint", err)
	}
	p, err := d.prove(ctx, b.Index, b.Record(), sc.cp)
	if err != nil {
		return nil, d.internal("prove", err)
	}
	e := entryFor(b, p)
	return keydirxml.Publish{Checkpoint: string(sc.msg), Entry: &e}, nil
}

// checkpointAtLeast signs the current size, which is at least min once
// the caller's own append committed.
func (d *Directory) checkpointAtLeast(ctx context.Context, min int64) (*signedCheckpoint, error) {
	size, err := d.store.Size(ctx)
	if err != nil {
		return nil, err
	}
	if size < min {
		return nil, fmt.Errorf("%w: size %d below a committed leaf %d", logdb.ErrCorrupt, size, min-1)
	}
	return d.checkpointAt(ctx, size)
}

func (d *Directory) handleLookup(ctx context.Context, iq *component.Stanza) (any, error) {
	if err := wantType(iq, stanza.GetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	var req keydirxml.Lookup
	if err := iq.Decode(xml.Name{Space: keydirxml.NS, Local: "lookup"}, &req); err != nil {
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
		jids   []jid.JID
		labels [][32]byte
		seen   = map[[32]byte]bool{}
	)
	for _, s := range req.JIDs {
		j, err := keylog.ParseBareJID(s)
		if err != nil {
			return nil, component.Errorf(stanza.JIDMalformed, "%q is not a bare user JID", s)
		}
		l := keylog.Label(j)
		if seen[l] {
			continue
		}
		seen[l] = true
		jids, labels = append(jids, j), append(labels, l)
	}
	if err := d.allowLookups(who, len(jids)); err != nil {
		return nil, err
	}
	found, size, err := d.store.Lookup(ctx, labels)
	if err != nil {
		return nil, d.internal("lookup", err)
	}
	sc, err := d.checkpointAt(ctx, size)
	if err != nil {
		return nil, d.internal("checkpoint", err)
	}
	res := keydirxml.Lookup{Checkpoint: string(sc.msg), Entries: make([]keydirxml.Entry, 0, len(jids))}
	for i, j := range jids {
		b, ok := found[labels[i]]
		if !ok {
			res.Entries = append(res.Entries, keydirxml.Entry{JID: j.String(), Status: keydirxml.StatusNone})
			continue
		}
		p, err := d.prove(ctx, b.Index, b.Record(), sc.cp)
		if err != nil {
			return nil, d.internal("prove", err)
		}
		res.Entries = append(res.Entries, entryFor(b, p))
	}
	return res, nil
}

func (d *Directory) handleCheckpoint(ctx context.Context, iq *component.Stanza) (any, error) {
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
	return keydirxml.Checkpoint{Text: string(msg)}, nil
}

func (d *Directory) handleConsistency(ctx context.Context, iq *component.Stanza) (any, error) {
	if err := wantType(iq, stanza.GetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	var req keydirxml.Consistency
	if err := iq.Decode(xml.Name{Space: keydirxml.NS, Local: "consistency"}, &req); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, component.BadRequest(err.Error())
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
	res := keydirxml.Consistency{Old: req.Old, New: req.New, Hashes: make([]string, len(p))}
	for i, h := range p {
		res.Hashes[i] = keydirxml.EncodeHash(h)
	}
	return res, nil
}

func (d *Directory) handleHistory(ctx context.Context, iq *component.Stanza) (any, error) {
	if err := wantType(iq, stanza.GetIQ); err != nil {
		return nil, err
	}
	who, err := d.requester(iq)
	if err != nil {
		return nil, err
	}
	var req keydirxml.History
	if err := iq.Decode(xml.Name{Space: keydirxml.NS, Local: "history"}, &req); err != nil {
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
	if err := d.allowLookups(who, 1); err != nil {
		return nil, err
	}
	entries, size, err := d.store.History(ctx, keylog.Label(bare), keydirxml.MaxHistoryItems)
	if err != nil {
		return nil, d.internal("history", err)
	}
	sc, err := d.checkpointAt(ctx, size)
	if err != nil {
		return nil, d.internal("checkpoint", err)
	}
	res := keydirxml.History{JID: bare.String(), Checkpoint: string(sc.msg)}
	for _, e := range entries {
		p, err := d.prove(ctx, e.Index, e.Record, sc.cp)
		if err != nil {
			return nil, d.internal("prove", err)
		}
		res.Records = append(res.Records, keydirxml.Record{
			Index: e.Index, Kind: string(e.Record.Kind), Time: e.Record.Time,
			Fingerprint: hex.EncodeToString(e.Record.Fingerprint[:]),
			Proof:       keydirxml.NewProof(p),
		})
	}
	return res, nil
}
