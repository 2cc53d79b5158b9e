// Package audit verifies a key directory's log from the outside, as an
// auditor, or a user watching their own JID, does (docs/protocol.md; the
// operator's side, clinkd keys audit and monitor, is in docs/keydir.md).
// Run fetches the signed checkpoint and every tile the log serves (C2SP
// tlog-tiles, keydir's LogHandler), rebuilds the tree from the entries,
// checks it against the checkpoint and against the last checkpoint it
// kept, and replays each label's entries against the directory's policy.
// Monitor does the same for one JID and says which key is in force.
//
// An audit must not trust the server's code, so it shares none: audit
// imports nothing of this module but keylog, the formats (a test holds
// it to that).
package audit

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/clinkme/clinkd/keylog"
)

// Config says which log to audit and how.
type Config struct {
	// URL is the log's base URL, e.g. https://clink.example.org/keydir/log;
	// URL/checkpoint and URL/tile/... are fetched.
	URL string
	// Verifier is the log's checkpoint key (clinkd keys genkey prints it).
	Verifier note.Verifier
	// StateFile holds the last checkpoint that passed an audit. A new
	// checkpoint must extend it; it is replaced only after an audit
	// passes. Empty keeps no state (no consistency check across runs).
	StateFile string
	// Client fetches (default: http.DefaultClient).
	Client *http.Client
	// Label and Index, if set, make the report list every entry of that
	// v0 label and map index (Monitor sets them).
	Label *[32]byte
	Index *[32]byte
	// VRFKey is the log's VRF public key, for Monitor (optional).
	VRFKey *keylog.VRFKey
	// Witnesses is the auditor's witness policy: the checkpoint must
	// carry valid cosignatures of Threshold of them, else the audit
	// fails with keylog.ErrNotCosigned (the zero value requires none).
	Witnesses keylog.WitnessPolicy
}

// A Finding is something an auditor must look at: the log is intact, but
// a label's bindings changed or broke the policy.
type Finding struct {
	Label   [32]byte
	What    string  // "rebound", "reset", "violation"
	Indexes []int64 // the entries concerned
	Text    string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s label %x: %s (entries %v)", f.What, f.Label, f.Text, f.Indexes)
}

// A Report is what an audit established about a log that passed.
type Report struct {
	Checkpoint keylog.Checkpoint
	Previous   *keylog.Checkpoint // the state file's checkpoint, if there was one
	// Cosigners are the names of the policy's witnesses that validly
	// cosigned the checkpoint (nil without a policy).
	Cosigners []string
	Labels    int // distinct JIDs in the log (v0 labels and v1 indices, one per JID)
	Bindings  int // JIDs with a binding in force
	Counts    map[keylog.Kind]int
	Findings  []Finding
	History   []Entry // the entries of Config.Label and Config.Index
	// Migrated: the log has v1 records (from Genesis on), whose every map
	// root was recomputed; MapRoot is the map's root at the checkpoint,
	// VRFKey the key genesis names.
	Migrated bool
	Genesis  int64
	MapRoot  [32]byte
	VRFKey   *keylog.VRFKey
	map_     *keylog.Map
}

// Value returns index's value in the map at the checkpoint.
func (r *Report) Value(index [32]byte) (keylog.MapValue, bool) {
	if r.map_ == nil {
		return keylog.MapValue{}, false
	}
	return r.map_.Get(index)
}

// ErrFailed is wrapped by every error that means the log is not what its
// signed checkpoints say (as opposed to a network or usage error).
var ErrFailed = errors.New("audit: failed")

func auditFailed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFailed, fmt.Sprintf(format, args...))
}

