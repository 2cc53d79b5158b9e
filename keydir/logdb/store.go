// Package logdb keeps the key directory's log in PostgreSQL: the leaf
// records (keylog.Record), tlog's stored hashes, the binding in force for
// each label and the operator's account of each entry, in the tables its
// Migrations make (docs/keydir.md, "Tables"). Each append, a publish or the
// end of a binding, is one transaction under the lock of the log's size
// row, so appends are serialized and a failed one leaves the log as it
// was. What it reads back is checked against the invariants it relies on
// (ErrCorrupt otherwise), since proofs are built from it.
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
	// ErrConflict: the label already has a binding to another key.
	ErrConflict = errors.New("logdb: a different key is already bound")
	// ErrNoBinding: the label has no binding to end.
	ErrNoBinding = errors.New("logdb: no binding")
	// ErrCorrupt: what the database returned breaks an invariant (a
	// missing or malformed hash or record); the log needs an audit.
	ErrCorrupt = errors.New("logdb: log storage is inconsistent")
)

// A Binding is a label's key in force and the leaf that published it.
type Binding struct {
	JID         string // canonical bare JID
	Label       [32]byte
	Key         []byte // SubjectPublicKeyInfo DER
	Fingerprint [32]byte
	Index       int64 // leaf index of the publish entry
	Time        int64 // the entry's time
}

// Record returns the leaf record that published b.
func (b Binding) Record() keylog.Record {
	return keylog.Record{Label: b.Label, Kind: keylog.KindPublish, Fingerprint: b.Fingerprint, Time: b.Time}
}

// A Store keeps the log and the bindings in PostgreSQL.
type Store struct {
	db  *pgxpool.Pool
	log *slog.Logger
}

// Config is what a Store needs; every field is required.
type Config struct {
	// DB is a pool over the database whose schema Migrations made.
	DB *pgxpool.Pool
	// Log gets a line for every binding ended (see End).
	Log *slog.Logger
}

// New returns a store over cfg.DB.
func New(cfg Config) (*Store, error) {
	if cfg.DB == nil {
		return nil, errors.New("logdb: no database pool")
	}
	if cfg.Log == nil {
		return nil, errors.New("logdb: no logger: every binding ended is logged")
	}
	return &Store{db: cfg.DB, log: cfg.Log}, nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
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

// HashReader returns a tlog.HashReader for the stored hashes that uses ctx
// for its queries.
func (s *Store) HashReader(ctx context.Context) tlog.HashReader { return hashReader{ctx, s.db} }

// Size returns the number of leaves in the log.
func (s *Store) Size(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRow(ctx, `SELECT size FROM keydir_tree`).Scan(&n); err != nil {
		return 0, fmt.Errorf("logdb: read size: %w", err)
	}
	return n, nil
}

// ReadRecords returns the record texts of leaves [start, start+n).
func (s *Store) ReadRecords(ctx context.Context, start int64, n int) ([][]byte, error) {
	rows, err := s.db.Query(ctx, `SELECT idx, record FROM keydir_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx`, start, start+int64(n))
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

// Lookup returns the bindings in force for the labels (absent labels have
// none) and the log size read in the same statement, so every binding's
// index is below it.
func (s *Store) Lookup(ctx context.Context, labels [][32]byte) (map[[32]byte]Binding, int64, error) {
	ls := make([][]byte, len(labels))
	for i := range labels {
		ls[i] = labels[i][:]
	}
	rows, err := s.db.Query(ctx, `SELECT t.size, b.label, b.jid, b.public_key, b.fingerprint, b.idx, b.time
		FROM keydir_tree t LEFT JOIN keydir_bindings b ON b.label = ANY($1)`, ls)
	if err != nil {
		return nil, 0, fmt.Errorf("logdb: lookup: %w", err)
	}
	out := make(map[[32]byte]Binding, len(labels))
	var size int64
	for rows.Next() {
		var (
			label, key, fp []byte
			j              *string
			idx, t         *int64
		)
		if err := rows.Scan(&size, &label, &j, &key, &fp, &idx, &t); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("logdb: lookup: %w", err)
		}
		if j == nil {
			continue // no binding matched: the left join's lone row
		}
		if len(label) != 32 || len(fp) != 32 {
			rows.Close()
			return nil, 0, fmt.Errorf("%w: binding with a malformed label or fingerprint", ErrCorrupt)
		}
		out[[32]byte(label)] = Binding{JID: *j, Label: [32]byte(label), Key: key, Fingerprint: [32]byte(fp), Index: *idx, Time: *t}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("logdb: lookup: %w", err)
	}
	return out, size, nil
}

func (s *Store) binding(ctx context.Context, q pgx.Tx, label [32]byte) (Binding, bool, error) {
	var b Binding
	var fp []byte
	row := q.QueryRow(ctx, `SELECT jid, public_key, fingerprint, idx, time FROM keydir_bindings WHERE label = $1`, label[:])
	err := row.Scan(&b.JID, &b.Key, &fp, &b.Index, &b.Time)
	if errors.Is(err, pgx.ErrNoRows) {
		return Binding{}, false, nil
	}
	if err != nil {
		return Binding{}, false, err
	}
	if len(fp) != 32 {
		return Binding{}, false, fmt.Errorf("%w: binding with a malformed fingerprint", ErrCorrupt)
	}
	b.Label, b.Fingerprint = label, [32]byte(fp)
	return b, true, nil
}

// Publish binds bare to the key (SubjectPublicKeyInfo DER, already
// checked by keylog.ParsePublicKey). The first key wins: publishing the
// key in force again returns its binding with created false and writes
// nothing; another key gets ErrConflict.
//
// The entry, its hashes, the binding and the new size are written in one
// transaction under the size row's lock, so concurrent appends are
// serialized and a failure leaves the log as it was.
func (s *Store) Publish(ctx context.Context, bare jid.JID, der []byte, now time.Time) (b Binding, created bool, err error) {
	label, fp := keylog.Label(bare), keylog.Fingerprint(der)
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		size, err := lockTree(ctx, tx)
		if err != nil {
			return err
		}
		// Read under the lock: READ COMMITTED gives this statement a
		// snapshot taken after any appender before us committed.
		cur, ok, err := s.binding(ctx, tx, label)
		if err != nil {
			return err
		}
		if ok {
			if cur.Fingerprint != fp {
				return ErrConflict
			}
			b = cur
			return nil
		}
		rec := keylog.Record{Label: label, Kind: keylog.KindPublish, Fingerprint: fp, Time: now.Unix()}
		if err := appendEntry(ctx, tx, size, rec, bare.String(), ""); err != nil {
			return err
		}
		b = Binding{JID: bare.String(), Label: label, Key: der, Fingerprint: fp, Index: size, Time: rec.Time}
		if _, err := tx.Exec(ctx, `INSERT INTO keydir_bindings (label, jid, public_key, fingerprint, idx, time) VALUES ($1, $2, $3, $4, $5, $6)`,
			label[:], b.JID, der, fp[:], b.Index, b.Time); err != nil {
			return err
		}
		created = true
		return nil
	})
	if err != nil {
		return Binding{}, false, fmt.Errorf("logdb: publish %s: %w", bare, err)
	}
	return b, created, nil
}

