// Package logdb keeps the key directory's log in PostgreSQL: the leaf
// records (keylog.Record, keylog.RecordV1), tlog's stored hashes, the
// map's leaves (the current value of each JID's index), the key bound to
// each JID and the operator's account of each entry, in the tables its
// Migrations make (docs/keydir.md, "Tables"). Each append (a publish, the
// end of a binding, a tick) is one transaction under the lock of the
// log's size row, so appends are serialized and a failed one leaves the
// log and the map as they were. What it reads back is checked against the
// invariants it relies on (ErrCorrupt otherwise), since proofs are built
// from it.
//
// The map's inner nodes are not stored: a Store keeps the whole map in
// memory (keylog.Map), built from the keydir_map rows on first use and
// brought up to date, under the size row's lock, from the rows changed
// since (another process, clinkd keys reset, may have appended). Every
// v1 record names the map root after it, so a map that does not match
// the log is caught at once. Records, keys and tlog's stored hashes never
// change once written: a Store keeps those it read (bounded), so that a
// lookup reads the size row and, in the same statement, only what it has
// not seen; while the Store holds its size lease (lease.go), during which
// no other writer's append can commit, it need not read even the size row.
//
// The server (keydir) answers from a Store, and Store.End is the one way
// a binding ends, for operators and deleted accounts alike. The auditor
// (keydir/audit) never reads the database: it verifies what the server
// serves.
package logdb

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/internal/migrate"
	"github.com/clinkme/clinkd/keylog"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations returns the key directory's migrations, for
// daemon.MigrationSets. The set keeps the name "keydir", under which
// existing databases recorded the ones they applied.
func Migrations() migrate.Set {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(err) // the embedded directory exists by construction
	}
	return migrate.Set{Name: "keydir", FS: sub}
}

// Store errors.
var (
	// ErrConflict: the JID already has a binding to another key.
	ErrConflict = errors.New("logdb: a different key is already bound")
	// ErrNoBinding: the JID has no binding to end.
	ErrNoBinding = errors.New("logdb: no binding")
	// ErrCorrupt: what the database returned breaks an invariant (a
	// missing or malformed hash or record, a map that does not match the
	// log); the log needs an audit.
	ErrCorrupt = errors.New("logdb: log storage is inconsistent")
	// ErrNotMigrated: the log holds v0 entries and no genesis record yet
	// (clinkd keys migrate appends it).
	ErrNotMigrated = errors.New("logdb: the log is not migrated to v1 (run clinkd keys migrate)")
	// ErrBelowFloor: the log has fewer entries than a checkpoint already
	// signed (SetFloor): the database was rolled back, and an append would
	// put other content at indices already signed.
	ErrBelowFloor = errors.New("logdb: the log is shorter than the last signed checkpoint (database rolled back)")
)

// A Store keeps the log and the bindings in PostgreSQL.
type Store struct {
	db    *pgxpool.Pool
	log   *slog.Logger
	vrf   *keylog.VRFSigner
	floor atomic.Int64

	mu    sync.RWMutex // guards m and msize; held for writing by appends
	m     *keylog.Map  // nil until loaded
	msize int64        // the log size m reflects

	vmu  sync.Mutex
	vrfs map[string]vrfProof // canonical JID → index and proof

	// What never changes once written, kept so that a lookup reads the
	// database once (the size row) when it has seen the rest before:
	// records by leaf index, the key each publish entry bound by that
	// entry's index, and tlog's stored hashes (ProofHashReader).
	records memo[int64, []byte]
	keys    memo[int64, []byte]
	hashes  memo[int64, tlog.Hash]

	sizes      sizeReads
	sizeReadN  atomic.Int64 // statements of lookups that read the size row
	keptProofs keptProofs
	lease      lease
}

// sizeReads lets the lookups that need nothing but the size row share
// reads of it. A lookup that arrives while a read is under way joins the
// next one, which starts when that one ends: every lookup is answered
// from a read that began after it did (an append that ended before a
// lookup began is in its answer, whichever clinkd made it), and lookups
// that arrive together take one round trip.
type sizeReads struct {
	mu      sync.Mutex
	running bool      // a read is under way
	next    *sizeRead // the read after it, which lookups arriving now join
}

type sizeRead struct {
	done chan struct{}
	row  treeRow
	err  error
}

// treeRow is the size row as read, not yet checked.
type treeRow struct {
	size    int64
	gen, t  *int64
	mapRoot []byte // shared by the lookups of one read: never modified
}

// sharedReadTimeout bounds a size-row read that lookups joined: it has
// no requester of its own whose context could end it, and the lookups
// waiting for it give up at their own deadlines anyway.
const sharedReadTimeout = 30 * time.Second

// readSize returns the size row as a statement that began after the call
// read it.
func (s *Store) readSize(ctx context.Context) (treeRow, error) {
	r := &s.sizes
	r.mu.Lock()
	if r.running {
		if r.next == nil {
			r.next = &sizeRead{done: make(chan struct{})}
		}
		f := r.next
		r.mu.Unlock()
		select {
		case <-f.done:
			return f.row, f.err
		case <-ctx.Done():
			return treeRow{}, ctx.Err()
		}
	}
	r.running = true
	r.mu.Unlock()
	// Nobody else waits for this read: it runs here, under ctx.
	f := &sizeRead{done: make(chan struct{})}
	s.runSizeRead(ctx, f)
	return f.row, f.err
}

// runSizeRead reads the size row for f, then starts the read the lookups
// that arrived meanwhile joined, if any.
func (s *Store) runSizeRead(ctx context.Context, f *sizeRead) {
	row := &f.row
	s.sizeReadN.Add(1)
	f.err = s.db.QueryRow(ctx, `SELECT size, genesis, map_root, v1_time FROM keydir_tree`).Scan(&row.size, &row.gen, &row.mapRoot, &row.t)
	close(f.done)
	r := &s.sizes
	r.mu.Lock()
	next := r.next
	r.next = nil
	r.running = next != nil
	r.mu.Unlock()
	if next != nil {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), sharedReadTimeout)
			defer cancel()
			s.runSizeRead(ctx, next)
		}()
	}
}

// memo is a bounded map of values that never change once written. Full,
// it starts over: a few reads again, and no bookkeeping on every hit.
type memo[K comparable, V any] struct {
	mu  sync.RWMutex
	m   map[K]V
	max int
}

func newMemo[K comparable, V any](max int) memo[K, V] {
	return memo[K, V]{m: map[K]V{}, max: max}
}

func (c *memo[K, V]) get(k K) (V, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *memo[K, V]) put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[k] = v
}

func (c *memo[K, V]) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
}

type vrfProof struct {
	index [32]byte
	proof []byte
}

// maxVRFCache bounds the VRF proofs kept (about 150 bytes each).
const maxVRFCache = 100_000

