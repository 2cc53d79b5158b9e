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
	// Label, if set, makes the report list every entry of that label
	// (Monitor sets it).
	Label *[32]byte
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
	Labels     int                // distinct labels in the log
	Bindings   int                // labels with a binding in force
	Counts     map[keylog.Kind]int
	Findings   []Finding
	History    []keylog.Entry // the entries of Config.Label
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
//  5. per label, the entries follow the policy: a publish only when no
//     binding is in force, a reset or delete only of the binding in force.
//
// Failures of 1-4 and policy violations of 5 return an error wrapping
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
	pol := newPolicy(cfg.Label)
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
			rec, err := keylog.ParseRecord(e)
			if err != nil {
				return rep, auditFailed("entry %d: %v", n, err)
			}
			mem.Append(e)
			pol.add(n, rec)
		}
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
	rep.Labels, rep.Bindings, rep.Counts, rep.Findings, rep.History = len(pol.labels), pol.bound(), pol.counts, pol.findings, pol.history
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

// policy replays the log's entries label by label.
type policy struct {
	labels     map[[32]byte]*labelState
	counts     map[keylog.Kind]int
	findings   []Finding
	violations []Finding
	watch      *[32]byte
	history    []keylog.Entry
}

type labelState struct {
	bound      bool
	fp         [32]byte
	publishes  []int64
	flaggedReb bool
}

func newPolicy(watch *[32]byte) *policy {
	return &policy{labels: map[[32]byte]*labelState{}, counts: map[keylog.Kind]int{}, watch: watch}
}

func (p *policy) add(n int64, r keylog.Record) {
	p.counts[r.Kind]++
	if p.watch != nil && *p.watch == r.Label {
		p.history = append(p.history, keylog.Entry{Index: n, Record: r})
	}
	s := p.labels[r.Label]
	if s == nil {
		s = &labelState{}
		p.labels[r.Label] = s
	}
	switch r.Kind {
	case keylog.KindPublish:
		if s.bound {
			p.violations = append(p.violations, Finding{Label: r.Label, What: "violation", Indexes: []int64{s.publishes[len(s.publishes)-1], n},
				Text: fmt.Sprintf("a second key %.16x… was published while key %.16x… was in force", r.Fingerprint[:], s.fp[:])})
		}
		s.bound, s.fp = true, r.Fingerprint
		s.publishes = append(s.publishes, n)
		if len(s.publishes) > 1 {
			if s.flaggedReb {
				// Keep one finding per label, with every publish in it.
				for i := range p.findings {
					if p.findings[i].Label == r.Label && p.findings[i].What == "rebound" {
						p.findings[i].Indexes = append([]int64(nil), s.publishes...)
						p.findings[i].Text = fmt.Sprintf("%d bindings over time", len(s.publishes))
					}
				}
			} else {
				s.flaggedReb = true
				p.findings = append(p.findings, Finding{Label: r.Label, What: "rebound", Indexes: append([]int64(nil), s.publishes...),
					Text: fmt.Sprintf("%d bindings over time", len(s.publishes))})
			}
		}
	case keylog.KindReset, keylog.KindDelete:
		if !s.bound || s.fp != r.Fingerprint {
			p.violations = append(p.violations, Finding{Label: r.Label, What: "violation", Indexes: []int64{n},
				Text: fmt.Sprintf("a %s of key %.16x…, which is not the binding in force", r.Kind, r.Fingerprint[:])})
		}
		s.bound = false
		if r.Kind == keylog.KindReset {
			p.findings = append(p.findings, Finding{Label: r.Label, What: "reset", Indexes: []int64{n},
				Text: fmt.Sprintf("an operator ended key %.16x…", r.Fingerprint[:])})
		}
	}
}

func (p *policy) bound() int {
	n := 0
	for _, s := range p.labels {
		if s.bound {
			n++
		}
	}
	return n
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
	JID     string
	Label   [32]byte
	Audit   *Report
	History []keylog.Entry
	// Current is the fingerprint in force, nil when there is none.
	Current *[32]byte
}

// ErrMonitorMismatch is returned by Monitor when the key in force is not
// the one expected.
var ErrMonitorMismatch = errors.New("audit: the key in force is not yours")

// Monitor audits the log (as Run does, with the same state rules) and
// reports the history of bare's label. With expect set, it returns an error
// wrapping ErrMonitorMismatch unless the binding in force has that
// fingerprint. It needs no account: labels are computable from JIDs.
func Monitor(ctx context.Context, cfg Config, bare string, expect *[32]byte) (*MonitorReport, error) {
	j, err := keylog.ParseBareJID(bare)
	if err != nil {
		return nil, err
	}
	label := keylog.Label(j)
	cfg.Label = &label
	rep := &MonitorReport{JID: j.String(), Label: label}
	a, err := Run(ctx, cfg)
	rep.Audit = a
	if a != nil {
		rep.History = a.History
	}
	if err != nil {
		return rep, err
	}
	for _, e := range rep.History {
		if e.Record.Kind == keylog.KindPublish {
			fp := e.Record.Fingerprint
			rep.Current = &fp
		} else {
			rep.Current = nil
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