// End ends the binding of bare (a bare JID, canonicalised by
// keylog.ParseBareJID) with an entry of kind keylog.KindReset (an
// operator: clinkd keys reset) or keylog.KindDelete (the account was
// deleted) that carries the ended key's fingerprint, and removes the
// binding, in one transaction. reason is kept in the database
// (keydir_events), not in the log. It returns the new entry's index, or
// an error wrapping keylog.ErrBadJID or ErrNoBinding.
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
	var idx int64
	err = pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		size, err := lockTree(ctx, tx)
		if err != nil {
			return err
		}
		cur, ok, err := s.binding(ctx, tx, label)
		if err != nil {
			return err
		}
		if !ok {
			return ErrNoBinding
		}
		if _, err := tx.Exec(ctx, `DELETE FROM keydir_bindings WHERE label = $1`, label[:]); err != nil {
			return err
		}
		idx = size
		return appendEntry(ctx, tx, size, keylog.Record{Label: label, Kind: kind, Fingerprint: cur.Fingerprint, Time: now.Unix()}, j.String(), reason)
	})
	if err != nil {
		return 0, fmt.Errorf("logdb: %s %s: %w", kind, j, err)
	}
	s.log.Info("keydir: binding ended", "kind", kind, "index", idx)
	return idx, nil
}

func lockTree(ctx context.Context, tx pgx.Tx) (int64, error) {
	var size int64
	if err := tx.QueryRow(ctx, `SELECT size FROM keydir_tree FOR UPDATE`).Scan(&size); err != nil {
		return 0, fmt.Errorf("lock log: %w", err)
	}
	return size, nil
}

// appendEntry writes leaf n (the current size) with its hashes and event,
// and makes the size n+1. The caller holds the size row's lock.
func appendEntry(ctx context.Context, tx pgx.Tx, n int64, rec keylog.Record, bare, reason string) error {
	text := rec.Marshal()
	hashes, err := tlog.StoredHashes(n, text, hashReader{ctx, tx})
	if err != nil {
		return fmt.Errorf("compute hashes: %w", err)
	}
	first := tlog.StoredHashIndex(0, n)
	idxs := make([]int64, len(hashes))
	hs := make([][]byte, len(hashes))
	for i := range hashes {
		idxs[i] = first + int64(i)
		hs[i] = hashes[i][:]
	}
	batch := &pgx.Batch{}
	batch.Queue(`INSERT INTO keydir_entries (idx, label, record) VALUES ($1, $2, $3)`, n, rec.Label[:], text)
	batch.Queue(`INSERT INTO keydir_hashes (idx, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])`, idxs, hs)
	batch.Queue(`INSERT INTO keydir_events (idx, jid, kind, reason) VALUES ($1, $2, $3, $4)`, n, bare, string(rec.Kind), reason)
	batch.Queue(`UPDATE keydir_tree SET size = $1`, n+1)
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("append leaf %d: %w", n, err)
	}
	return nil
}

// History returns the log entries of label, oldest first, at most max,
// and the log size read in the same statement.
func (s *Store) History(ctx context.Context, label [32]byte, max int) ([]keylog.Entry, int64, error) {
	rows, err := s.db.Query(ctx, `SELECT t.size, e.idx, e.record FROM keydir_tree t
		LEFT JOIN LATERAL (SELECT idx, record FROM keydir_entries WHERE label = $1 ORDER BY idx LIMIT $2) e ON true`, label[:], max)
	if err != nil {
		return nil, 0, fmt.Errorf("logdb: history: %w", err)
	}
	var (
		out  []keylog.Entry
		size int64
	)
	for rows.Next() {
		var (
			idx *int64
			rec []byte
		)
		if err := rows.Scan(&size, &idx, &rec); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("logdb: history: %w", err)
		}
		if idx == nil {
			continue
		}
		r, err := keylog.ParseRecord(rec)
		if err != nil || r.Label != label {
			rows.Close()
			return nil, 0, fmt.Errorf("%w: record %d: %v", ErrCorrupt, *idx, err)
		}
		out = append(out, keylog.Entry{Index: *idx, Record: r})
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("logdb: history: %w", err)
	}
	return out, size, nil
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