// maxRecordCache and maxKeyCache bound the records (about 300 bytes
// each with the map's overhead) and keys (100 to 600 bytes) kept:
// about 40 MB at most for both, for the JIDs looked up most. maxHashCache
// bounds the stored hashes kept (about 60 bytes each): the upper levels
// of the tree, which every proof shares, and the lower ones of the
// leaves proven lately.
const (
	maxRecordCache = 50_000
	maxKeyCache    = 50_000
	maxHashCache   = 200_000
)

// Config is what a Store needs; every field is required.
type Config struct {
	// DB is a pool over the database whose schema Migrations made.
	DB *pgxpool.Pool
	// Log gets a line for every binding ended (see End).
	Log *slog.Logger
	// VRF computes each JID's map index (keylog.LoadVRFSigner).
	VRF *keylog.VRFSigner
	// SizeLease is how long a size lease runs (HoldLease), 10 ms to
	// 1 min; zero for a store that holds none (a command that appends,
	// a test), whose lookups read the size row every time.
	SizeLease time.Duration
}

// New returns a store over cfg.DB.
func New(cfg Config) (*Store, error) {
	if cfg.DB == nil {
		return nil, errors.New("logdb: no database pool")
	}
	if cfg.Log == nil {
		return nil, errors.New("logdb: no logger: every binding ended is logged")
	}
	if cfg.VRF == nil {
		return nil, errors.New("logdb: no VRF key: it gives every JID its map index")
	}
	s := &Store{db: cfg.DB, log: cfg.Log, vrf: cfg.VRF, vrfs: map[string]vrfProof{},
		records: newMemo[int64, []byte](maxRecordCache),
		keys:    newMemo[int64, []byte](maxKeyCache),
		hashes:  newMemo[int64, tlog.Hash](maxHashCache),
	}
	if err := s.lease.start(cfg.SizeLease); err != nil {
		return nil, err
	}
	return s, nil
}

// VRF returns the store's VRF key.
func (s *Store) VRF() *keylog.VRFSigner { return s.vrf }

// SetFloor makes every later append fail with ErrBelowFloor while the
// log has fewer than n entries: n is the size of the last checkpoint
// signed. It never lowers the floor.
func (s *Store) SetFloor(n int64) {
	for {
		cur := s.floor.Load()
		if n <= cur || s.floor.CompareAndSwap(cur, n) {
			return
		}
	}
}

// Index returns bare's map index and its VRF proof, computed once per
// JID and kept (bounded).
func (s *Store) Index(bare jid.JID) ([32]byte, []byte) {
	key := bare.String()
	s.vmu.Lock()
	p, ok := s.vrfs[key]
	s.vmu.Unlock()
	if ok {
		return p.index, p.proof
	}
	x, proof := s.vrf.Index(bare)
	s.vmu.Lock()
	if len(s.vrfs) >= maxVRFCache {
		clear(s.vrfs)
	}
	s.vrfs[key] = vrfProof{x, proof}
	s.vmu.Unlock()
	return x, proof
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// hashReader is a tlog.HashReader over keydir_hashes. tlog's interface
// has no context, so each reader is made for one request.
type hashReader struct {
	ctx context.Context
	q   querier
}

// ReadHashes returns the hashes at indexes, in order, or an error: it
// checks tlog's contract (one 32-byte hash per index) itself rather than
// trust the rows.
func (r hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	if len(indexes) == 0 {
		return nil, nil
	}
	rows, err := r.q.Query(r.ctx, `SELECT idx, hash FROM keydir_hashes WHERE idx = ANY($1)`, indexes)
	if err != nil {
		return nil, fmt.Errorf("logdb: read hashes: %w", err)
	}
	got := make(map[int64]tlog.Hash, len(indexes))
	var (
		idx int64
		h   []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&idx, &h}, func() error {
		if len(h) != tlog.HashSize {
			return fmt.Errorf("%w: hash %d has %d bytes", ErrCorrupt, idx, len(h))
		}
		got[idx] = tlog.Hash(h)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("logdb: read hashes: %w", err)
	}
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		v, ok := got[x]
		if !ok {
			return nil, fmt.Errorf("%w: hash %d is missing", ErrCorrupt, x)
		}
		out[i] = v
	}
	return out, nil
}

// overlay reads hashes not yet written (an append in progress) before
// the database's.
type overlay struct {
	base    tlog.HashReader
	pending map[int64]tlog.Hash
}

func (o overlay) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	var rest []int64
	for _, x := range indexes {
		if _, ok := o.pending[x]; !ok {
			rest = append(rest, x)
		}
	}
	got, err := o.base.ReadHashes(rest)
	if err != nil {
		return nil, err
	}
	j := 0
	for i, x := range indexes {
		if h, ok := o.pending[x]; ok {
			out[i] = h
		} else {
			out[i] = got[j]
			j++
		}
	}
	return out, nil
}

// HashReader returns a tlog.HashReader for the stored hashes that uses ctx
// for its queries.
func (s *Store) HashReader(ctx context.Context) tlog.HashReader { return hashReader{ctx, s.db} }

// ProofHashReader returns a tlog.HashReader that answers from the
// hashes it read before and reads the others from the database, keeping
// them. A stored hash never changes once written, but a database
// restored from a backup and appended to again holds other hashes at
// the same indexes: use it only for proofs that are checked against a
// checkpoint whose root was computed from HashReader (an inclusion
// proof for a device), and call Forget when a check fails. Never
// for a tree hash about to be signed, nor for the comparison of the
// database with the last checkpoint signed: those must see the database.
func (s *Store) ProofHashReader(ctx context.Context) tlog.HashReader {
	return cachedHashes{s: s, db: hashReader{ctx, s.db}}
}

// Forget drops the hashes ProofHashReader kept and the records and keys
// Lookup kept: after a check failed on what they gave, the next request
// reads the database again.
func (s *Store) Forget() {
	s.keptProofs.forget()
	s.hashes.forget()
	s.records.forget()
	s.keys.forget()
}

type cachedHashes struct {
	s  *Store
	db hashReader
}

func (r cachedHashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	var missing []int // positions in indexes
	for i, x := range indexes {
		h, ok := r.s.hashes.get(x)
		if !ok {
			missing = append(missing, i)
			continue
		}
		out[i] = h
	}
	if len(missing) == 0 {
		return out, nil
	}
	xs := make([]int64, len(missing))
	for j, i := range missing {
		xs[j] = indexes[i]
	}
	got, err := r.db.ReadHashes(xs)
	if err != nil {
		return nil, err
	}
	for j, i := range missing {
		out[i] = got[j]
		r.s.hashes.put(xs[j], got[j])
	}
	return out, nil
}

// SizeRowReads returns how many statements lookups sent that read the
// size row (a lookup under the size lease that needs nothing else sends
// none).
func (s *Store) SizeRowReads() int64 { return s.sizeReadN.Load() }

// Size returns the number of leaves in the log.
func (s *Store) Size(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRow(ctx, `SELECT size FROM keydir_tree`).Scan(&n); err != nil {
		return 0, fmt.Errorf("logdb: read size: %w", err)
	}
	return n, nil
}

// A TreeState is the log's size row.
type TreeState struct {
	Size    int64
	Genesis int64 // -1: not migrated
	MapRoot [32]byte
	V1Time  int64 // time of the last v1 record
}