// Run fetches the log's checkpoint, every entry bundle and every hash
// tile, and checks, in order:
//
//  1. the checkpoint is signed by Verifier and names its origin;
//  2. it does not shrink the log of the checkpoint in StateFile;
//  3. the entries parse as records, and the tree recomputed from them has
//     the checkpoint's root (and, at the old size, the old checkpoint's
//     root: the log only grew);
//  4. every hash tile served equals the one recomputed, so no stored hash
//     that feeds inclusion proofs was changed;
//  5. per JID, the entries follow the policy: a publish only when no
//     binding is in force, a reset or delete only of the binding in force,
//     versions going up by one;
//  6. the v1 records: one genesis (naming a VRF key of the log's origin)
//     after every v0 record, then one migrate record per v0 label in
//     index order carrying the label's version, times that never go
//     back, and every record's map root equal to the root of the map
//     recomputed from the log up to it.
//
// Failures of 1-4 and 6 and policy violations of 5 return an error wrapping
// ErrFailed (the report is still returned for what it holds); labels
// with more than one binding over time and operator resets are Findings.
// The state file is updated only when everything passed.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	base := strings.TrimSuffix(cfg.URL, "/")
	msg, err := fetch(ctx, cfg.Client, base+"/checkpoint", keylog.MaxCheckpointSize)
	if err != nil {
		return nil, err
	}
	cp, err := keylog.OpenCheckpoint(msg, cfg.Verifier)
	if err != nil {
		return nil, auditFailed("checkpoint: %v", err)
	}
	rep := &Report{Checkpoint: cp, Counts: map[keylog.Kind]int{}}
	if len(cfg.Witnesses.Witnesses) > 0 {
		// Before anything is downloaded: a checkpoint that the
		// witnesses did not see may be of a log shown to this auditor
		// alone.
		n, err := note.Open(msg, note.VerifierList(cfg.Verifier))
		if err != nil {
			return nil, auditFailed("checkpoint: %v", err)
		}
		rep.Cosigners = []string{}
		for _, w := range cfg.Witnesses.Cosigners(n.Text, n.UnverifiedSigs) {
			rep.Cosigners = append(rep.Cosigners, w.Name())
		}
		if _, _, err := cfg.Witnesses.Check(msg, cfg.Verifier); err != nil {
			return rep, fmt.Errorf("%w: checkpoint: %w", ErrFailed, err)
		}
	}
	if cfg.StateFile != "" {
		prev, err := loadState(cfg.StateFile, cfg.Verifier)
		if err != nil {
			return nil, err
		}
		if prev != nil {
			rep.Previous = prev
			if cp.Size < prev.Size {
				return rep, auditFailed("the log shrank from %d entries (checkpoint in %s) to %d", prev.Size, cfg.StateFile, cp.Size)
			}
		}
	}

	// Recompute every stored hash from the entries.
	mem := new(keylog.Hashes)
	var recErr error
	pol := newPolicy(cfg.Verifier.Name(), cfg.Label)
	pol.watchIndex = cfg.Index
	for start := int64(0); start < cp.Size; start += keylog.TileWidth {
		w := int(min(cp.Size-start, keylog.TileWidth))
		t := tlog.Tile{H: keylog.TileHeight, L: keylog.EntriesLevel, N: start / keylog.TileWidth, W: w}
		data, err := fetch(ctx, cfg.Client, base+"/"+keylog.TilePath(t), w*(2+keylog.MaxEntrySize))
		if err != nil {
			return rep, err
		}
		entries, err := keylog.ParseEntryBundle(data, w)
		if err != nil {
			return rep, auditFailed("%s: %v", keylog.TilePath(t), err)
		}
		for i, e := range entries {
			n := start + int64(i)
			// What the records say is judged once the tree is known to
			// be the signed one: a changed entry is reported as such,
			// not as the map or policy failure it also causes.
			if err := pol.add(n, e); err != nil && recErr == nil {
				recErr = err
			}
			mem.Append(e)
		}
	}
	if err := pol.finish(); err != nil && recErr == nil {
		recErr = err
	}
	root, err := keylog.TreeHash(cp.Size, mem)
	if err != nil {
		return rep, fmt.Errorf("audit: %w", err)
	}
	if root != cp.Hash {
		return rep, auditFailed("the entries served do not hash to the signed checkpoint's root (size %d): an entry was changed, added or removed", cp.Size)
	}
	if p := rep.Previous; p != nil {
		old, err := keylog.TreeHash(p.Size, mem)
		if err != nil {
			return rep, fmt.Errorf("audit: %w", err)
		}
		if old != p.Hash {
			return rep, auditFailed("the log of %d entries is not an extension of the one of %d in %s: its history was rewritten", cp.Size, p.Size, cfg.StateFile)
		}
	}
	// Every hash tile, level by level, against the recomputation.
	for level := 0; ; level++ {
		avail := cp.Size >> (keylog.TileHeight * uint(level))
		if avail == 0 {
			break
		}
		for start := int64(0); start < avail; start += keylog.TileWidth {
			t := tlog.Tile{H: keylog.TileHeight, L: level, N: start / keylog.TileWidth, W: int(min(avail-start, keylog.TileWidth))}
			got, err := fetch(ctx, cfg.Client, base+"/"+keylog.TilePath(t), t.W*tlog.HashSize)
			if err != nil {
				return rep, err
			}
			want, err := tlog.ReadTileData(t, mem)
			if err != nil {
				return rep, fmt.Errorf("audit: %w", err)
			}
			if !bytes.Equal(got, want) {
				return rep, auditFailed("hash tile %s differs from the hashes of the entries: a stored hash was changed", keylog.TilePath(t))
			}
		}
	}
	if recErr != nil {
		return rep, recErr
	}
	rep.Labels, rep.Bindings = pol.keys()
	rep.Counts, rep.Findings, rep.History = pol.counts, pol.findings, pol.history
	rep.Migrated, rep.Genesis, rep.MapRoot, rep.VRFKey = pol.v1, pol.genesis, pol.m.Root(), pol.vrfKey
	rep.map_ = pol.m
	if len(pol.violations) > 0 {
		var b strings.Builder
		for _, v := range pol.violations {
			b.WriteString("\n\t" + v.String())
		}
		return rep, auditFailed("%d policy violations:%s", len(pol.violations), b.String())
	}
	if cfg.StateFile != "" {
		if err := saveState(cfg.StateFile, msg); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// policy replays the log's entries: v0 records label by label, then the
// v1 records against the map they commit to.
type policy struct {
	origin     string
	states     map[[32]byte]*keyState // by v0 label, and by map index once migrated or published
	counts     map[keylog.Kind]int
	findings   []Finding
	violations []Finding
	watch      *[32]byte // a v0 label or a map index whose entries to keep
	watchIndex *[32]byte
	history    []Entry

	v1      bool // a v1 record was seen: no v0 record may follow
	genesis int64
	migrate int64 // migrate records still expected after genesis
	lastIdx [32]byte
	moved   map[[32]byte]bool // v0 labels moved by a migrate record
	m       *keylog.Map
	v1Time  int64
	vrfKey  *keylog.VRFKey
}

// An Entry is one log entry of a watched JID: a v0 or a v1 record.
type Entry struct {
	Index int64
	V0    *keylog.Record
	V1    *keylog.RecordV1
}

// Kind is the entry's kind.
func (e Entry) Kind() keylog.Kind {
	if e.V0 != nil {
		return e.V0.Kind
	}
	return e.V1.Kind
}

// Fingerprint is the key the entry bound or ended.
func (e Entry) Fingerprint() [32]byte {
	if e.V0 != nil {
		return e.V0.Fingerprint
	}
	return e.V1.Fingerprint
}

// Time is the entry's time.
func (e Entry) Time() int64 {
	if e.V0 != nil {
		return e.V0.Time
	}
	return e.V1.Time
}

// keyState is one JID's state in the replay: its v0 label's and, after
// migration, its map index's.
type keyState struct {
	id         [32]byte // the label, or the index of a JID first seen in v1
	bound      bool
	fp         [32]byte
	publishes  []int64
	flaggedReb bool
	last       int64 // the last entry
	n          int64 // entries so far: the version
	index      *[32]byte
}

func newPolicy(origin string, watch *[32]byte) *policy {
	return &policy{origin: origin, states: map[[32]byte]*keyState{}, counts: map[keylog.Kind]int{}, watch: watch,
		genesis: -1, moved: map[[32]byte]bool{}, m: new(keylog.Map)}
}

func (p *policy) violation(id [32]byte, n []int64, format string, args ...any) {
	p.violations = append(p.violations, Finding{Label: id, What: "violation", Indexes: n, Text: fmt.Sprintf(format, args...)})
}

// add replays entry n (its text). A malformed record fails the audit at
// once; a policy violation is collected.
func (p *policy) add(n int64, text []byte) error {
	ver, err := keylog.RecordVersion(text)
	if err != nil {
		return auditFailed("entry %d: %v", n, err)
	}
	if ver == 0 {
		if p.v1 {
			return auditFailed("entry %d: a v0 record after the v1 records began at %d", n, p.genesis)
		}
		r, err := keylog.ParseRecord(text)
		if err != nil {
			return auditFailed("entry %d: %v", n, err)
		}
		p.counts[r.Kind]++
		if p.watch != nil && *p.watch == r.Label {
			p.history = append(p.history, Entry{Index: n, V0: &r})
		}
		p.apply(p.state(r.Label), n, r.Kind, r.Fingerprint)
		return nil
	}
	r, err := keylog.ParseRecordV1(text)
	if err != nil {
		return auditFailed("entry %d: %v", n, err)
	}
	p.counts[r.Kind]++
	if !p.v1 {
		if r.Kind != keylog.KindGenesis {
			return auditFailed("entry %d: the first v1 record is a %s, not genesis", n, r.Kind)
		}
		k, err := keylog.ParseVRFKey(r.VRFKey)
		if err != nil || k.Name != p.origin {
			return auditFailed("entry %d: genesis names VRF key %q, not one of log %q", n, r.VRFKey, p.origin)
		}
		if r.Map != keylog.MapEmpty {
			return auditFailed("entry %d: genesis with a map root other than the empty map's", n)
		}
		p.v1, p.genesis, p.migrate, p.vrfKey, p.v1Time = true, n, r.Migrate, &k, r.Time
		if r.Migrate != int64(p.v0Labels()) {
			return auditFailed("entry %d: genesis announces %d migrate records, the log has %d v0 labels", n, r.Migrate, p.v0Labels())
		}
		return nil
	}
	if r.Time < p.v1Time {
		return auditFailed("entry %d: time %d goes back from %d", n, r.Time, p.v1Time)
	}
	p.v1Time = r.Time
	if p.watchIndex != nil && *p.watchIndex == r.Index && r.Kind != keylog.KindTick && r.Kind != keylog.KindGenesis {
		p.history = append(p.history, Entry{Index: n, V1: &r})
	}
	switch {
	case p.migrate > 0 && r.Kind != keylog.KindMigrate:
		return auditFailed("entry %d: a %s record where %d more migrate records are due", n, r.Kind, p.migrate)
	case r.Kind == keylog.KindMigrate:
		if p.migrate == 0 {
			return auditFailed("entry %d: a migrate record past the ones genesis announced", n)
		}
		p.migrate--
		if n > p.genesis+1 && bytes.Compare(r.Index[:], p.lastIdx[:]) <= 0 {
			return auditFailed("entry %d: migrate records out of index order", n)
		}
		p.lastIdx = r.Index
		st := p.states[r.Label]
		if st == nil || st.index != nil || p.moved[r.Label] {
			return auditFailed("entry %d: migrates label %x, which has no v0 entries or was moved before", n, r.Label)
		}
		if p.states[r.Index] != nil {
			return auditFailed("entry %d: migrates to index %x, which is taken", n, r.Index)
		}
		if r.Version != st.n {
			return auditFailed("entry %d: migrates label %x with version %d; it has %d v0 entries", n, r.Label, r.Version, st.n)
		}
		p.moved[r.Label] = true
		x := r.Index
		st.index = &x
		p.states[r.Index] = st
		p.m.Set(r.Index, keylog.MapValue{Ended: !st.bound, Fingerprint: st.fp, Entry: st.last, Version: st.n})
		if p.watch != nil && *p.watch == r.Label {
			p.watchIndex = &x
		}
	case r.Kind == keylog.KindGenesis:
		return auditFailed("entry %d: a second genesis record", n)
	case r.Kind == keylog.KindTick:
	default: // publish, reset, delete
		st := p.states[r.Index]
		if st == nil {
			if r.Kind != keylog.KindPublish {
				p.violation(r.Index, []int64{n}, "a %s of index %x, which has no value", r.Kind, r.Index[:8])
			}
			x := r.Index
			st = &keyState{id: r.Index, index: &x}
			p.states[r.Index] = st
		}
		if r.Version != st.n+1 {
			p.violation(st.id, []int64{n}, "version %d after %d: versions must go up by one", r.Version, st.n)
		}
		p.apply(st, n, r.Kind, r.Fingerprint)
		p.m.Set(r.Index, keylog.MapValue{Ended: r.Kind != keylog.KindPublish, Fingerprint: r.Fingerprint, Entry: n, Version: r.Version})
	}
	if got := p.m.Root(); got != r.Map {
		return auditFailed("map root of entry %d is %x, recomputed %x: the map it commits to does not follow from the log", n, r.Map[:], got[:])
	}
	return nil
}

func (p *policy) v0Labels() int {
	n := 0
	for id, st := range p.states {
		if st.index == nil && id == st.id {
			n++
		}
	}
	return n
}

func (p *policy) state(label [32]byte) *keyState {
	s := p.states[label]
	if s == nil {
		s = &keyState{id: label}
		p.states[label] = s
	}
	return s
}

// apply checks and records one publish, reset or delete of s.
func (p *policy) apply(s *keyState, n int64, kind keylog.Kind, fp [32]byte) {
	switch kind {
	case keylog.KindPublish:
		if s.bound {
			p.violation(s.id, []int64{s.publishes[len(s.publishes)-1], n},
				"a second key %.16x… was published while key %.16x… was in force", fp[:], s.fp[:])
		}
		s.bound, s.fp = true, fp
		s.publishes = append(s.publishes, n)
		if len(s.publishes) > 1 {
			if s.flaggedReb {
				// Keep one finding per JID, with every publish in it.
				for i := range p.findings {
					if p.findings[i].Label == s.id && p.findings[i].What == "rebound" {
						p.findings[i].Indexes = append([]int64(nil), s.publishes...)
						p.findings[i].Text = fmt.Sprintf("%d bindings over time", len(s.publishes))
					}
				}
			} else {
				s.flaggedReb = true
				p.findings = append(p.findings, Finding{Label: s.id, What: "rebound", Indexes: append([]int64(nil), s.publishes...),
					Text: fmt.Sprintf("%d bindings over time", len(s.publishes))})
			}
		}
	case keylog.KindReset, keylog.KindDelete:
		if !s.bound || s.fp != fp {
			p.violation(s.id, []int64{n}, "a %s of key %.16x…, which is not the binding in force", kind, fp[:])
		}
		s.bound = false
		if kind == keylog.KindReset {
			p.findings = append(p.findings, Finding{Label: s.id, What: "reset", Indexes: []int64{n},
				Text: fmt.Sprintf("an operator ended key %.16x…", fp[:])})
		}
	}
	s.last, s.n = n, s.n+1
}

// finish checks what only the whole log shows.
func (p *policy) finish() error {
	if p.v1 && p.migrate > 0 {
		return auditFailed("genesis announced %d more migrate records than the log has", p.migrate)
	}
	return nil
}

func (p *policy) keys() (labels, bound int) {
	seen := map[*keyState]bool{}
	for _, s := range p.states {
		if seen[s] {
			continue
		}
		seen[s] = true
		labels++
		if s.bound {
			bound++
		}
	}
	return labels, bound
}

// fetch GETs url and returns its body, refusing more than max bytes.
func fetch(ctx context.Context, c *http.Client, url string, max int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("audit: fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("audit: GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("audit: GET %s: %w", url, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("audit: GET %s: more than %d bytes", url, max)
	}
	return b, nil
}

// loadState reads and re-verifies the stored checkpoint; a missing file is
// a first run.
func loadState(path string, v note.Verifier) (*keylog.Checkpoint, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: state: %w", err)
	}
	cp, err := keylog.OpenCheckpoint(b, v)
	if err != nil {
		return nil, fmt.Errorf("audit: state %s: %w", path, err)
	}
	return &cp, nil
}

// saveState replaces the state file atomically, mode 0600.
func saveState(path string, msg []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("audit: state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keydir-state-*")
	if err != nil {
		return fmt.Errorf("audit: state: %w", err)
	}
	_, err = tmp.Write(msg)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("audit: state: %w", err)
	}
	return nil
}