func readTree(ctx context.Context, q querier, lock bool) (TreeState, error) {
	sql := `SELECT size, genesis, map_root, v1_time FROM keydir_tree`
	if lock {
		sql += ` FOR UPDATE`
	}
	var (
		st   TreeState
		gen  *int64
		root []byte
		t    *int64
	)
	if err := q.QueryRow(ctx, sql).Scan(&st.Size, &gen, &root, &t); err != nil {
		return st, fmt.Errorf("read log size: %w", err)
	}
	st.Genesis = -1
	if gen != nil {
		if len(root) != 32 || t == nil {
			return st, fmt.Errorf("%w: migrated log without a map root", ErrCorrupt)
		}
		st.Genesis, st.MapRoot, st.V1Time = *gen, [32]byte(root), *t
	}
	return st, nil
}

// Tree returns the log's size row.
func (s *Store) Tree(ctx context.Context) (TreeState, error) {
	st, err := readTree(ctx, s.db, false)
	if err != nil {
		return st, fmt.Errorf("logdb: %w", err)
	}
	return st, nil
}

// ReadRecords returns the record texts of leaves [start, start+n).
func (s *Store) ReadRecords(ctx context.Context, start int64, n int) ([][]byte, error) {
	return readRecords(ctx, s.db, start, n)
}

func readRecords(ctx context.Context, q querier, start int64, n int) ([][]byte, error) {
	rows, err := q.Query(ctx, `SELECT idx, record FROM keydir_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx`, start, start+int64(n))
	if err != nil {
		return nil, fmt.Errorf("logdb: read records: %w", err)
	}
	out := make([][]byte, 0, n)
	var (
		idx int64
		rec []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&idx, &rec}, func() error {
		if idx != start+int64(len(out)) {
			return fmt.Errorf("%w: record %d is missing", ErrCorrupt, start+int64(len(out)))
		}
		out = append(out, bytes.Clone(rec))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("logdb: read records: %w", err)
	}
	if len(out) != n {
		return nil, fmt.Errorf("%w: %d of %d records from %d", ErrCorrupt, len(out), n, start)
	}
	return out, nil
}

// syncMap brings the map in memory to the log of st (read in q's
// snapshot or under the size row's lock): loaded whole the first time
// (or if the log shrank), else from the rows changed since. It checks
// the result against the map root the log names. The caller holds mu
// for writing.
func (s *Store) syncMap(ctx context.Context, q querier, st TreeState) error {
	if s.m != nil && s.msize == st.Size {
		return nil
	}
	full := s.m == nil || s.msize > st.Size
	if s.m != nil && s.msize > st.Size {
		// The log shrank (a database restored from a backup): what it
		// holds past its size now may differ from what was kept.
		s.Forget()
	}
	var from int64
	if !full {
		from = s.msize
	}
	rows, err := q.Query(ctx, `SELECT idx, ended, fingerprint, entry, version FROM keydir_map WHERE changed >= $1 AND changed < $2`, from, st.Size)
	if err != nil {
		return fmt.Errorf("read map: %w", err)
	}
	var entries []keylog.MapEntry
	var (
		x, fp      []byte
		ended      bool
		entry, ver int64
	)
	_, err = pgx.ForEachRow(rows, []any{&x, &ended, &fp, &entry, &ver}, func() error {
		if len(x) != 32 || len(fp) != 32 || entry < 0 || entry >= st.Size || ver < 1 {
			return fmt.Errorf("%w: malformed map row", ErrCorrupt)
		}
		entries = append(entries, keylog.MapEntry{Index: [32]byte(x), Value: keylog.MapValue{Ended: ended, Fingerprint: [32]byte(fp), Entry: entry, Version: ver}})
		return nil
	})
	if err != nil {
		return fmt.Errorf("read map: %w", err)
	}
	return s.applyMap(entries, full, st)
}

// applyMap makes the map in memory the one of st: built from entries
// (every row) when full, else with entries (the rows changed since its
// size) set in it; it checks the result against the root st names. The
// caller holds mu for writing.
func (s *Store) applyMap(entries []keylog.MapEntry, full bool, st TreeState) error {
	var err error
	m := s.m
	if full {
		if m, err = keylog.BuildMap(entries); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	} else {
		for _, e := range entries {
			m.Set(e.Index, e.Value)
		}
	}
	if st.Genesis >= 0 && m.Root() != st.MapRoot {
		s.m = nil // rebuild from scratch next time
		s.Forget()
		return fmt.Errorf("%w: the map's rows give root %x, the log names %x", ErrCorrupt, m.Root(), st.MapRoot)
	}
	s.m, s.msize = m, st.Size
	return nil
}

// appended is an entry to append: its text, the map index it concerns
// (label column) and its event (JID and reason), if any.
type appended struct {
	text   []byte
	key    []byte // label column: a v0 label or a map index; nil for genesis and tick
	jid    string // event; empty: none
	kind   keylog.Kind
	reason string
}

// writeEntries appends entries at n, n+1, … with their hashes and events,
// and makes the size n+len(entries). The caller holds the size row's lock.
func (s *Store) writeEntries(ctx context.Context, tx pgx.Tx, n int64, entries []appended, st TreeState) error {
	pend := overlay{base: hashReader{ctx, tx}, pending: map[int64]tlog.Hash{}}
	var hashRows, entryRows, eventRows [][]any
	for i, e := range entries {
		at := n + int64(i)
		hs, err := tlog.StoredHashes(at, e.text, pend)
		if err != nil {
			return fmt.Errorf("compute hashes: %w", err)
		}
		first := tlog.StoredHashIndex(0, at)
		for j, h := range hs {
			pend.pending[first+int64(j)] = h
			hashRows = append(hashRows, []any{first + int64(j), bytes.Clone(h[:])})
		}
		entryRows = append(entryRows, []any{at, e.key, e.text})
		if e.jid != "" {
			eventRows = append(eventRows, []any{at, e.jid, string(e.kind), e.reason})
		}
	}
	if len(entries) > 64 {
		// A migration: COPY is far faster than INSERTs for a million rows.
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"keydir_entries"}, []string{"idx", "label", "record"}, pgx.CopyFromRows(entryRows)); err != nil {
			return fmt.Errorf("append entries: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"keydir_hashes"}, []string{"idx", "hash"}, pgx.CopyFromRows(hashRows)); err != nil {
			return fmt.Errorf("append hashes: %w", err)
		}
	} else {
		batch := &pgx.Batch{}
		for _, r := range entryRows {
			batch.Queue(`INSERT INTO keydir_entries (idx, label, record) VALUES ($1, $2, $3)`, r...)
		}
		idxs, hs := make([]int64, len(hashRows)), make([][]byte, len(hashRows))
		for i, r := range hashRows {
			idxs[i], hs[i] = r[0].(int64), r[1].([]byte)
		}
		batch.Queue(`INSERT INTO keydir_hashes (idx, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])`, idxs, hs)
		for _, r := range eventRows {
			batch.Queue(`INSERT INTO keydir_events (idx, jid, kind, reason) VALUES ($1, $2, $3, $4)`, r...)
		}
		if err := tx.SendBatch(ctx, batch).Close(); err != nil {
			return fmt.Errorf("append leaf %d: %w", n, err)
		}
		eventRows = nil
	}
	for _, r := range eventRows {
		if _, err := tx.Exec(ctx, `INSERT INTO keydir_events (idx, jid, kind, reason) VALUES ($1, $2, $3, $4)`, r...); err != nil {
			return fmt.Errorf("append event: %w", err)
		}
	}
	var gen any
	if st.Genesis >= 0 {
		gen = st.Genesis
	}
	if err := s.passGate(ctx, tx); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE keydir_tree SET size = $1, genesis = $2, map_root = $3, v1_time = $4`,
		n+int64(len(entries)), gen, st.MapRoot[:], st.V1Time); err != nil {
		return fmt.Errorf("update log size: %w", err)
	}
	return nil
}

// appendLocked runs f in a transaction holding the size row's lock and
// mu, with the map brought to the log's size; f returns the entries to
// append and the map changes they make, which are applied in memory
// once the transaction committed.
func (s *Store) appendLocked(ctx context.Context, f func(tx pgx.Tx, st TreeState) ([]appended, []keylog.MapEntry, error)) (TreeState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		changes []keylog.MapEntry
		before  TreeState
		n       int
	)
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		st, err := readTree(ctx, tx, true)
		if err != nil {
			return err
		}
		before = st
		if floor := s.floor.Load(); st.Size < floor {
			return fmt.Errorf("%w: %d entries, %d signed", ErrBelowFloor, st.Size, floor)
		}
		if st.Genesis >= 0 {
			if err := s.syncMap(ctx, tx, st); err != nil {
				return err
			}
		}
		entries, ch, err := f(tx, st)
		if err != nil || len(entries) == 0 {
			return err
		}
		changes, n = ch, len(entries)
		return nil
	})
	if err != nil {
		// It may have committed all the same (a connection lost in
		// COMMIT): the map in memory may be behind, so lookups read the
		// size row until the lease is renewed with the map current.
		s.lease.drop()
		return before, err
	}
	if n > 0 && s.m != nil && s.msize == before.Size {
		for _, c := range changes {
			s.m.Set(c.Index, c.Value)
		}
		s.msize = before.Size + int64(n)
	} else if n > 0 {
		s.lease.drop() // the map is behind its own append
	}
	return before, nil
}

// recordTime is the time of a new v1 record: now, or the last v1 record's
// time if the clock went back (v1 times never decrease).
func recordTime(now time.Time, st TreeState) int64 {
	return max(now.Unix(), st.V1Time, 0)
}

// Init starts a new log: it appends the genesis record to an empty log
// and reports whether it did. A log already started is left alone; a
// log with v0 entries and no genesis gets ErrNotMigrated.
func (s *Store) Init(ctx context.Context, now time.Time) (bool, error) {
	done := false
	_, err := s.appendLocked(ctx, func(tx pgx.Tx, st TreeState) ([]appended, []keylog.MapEntry, error) {
		switch {
		case st.Genesis >= 0:
			return nil, nil, nil
		case st.Size > 0:
			return nil, nil, ErrNotMigrated
		}
		g := keylog.RecordV1{Kind: keylog.KindGenesis, VRFKey: s.vrf.Public().String(), Time: recordTime(now, st), Map: keylog.MapEmpty}
		st2 := TreeState{Genesis: 0, MapRoot: keylog.MapEmpty, V1Time: g.Time}
		done = true
		return []appended{{text: g.Marshal()}}, nil, s.writeEntries(ctx, tx, 0, []appended{{text: g.Marshal()}}, st2)
	})
	if err != nil {
		return false, fmt.Errorf("logdb: start the log: %w", err)
	}
	return done, nil
}

// A Binding is a JID's map value with the key it binds.
type Binding struct {
	JID   string
	Index [32]byte // map index
	Value keylog.MapValue
	Key   []byte // SubjectPublicKeyInfo DER; nil when ended
}

// Publish binds bare to the key (SubjectPublicKeyInfo DER, already
// checked by keylog.ParsePublicKey). The first key wins: publishing the
// key in force again returns its binding with created false and writes
// nothing; another key gets ErrConflict. After a reset or delete, the
// next publish binds again, with the next version.
func (s *Store) Publish(ctx context.Context, bare jid.JID, der []byte, now time.Time) (b Binding, created bool, err error) {
	label, fp := keylog.Label(bare), keylog.Fingerprint(der)
	x, _ := s.Index(bare)
	b = Binding{JID: bare.String(), Index: x, Key: der}
	_, err = s.appendLocked(ctx, func(tx pgx.Tx, st TreeState) ([]appended, []keylog.MapEntry, error) {
		if st.Genesis < 0 {
			return nil, nil, ErrNotMigrated
		}
		cur, ok := s.m.Get(x)
		if ok && !cur.Ended {
			if cur.Fingerprint != fp {
				return nil, nil, ErrConflict
			}
			b.Value = cur
			return nil, nil, nil
		}
		v := keylog.MapValue{Fingerprint: fp, Entry: st.Size, Version: cur.Version + 1}
		root := s.m.RootWith(x, v)
		rec := keylog.RecordV1{Kind: keylog.KindPublish, Index: x, Fingerprint: fp, Version: v.Version, Time: recordTime(now, st), Map: root}
		next := TreeState{Genesis: st.Genesis, MapRoot: root, V1Time: rec.Time}
		e := []appended{{text: rec.Marshal(), key: x[:], jid: b.JID, kind: keylog.KindPublish}}
		if err := s.writeEntries(ctx, tx, st.Size, e, next); err != nil {
			return nil, nil, err
		}
		if err := writeMap(ctx, tx, x, v, st.Size); err != nil {
			return nil, nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO keydir_bindings (label, jid, public_key, fingerprint, idx, time) VALUES ($1, $2, $3, $4, $5, $6)`,
			label[:], b.JID, der, fp[:], st.Size, rec.Time); err != nil {
			return nil, nil, err
		}
		b.Value, created = v, true
		return e, []keylog.MapEntry{{Index: x, Value: v}}, nil
	})
	if err != nil {
		return Binding{}, false, fmt.Errorf("logdb: publish %s: %w", bare, err)
	}
	return b, created, nil
}