// A MonitorReport is what Monitor established about one JID.
type MonitorReport struct {
	JID   string
	Label [32]byte
	Index *[32]byte // the JID's map index, when a VRF proof was given
	Audit *Report
	// History is every entry that published, reset or deleted the JID's
	// binding: its versions 1 to n, complete (checked against the map).
	History []Entry
	// Current is the fingerprint in force, nil when there is none.
	Current *[32]byte
}

// ErrMonitorMismatch is returned by Monitor when the key in force is not
// the one expected.
var ErrMonitorMismatch = errors.New("audit: the key in force is not yours")

// Monitor audits the log (as Run does, with the same state rules) and
// reports the history of bare: the entries of its v0 label and, given
// its VRF proof (which only the JID's owner gets from the directory:
// nobody else can find a JID's index), of its map index. In a v1 log it
// checks that the history is complete: versions 1 to n, n and the last
// entry being the map's value for the index, which the audit recomputed
// from every entry of the log. With expect set, it returns an error
// wrapping ErrMonitorMismatch unless the binding in force has that
// fingerprint.
func Monitor(ctx context.Context, cfg Config, bare string, vrfProof []byte, expect *[32]byte) (*MonitorReport, error) {
	j, err := keylog.ParseBareJID(bare)
	if err != nil {
		return nil, err
	}
	label := keylog.Label(j)
	cfg.Label = &label
	rep := &MonitorReport{JID: j.String(), Label: label}
	if vrfProof != nil {
		if cfg.VRFKey == nil {
			return nil, errors.New("audit: monitor: a VRF proof needs the log's VRF key")
		}
		x, err := cfg.VRFKey.Index(j.String(), vrfProof)
		if err != nil {
			return nil, fmt.Errorf("audit: monitor: %w", err)
		}
		cfg.Index, rep.Index = &x, &x
	}
	a, err := Run(ctx, cfg)
	rep.Audit = a
	if a != nil {
		for _, e := range a.History {
			if k := e.Kind(); k == keylog.KindPublish || k == keylog.KindReset || k == keylog.KindDelete {
				rep.History = append(rep.History, e)
			}
		}
	}
	if err != nil {
		return rep, err
	}
	for _, e := range rep.History {
		if e.Kind() == keylog.KindPublish {
			fp := e.Fingerprint()
			rep.Current = &fp
		} else {
			rep.Current = nil
		}
	}
	if a.Migrated {
		if cfg.VRFKey != nil && (a.VRFKey == nil || *a.VRFKey != *cfg.VRFKey) {
			return rep, auditFailed("the log's genesis names another VRF key than the one given")
		}
		if rep.Index == nil {
			return rep, errors.New("audit: monitor: this log indexes JIDs by a VRF: give the JID's VRF proof (clinkctl keys prints it)")
		}
		v, ok := a.Value(*rep.Index)
		n := int64(len(rep.History))
		switch {
		case !ok && n == 0:
		case !ok || v.Version != n || v.Entry != rep.History[n-1].Index || v.Ended != (rep.Current == nil) || v.Fingerprint != rep.History[n-1].Fingerprint():
			return rep, auditFailed("the history of %s is not complete: %d entries found, the map says version %d set by entry %d", rep.JID, n, v.Version, v.Entry)
		}
	}
	if expect != nil && (rep.Current == nil || *rep.Current != *expect) {
		cur := "no key"
		if rep.Current != nil {
			cur = "key " + hex.EncodeToString(rep.Current[:])
		}
		return rep, fmt.Errorf("%w: the log binds %s to %s", ErrMonitorMismatch, rep.JID, cur)
	}
	return rep, nil
}