func writeMap(ctx context.Context, tx pgx.Tx, x [32]byte, v keylog.MapValue, changed int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO keydir_map (idx, ended, fingerprint, entry, version, changed) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (idx) DO UPDATE SET ended = $2, fingerprint = $3, entry = $4, version = $5, changed = $6`,
		x[:], v.Ended, v.Fingerprint[:], v.Entry, v.Version, changed)
	if err != nil {
		return fmt.Errorf("write map: %w", err)
	}
	return nil
}

// End ends the binding of bare (a bare JID, canonicalised by
// keylog.ParseBareJID) with an entry of kind keylog.KindReset (an
// operator: clinkd keys reset) or keylog.KindDelete (the account was
// deleted) that carries the ended key's fingerprint, leaves a tombstone
// in the map and removes the binding, in one transaction. reason is kept
// in the database (keydir_events), not in the log. It returns the new
// entry's index, or an error wrapping keylog.ErrBadJID or ErrNoBinding.
//
// It is the only way a binding ends, and every one it ends is logged
// ("keydir: binding ended", with kind and index, never the JID): an
// operator must see each change of a user's key that the log will show
// every auditor.
func (s *Store) End(ctx context.Context, bare string, kind keylog.Kind, reason string, now time.Time) (int64, error) {
	j, err := keylog.ParseBareJID(bare)
	if err != nil {
		return 0, fmt.Errorf("logdb: end %q: %w", bare, err)
	}
	if kind != keylog.KindReset && kind != keylog.KindDelete {
		return 0, fmt.Errorf("logdb: end %s: kind %q is not reset or delete", j, kind)
	}
	label := keylog.Label(j)
	x, _ := s.Index(j)
	var idx int64
	_, err = s.appendLocked(ctx, func(tx pgx.Tx, st TreeState) ([]appended, []keylog.MapEntry, error) {
		if st.Genesis < 0 {
			return nil, nil, ErrNotMigrated
		}
		cur, ok := s.m.Get(x)
		if !ok || cur.Ended {
			return nil, nil, ErrNoBinding
		}
		v := keylog.MapValue{Ended: true, Fingerprint: cur.Fingerprint, Entry: st.Size, Version: cur.Version + 1}
		root := s.m.RootWith(x, v)
		rec := keylog.RecordV1{Kind: kind, Index: x, Fingerprint: cur.Fingerprint, Version: v.Version, Time: recordTime(now, st), Map: root}
		next := TreeState{Genesis: st.Genesis, MapRoot: root, V1Time: rec.Time}
		e := []appended{{text: rec.Marshal(), key: x[:], jid: j.String(), kind: kind, reason: reason}}
		if err := s.writeEntries(ctx, tx, st.Size, e, next); err != nil {
			return nil, nil, err
		}
		if err := writeMap(ctx, tx, x, v, st.Size); err != nil {
			return nil, nil, err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM keydir_bindings WHERE label = $1`, label[:])
		if err != nil {
			return nil, nil, err
		}
		if tag.RowsAffected() != 1 {
			return nil, nil, fmt.Errorf("%w: the map binds %s, the bindings do not", ErrCorrupt, j)
		}
		idx = st.Size
		return e, []keylog.MapEntry{{Index: x, Value: v}}, nil
	})
	if err != nil {
		return 0, fmt.Errorf("logdb: %s %s: %w", kind, j, err)
	}
	s.log.Info("keydir: binding ended", "kind", kind, "index", idx)
	return idx, nil
}

// Tick appends a tick record when the last v1 record is older than
// every (freshness: devices refuse a head older than their max age), and
// reports whether it did.
func (s *Store) Tick(ctx context.Context, now time.Time, every time.Duration) (bool, error) {
	done := false
	_, err := s.appendLocked(ctx, func(tx pgx.Tx, st TreeState) ([]appended, []keylog.MapEntry, error) {
		if st.Genesis < 0 || now.Unix()-st.V1Time < int64(every/time.Second) {
			return nil, nil, nil
		}
		rec := keylog.RecordV1{Kind: keylog.KindTick, Time: recordTime(now, st), Map: st.MapRoot}
		next := st
		next.V1Time = rec.Time
		e := []appended{{text: rec.Marshal()}}
		done = true
		return e, nil, s.writeEntries(ctx, tx, st.Size, e, next)
	})
	if err != nil {
		return false, fmt.Errorf("logdb: tick: %w", err)
	}
	return done, nil
}

// Migrate moves a v0 log to v1 (docs/keydir.md, "Migrate a v0 log"): it
// appends a genesis record, then one migrate record per v0 label (sorted
// by index), each with the map root after it, and fills the map, in one
// transaction. Every v0 entry must have its event (the JID is found
// there). It returns the number of labels moved.
func (s *Store) Migrate(ctx context.Context, now time.Time) (int, error) {
	var labels int
	_, err := s.appendLocked(ctx, func(tx pgx.Tx, st TreeState) ([]appended, []keylog.MapEntry, error) {
		if st.Genesis >= 0 {
			return nil, nil, errors.New("the log is migrated already")
		}
		type replay struct {
			jid   jid.JID
			label [32]byte
			last  keylog.Record
			entry int64
			n     int64
		}
		byLabel := map[[32]byte]*replay{}
		rows, err := tx.Query(ctx, `SELECT e.idx, e.record, ev.jid FROM keydir_entries e LEFT JOIN keydir_events ev USING (idx) ORDER BY e.idx`)
		if err != nil {
			return nil, nil, err
		}
		var (
			idx  int64
			text []byte
			who  *string
			next int64
		)
		_, err = pgx.ForEachRow(rows, []any{&idx, &text, &who}, func() error {
			if idx != next {
				return fmt.Errorf("%w: entry %d is missing", ErrCorrupt, next)
			}
			next++
			r, err := keylog.ParseRecord(text)
			if err != nil {
				return fmt.Errorf("%w: entry %d: %v", ErrCorrupt, idx, err)
			}
			if who == nil {
				return fmt.Errorf("%w: entry %d has no event: its JID is unknown", ErrCorrupt, idx)
			}
			j, err := keylog.ParseBareJID(*who)
			if err != nil || keylog.Label(j) != r.Label {
				return fmt.Errorf("%w: entry %d's event names a JID of another label", ErrCorrupt, idx)
			}
			p := byLabel[r.Label]
			if p == nil {
				p = &replay{jid: j, label: r.Label}
				byLabel[r.Label] = p
			}
			p.last, p.entry, p.n = r, idx, p.n+1
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
		if next != st.Size {
			return nil, nil, fmt.Errorf("%w: %d entries, the size says %d", ErrCorrupt, next, st.Size)
		}
		type moved struct {
			x [32]byte
			r *replay
		}
		var ms []moved
		for _, r := range byLabel {
			x, _ := s.Index(r.jid)
			ms = append(ms, moved{x, r})
		}
		slices.SortFunc(ms, func(a, b moved) int { return bytes.Compare(a.x[:], b.x[:]) })
		t := recordTime(now, st)
		m := new(keylog.Map)
		g := keylog.RecordV1{Kind: keylog.KindGenesis, VRFKey: s.vrf.Public().String(), Migrate: int64(len(ms)), Time: t, Map: keylog.MapEmpty}
		entries := []appended{{text: g.Marshal()}}
		mapRows := make([][]any, 0, len(ms))
		changes := make([]keylog.MapEntry, 0, len(ms))
		for i, mv := range ms {
			v := keylog.MapValue{Ended: mv.r.last.Kind != keylog.KindPublish, Fingerprint: mv.r.last.Fingerprint, Entry: mv.r.entry, Version: mv.r.n}
			m.Set(mv.x, v)
			rec := keylog.RecordV1{Kind: keylog.KindMigrate, Index: mv.x, Label: mv.r.label, Version: v.Version, Time: t, Map: m.Root()}
			at := st.Size + 1 + int64(i)
			entries = append(entries, appended{text: rec.Marshal(), key: mv.x[:]})
			mapRows = append(mapRows, []any{mv.x[:], v.Ended, v.Fingerprint[:], v.Entry, v.Version, at})
			changes = append(changes, keylog.MapEntry{Index: mv.x, Value: v})
		}
		next2 := TreeState{Genesis: st.Size, MapRoot: m.Root(), V1Time: t}
		if err := s.writeEntries(ctx, tx, st.Size, entries, next2); err != nil {
			return nil, nil, err
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"keydir_map"}, []string{"idx", "ended", "fingerprint", "entry", "version", "changed"}, pgx.CopyFromRows(mapRows)); err != nil {
			return nil, nil, fmt.Errorf("write map: %w", err)
		}
		labels = len(ms)
		// The map in memory starts from the rows, loaded on next use.
		s.m = nil
		return entries, changes, nil
	})
	if err != nil {
		return 0, fmt.Errorf("logdb: migrate: %w", err)
	}
	return labels, nil
}

// A Snapshot is what a lookup or history answer is built from, all read
// at one log size: the size, the head record (leaf Size-1, whose map line
// is MapRoot) and one entry per JID.
type Snapshot struct {
	Size    int64
	MapRoot [32]byte
	Head    []byte
	Entries []Entry
	// History (History only): the records of the JID's versions asked,
	// oldest first.
	History []HistoryRecord
}

// An Entry is one JID's answer: its map index and VRF proof, its value
// (nil: no leaf) with the map proof, and for a value the record of the
// entry that set it and, when bound, the key.
type Entry struct {
	JID      string
	Index    [32]byte
	VRFProof []byte
	Value    *keylog.MapValue
	MapProof keylog.MapProof
	Record   []byte // the text of leaf Value.Entry
	Key      []byte // DER, when bound
}

// A HistoryRecord is one version of a JID: the leaf that made it.
type HistoryRecord struct {
	Version int64
	Index   int64
	Record  []byte
}

// Lookup returns the answers for jids (canonical bare JIDs) at the log's
// current size.
func (s *Store) Lookup(ctx context.Context, jids []jid.JID) (*Snapshot, error) {
	snap, err := s.snapshot(ctx, jids, nil, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("logdb: lookup: %w", err)
	}
	return snap, nil
}

// History returns bare's answer, as Lookup would give it, and the records
// of its versions from (≥ 1) on, at most max of them, in one snapshot.
// A JID's versions are its log entries that published, reset or deleted
// a binding (v0 or v1), in log order.
func (s *Store) History(ctx context.Context, bare jid.JID, from int64, max int) (*Snapshot, error) {
	snap, err := s.snapshot(ctx, []jid.JID{bare}, &bare, from, max)
	if err != nil {
		return nil, fmt.Errorf("logdb: history: %w", err)
	}
	return snap, nil
}

func (s *Store) snapshot(ctx context.Context, jids []jid.JID, hist *jid.JID, from int64, max int) (*Snapshot, error) {
	snap := &Snapshot{Entries: make([]Entry, len(jids))}
	for i, j := range jids {
		x, p := s.Index(j)
		snap.Entries[i] = Entry{JID: j.String(), Index: x, VRFProof: p}
	}
	read := s.read
	caughtUp := false // the map was brought up to date in this lookup
	if hist == nil {
		read = func(ctx context.Context, snap *Snapshot, _ *jid.JID, _ int64, _ int) (bool, error) {
			return s.readFast(ctx, snap, caughtUp)
		}
	}
	for attempt := 0; ; attempt++ {
		stale, err := read(ctx, snap, hist, from, max)
		if err != nil || !stale {
			return snap, err
		}
		if attempt == 3 {
			return nil, errors.New("the log kept growing under the lookup")
		}
		// Another process appended: bring the map up to date.
		s.mu.Lock()
		err = s.catchUp(ctx)
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		caughtUp = true
	}
}

// catchUpSQL reads the size row and, in the same statement (one round
// trip, one snapshot), the map rows changed from $1 on, as parallel
// arrays in the order of their index.
const catchUpSQL = `SELECT t.size, t.genesis, t.map_root, t.v1_time,
	ARRAY(SELECT idx FROM keydir_map WHERE changed >= $1 AND changed < t.size ORDER BY idx),
	ARRAY(SELECT ended FROM keydir_map WHERE changed >= $1 AND changed < t.size ORDER BY idx),
	ARRAY(SELECT fingerprint FROM keydir_map WHERE changed >= $1 AND changed < t.size ORDER BY idx),
	ARRAY(SELECT entry FROM keydir_map WHERE changed >= $1 AND changed < t.size ORDER BY idx),
	ARRAY(SELECT version FROM keydir_map WHERE changed >= $1 AND changed < t.size ORDER BY idx)
	FROM keydir_tree t`

// catchUp brings the map in memory to the log's size: after another
// process appended, in one statement, with the rows changed since the
// map's size; the first time, or after the log shrank, by loading every
// row (syncMap, in a read-only transaction). The caller holds mu for
// writing.
func (s *Store) catchUp(ctx context.Context) error {
	full := func() error {
		return pgx.BeginTxFunc(ctx, s.db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			st, err := readTree(ctx, tx, false)
			if err != nil {
				return err
			}
			if st.Genesis < 0 {
				return ErrNotMigrated
			}
			return s.syncMap(ctx, tx, st)
		})
	}
	if s.m == nil {
		return full()
	}
	from := s.msize
	var (
		st                TreeState
		gen, t            *int64
		root              []byte
		xs, fps           [][]byte
		ended             []bool
		entries, versions []int64
	)
	err := s.db.QueryRow(ctx, catchUpSQL, from).Scan(&st.Size, &gen, &root, &t, &xs, &ended, &fps, &entries, &versions)
	if err != nil {
		return fmt.Errorf("read map: %w", err)
	}
	if gen == nil {
		return ErrNotMigrated
	}
	if len(root) != 32 || t == nil {
		return fmt.Errorf("%w: migrated log without a map root", ErrCorrupt)
	}
	st.Genesis, st.MapRoot, st.V1Time = *gen, [32]byte(root), *t
	if st.Size < from {
		return full() // the log shrank: syncMap starts over
	}
	n := len(xs)
	if len(ended) != n || len(fps) != n || len(entries) != n || len(versions) != n {
		return fmt.Errorf("%w: uneven map rows", ErrCorrupt)
	}
	changes := make([]keylog.MapEntry, n)
	for i := range n {
		if len(xs[i]) != 32 || len(fps[i]) != 32 || entries[i] < 0 || entries[i] >= st.Size || versions[i] < 1 {
			return fmt.Errorf("%w: malformed map row", ErrCorrupt)
		}
		changes[i] = keylog.MapEntry{Index: [32]byte(xs[i]), Value: keylog.MapValue{Ended: ended[i], Fingerprint: [32]byte(fps[i]), Entry: entries[i], Version: versions[i]}}
	}
	return s.applyMap(changes, false, st)
}

// lookupSQL reads the size row and, in the same statement (one round
// trip, one snapshot), the records at the indexes $1, the keys bound to
// the labels $2 with the index of the entry that bound each, and the
// stored hashes at the indexes $3.
const lookupSQL = `SELECT t.size, t.genesis, t.map_root, t.v1_time,
	ARRAY(SELECT idx FROM keydir_entries WHERE idx = ANY($1) ORDER BY idx),
	ARRAY(SELECT record FROM keydir_entries WHERE idx = ANY($1) ORDER BY idx),
	ARRAY(SELECT idx FROM keydir_bindings WHERE label = ANY($2) ORDER BY label),
	ARRAY(SELECT public_key FROM keydir_bindings WHERE label = ANY($2) ORDER BY label),
	ARRAY(SELECT idx FROM keydir_hashes WHERE idx = ANY($3) ORDER BY idx),
	ARRAY(SELECT hash FROM keydir_hashes WHERE idx = ANY($3) ORDER BY idx)
	FROM keydir_tree t`

// proofIndexes records the stored hash indexes tlog.ProveRecord asks
// for, answering zeros: what an inclusion proof at a size will read.
type proofIndexes []int64

func (p *proofIndexes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	*p = append(*p, indexes...)
	return make([]tlog.Hash, len(indexes)), nil
}

// missingHashes returns the stored hash indexes that the inclusion
// proofs of leaves in the tree of size need and ProofHashReader does not
// keep.
func (s *Store) missingHashes(size int64, leaves []int64) []int64 {
	var all proofIndexes
	var asked []int64 // leaves not known to have every hash kept
	for _, n := range leaves {
		if s.keptProofs.has(size, n) {
			continue
		}
		asked = append(asked, n)
		if _, err := tlog.ProveRecord(size, n, &all); err != nil {
			return nil // the proof will fail the same way when it is made
		}
	}
	var missing []int64
	for _, x := range all {
		if _, ok := s.hashes.get(x); !ok {
			missing = append(missing, x)
		}
	}
	if len(missing) == 0 {
		s.keptProofs.add(size, asked)
	}
	return missing
}

// keptProofs remembers the leaves whose inclusion proofs at one size
// found every hash kept, so that a lookup of them does not list the
// proofs' hash indexes again (a fifth of a lookup's work in clinkd once
// it sent no statement). It is a shortcut, not a promise: a hash cleared
// from the kept ones since is read when the proof is made
// (ProofHashReader), one statement more.
type keptProofs struct {
	mu     sync.Mutex
	size   int64
	leaves map[int64]struct{}
}

// maxKeptProofs bounds the leaves remembered (about 50 bytes each).
const maxKeptProofs = 4096

func (k *keptProofs) has(size, leaf int64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.leaves[leaf]
	return ok && k.size == size
}

func (k *keptProofs) forget() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.leaves = nil
}

func (k *keptProofs) add(size int64, leaves []int64) {
	if len(leaves) == 0 {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.size != size || k.leaves == nil || len(k.leaves)+len(leaves) > maxKeptProofs {
		k.size, k.leaves = size, make(map[int64]struct{}, len(leaves))
	}
	for _, n := range leaves {
		k.leaves[n] = struct{}{}
	}
}

// readFast fills snap (no history) in one round trip: it reads the size
// row, and in the same statement what the map in memory says the answer
// needs that is not kept from before (records and keys never change
// once written: a record by its index, a key by the index of the entry
// that bound it; and the hashes of the inclusion proofs at that size,
// for ProofHashReader). The size row makes the answer current: when the log
// has the size the map is at, the map is the log's (its root is checked
// against the row's) and the answer is complete; else stale reports that
// the map must catch up first. Nothing is kept that was not read at the
// size the answer is at.
//
// caughtUp says that the map was brought up to date during this lookup:
// its size was read after the lookup began, so an answer at that size is
// as fresh as one at the row's, and is given even when the log has grown
// again since (the row's root is then of another size, and not compared).
// Without it, a lookup while another clinkd kept appending faster than a
// read of the size row could be stale at every try and fail.
func (s *Store) readFast(ctx context.Context, snap *Snapshot, caughtUp bool) (stale bool, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.m == nil {
		return true, nil
	}
	size := s.msize
	var (
		need   []int64
		labels [][]byte
		leaves []int64 // proven: the head and the entries of values
		// What this lookup uses, taken from the kept records and keys
		// when it looks, or from the statement: another lookup may clear
		// what is kept (memo.put, full) before this one is done with it.
		records = map[int64][]byte{}
		keys    = map[int64][]byte{}
	)
	if size > 0 {
		leaves = append(leaves, size-1)
		if r, ok := s.records.get(size - 1); ok {
			records[size-1] = r
		} else {
			need = append(need, size-1)
		}
	}
	for i := range snap.Entries {
		e := &snap.Entries[i]
		e.Value, e.Record, e.Key = nil, nil, nil
		if v, ok := s.m.Get(e.Index); ok {
			e.Value = &v
			leaves = append(leaves, v.Entry)
			if r, ok := s.records.get(v.Entry); ok {
				records[v.Entry] = r
			} else {
				need = append(need, v.Entry)
			}
			if k, ok := s.keys.get(v.Entry); ok {
				keys[v.Entry] = k
			} else if !v.Ended {
				j, err := keylog.ParseBareJID(e.JID)
				if err != nil {
					return false, err
				}
				l := keylog.Label(j)
				labels = append(labels, l[:])
			}
		}
		e.MapProof = s.m.Prove(e.Index)
	}
	var (
		st          TreeState
		gen, t      *int64
		root        []byte
		recIdx      []int64
		recText     [][]byte
		keyIdx      []int64
		keyDER      [][]byte
		hashIdx     []int64
		hashes      [][]byte
		hashNeed    = s.missingHashes(size, leaves)
		readRecords = len(need) > 0 || len(labels) > 0 || len(hashNeed) > 0
	)
	// With the size lease held, no other writer's append can have
	// committed (lease.go): the map, read under mu, is the log.
	leased := !readRecords && s.lease.held()
	switch {
	case readRecords:
		s.sizeReadN.Add(1)
		err = s.db.QueryRow(ctx, lookupSQL, need, labels, hashNeed).Scan(&st.Size, &gen, &root, &t, &recIdx, &recText, &keyIdx, &keyDER, &hashIdx, &hashes)
	case leased:
		st.Size, st.MapRoot = size, s.m.Root()
	default:
		var row treeRow
		row, err = s.readSize(ctx)
		st.Size, gen, root, t = row.size, row.gen, row.mapRoot, row.t
	}
	if err != nil {
		return false, fmt.Errorf("read log size: %w", err)
	}
	if !leased {
		if gen == nil {
			return false, ErrNotMigrated
		}
		if len(root) != 32 || t == nil {
			return false, fmt.Errorf("%w: migrated log without a map root", ErrCorrupt)
		}
		st.Genesis, st.MapRoot, st.V1Time = *gen, [32]byte(root), *t
	}
	switch {
	case st.Size == size:
		if s.m.Root() != st.MapRoot {
			return false, fmt.Errorf("%w: the map in memory has root %x at size %d, the log names %x", ErrCorrupt, s.m.Root(), st.Size, st.MapRoot)
		}
	case caughtUp && st.Size > size:
		st.Size, st.MapRoot = size, s.m.Root()
	default:
		return true, nil
	}
	if len(recIdx) != len(recText) || len(keyIdx) != len(keyDER) || len(hashIdx) != len(hashes) {
		return false, fmt.Errorf("%w: uneven rows", ErrCorrupt)
	}
	for i, x := range hashIdx {
		// Checked where they are used: a proof made from them is checked
		// against the checkpoint, and made from the database again if
		// that fails.
		if len(hashes[i]) == tlog.HashSize {
			s.hashes.put(x, tlog.Hash(hashes[i]))
		}
	}
	for i, idx := range recIdx {
		if idx >= 0 && idx < size {
			r := bytes.Clone(recText[i])
			records[idx] = r
			s.records.put(idx, r)
		}
	}
	snap.Size, snap.MapRoot = st.Size, st.MapRoot
	var ok bool
	if snap.Head, ok = records[size-1]; !ok {
		return false, fmt.Errorf("%w: the head record %d is missing", ErrCorrupt, size-1)
	}
	for i := range snap.Entries {
		e := &snap.Entries[i]
		if e.Value == nil {
			continue
		}
		if e.Record, ok = records[e.Value.Entry]; !ok {
			return false, fmt.Errorf("%w: record %d is missing", ErrCorrupt, e.Value.Entry)
		}
		if e.Value.Ended {
			continue
		}
		if e.Key, ok = keys[e.Value.Entry]; ok {
			continue
		}
		for j, idx := range keyIdx {
			if idx == e.Value.Entry {
				e.Key = keyDER[j]
			}
		}
		if e.Key == nil || keylog.Fingerprint(e.Key) != e.Value.Fingerprint {
			return false, fmt.Errorf("%w: the map binds %s to a key the bindings do not hold", ErrCorrupt, e.JID)
		}
		e.Key = bytes.Clone(e.Key)
		s.keys.put(e.Value.Entry, e.Key)
	}
	return false, nil
}

// read fills snap in one read-only snapshot of the database, with the map
// in memory; stale reports that the map is not at the snapshot's size.
func (s *Store) read(ctx context.Context, snap *Snapshot, hist *jid.JID, from int64, max int) (stale bool, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	err = pgx.BeginTxFunc(ctx, s.db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		st, err := readTree(ctx, tx, false)
		if err != nil {
			return err
		}
		if st.Genesis < 0 {
			return ErrNotMigrated
		}
		if s.m == nil || s.msize != st.Size {
			stale = true
			return nil
		}
		if s.m.Root() != st.MapRoot {
			return fmt.Errorf("%w: the map in memory has root %x at size %d, the log names %x", ErrCorrupt, s.m.Root(), st.Size, st.MapRoot)
		}
		snap.Size, snap.MapRoot = st.Size, st.MapRoot
		need := []int64{st.Size - 1}
		var labels [][]byte
		for i := range snap.Entries {
			e := &snap.Entries[i]
			if v, ok := s.m.Get(e.Index); ok {
				e.Value = &v
				need = append(need, v.Entry)
				if !v.Ended {
					j, _ := keylog.ParseBareJID(e.JID)
					l := keylog.Label(j)
					labels = append(labels, l[:])
				}
			}
			e.MapProof = s.m.Prove(e.Index)
		}
		recs := map[int64][]byte{}
		rows, err := tx.Query(ctx, `SELECT idx, record FROM keydir_entries WHERE idx = ANY($1)`, need)
		if err != nil {
			return err
		}
		var (
			idx  int64
			text []byte
		)
		if _, err := pgx.ForEachRow(rows, []any{&idx, &text}, func() error { recs[idx] = bytes.Clone(text); return nil }); err != nil {
			return err
		}
		keys := map[string][]byte{}
		if len(labels) > 0 {
			rows, err := tx.Query(ctx, `SELECT jid, public_key, fingerprint, idx FROM keydir_bindings WHERE label = ANY($1)`, labels)
			if err != nil {
				return err
			}
			var (
				who     string
				der, fp []byte
			)
			_, err = pgx.ForEachRow(rows, []any{&who, &der, &fp, &idx}, func() error {
				if keylog.Fingerprint(der) != [32]byte(fp) {
					return fmt.Errorf("%w: the key bound to a JID does not have its fingerprint", ErrCorrupt)
				}
				keys[who] = bytes.Clone(der)
				return nil
			})
			if err != nil {
				return err
			}
		}
		if snap.Head = recs[st.Size-1]; snap.Head == nil {
			return fmt.Errorf("%w: the head record %d is missing", ErrCorrupt, st.Size-1)
		}
		for i := range snap.Entries {
			e := &snap.Entries[i]
			if e.Value == nil {
				continue
			}
			if e.Record = recs[e.Value.Entry]; e.Record == nil {
				return fmt.Errorf("%w: record %d is missing", ErrCorrupt, e.Value.Entry)
			}
			if !e.Value.Ended {
				if e.Key = keys[e.JID]; e.Key == nil || keylog.Fingerprint(e.Key) != e.Value.Fingerprint {
					return fmt.Errorf("%w: the map binds %s to a key the bindings do not hold", ErrCorrupt, e.JID)
				}
			}
		}
		if hist != nil {
			rows, err := tx.Query(ctx, `SELECT e.idx, e.record FROM keydir_events ev JOIN keydir_entries e USING (idx)
				WHERE ev.jid = $1 AND e.idx < $2 ORDER BY e.idx OFFSET $3 LIMIT $4`, hist.String(), st.Size, from-1, max)
			if err != nil {
				return err
			}
			v := from
			snap.History = nil
			_, err = pgx.ForEachRow(rows, []any{&idx, &text}, func() error {
				snap.History = append(snap.History, HistoryRecord{Version: v, Index: idx, Record: bytes.Clone(text)})
				v++
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return stale, err
}

// An Event is the operator-side account of one log entry.
type Event struct {
	Index  int64
	JID    string
	Kind   keylog.Kind
	Reason string
	At     time.Time
}

// Events returns the operator-side events of bare, oldest first.
func (s *Store) Events(ctx context.Context, bare jid.JID) ([]Event, error) {
	rows, err := s.db.Query(ctx, `SELECT idx, jid, kind, reason, at FROM keydir_events WHERE jid = $1 ORDER BY idx`, bare.String())
	if err != nil {
		return nil, fmt.Errorf("logdb: events: %w", err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		var k string
		err := r.Scan(&e.Index, &e.JID, &k, &e.Reason, &e.At)
		e.Kind = keylog.Kind(k)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("logdb: events: %w", err)
	}
	return evs, nil
}
