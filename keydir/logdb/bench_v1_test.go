package logdb_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/tlog"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/clinkdtest/keydirtest"
	"github.com/clinkme/clinkd/keydir"
	"github.com/clinkme/clinkd/keydir/logdb"
	"github.com/clinkme/clinkd/keylog"
)

// BenchmarkMapLoad1M: a store's first lookup of a log whose map holds
// 1,000,000 indices (reading the keydir_map rows and building the tree in
// memory), then warm lookups (an absence proved from the tree), against,
// in the same run, a full scan of those rows (SELECT count(*)) and COPYing
// them in.
//
//	go test -run '^$' -bench MapLoad1M -benchtime 1x -timeout 30m ./keydir/logdb/
func BenchmarkMapLoad1M(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	const n = 1_000_000
	l := keydirtest.NewUnstarted(b, keydir.Config{})
	// A log of 2 entries whose map holds n indices: the foreign keys to
	// the entries are dropped for the benchmark, which only loads the map.
	for _, q := range []string{`ALTER TABLE keydir_map DROP CONSTRAINT keydir_map_entry_fkey`, `ALTER TABLE keydir_map DROP CONSTRAINT keydir_map_changed_fkey`} {
		if _, err := l.DB.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	entries := make([]keylog.MapEntry, n)
	rows := make([][]any, n)
	for i := range entries {
		rand.Read(entries[i].Index[:])
		entries[i].Value = keylog.MapValue{Entry: 0, Version: 1}
		rows[i] = []any{entries[i].Index[:], false, entries[i].Value.Fingerprint[:], int64(0), int64(1), int64(0)}
	}
	m, err := keylog.BuildMap(entries)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if _, err := l.DB.CopyFrom(ctx, pgx.Identifier{"keydir_map"}, []string{"idx", "ended", "fingerprint", "entry", "version", "changed"}, pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	copyDur := time.Since(t0)
	head := keylog.RecordV1{Kind: keylog.KindTick, Time: 1795636800, Map: m.Root()}.Marshal()
	if _, err := l.DB.Exec(ctx, `INSERT INTO keydir_entries (idx, record) VALUES (0, 'x'), (1, $1)`, head); err != nil {
		b.Fatal(err)
	}
	mroot := m.Root()
	if _, err := l.DB.Exec(ctx, `UPDATE keydir_tree SET size = 2, genesis = 0, map_root = $1, v1_time = 1795636800`, mroot[:]); err != nil {
		b.Fatal(err)
	}
	nobody := keydirtest.MustJID(b, "nobody@lab.localhost")
	for b.Loop() {
		store, err := logdb.New(logdb.Config{DB: l.DB, Log: slog.New(slog.DiscardHandler), VRF: l.VRF})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		snap, err := store.Lookup(ctx, []jid.JID{nobody})
		cold := time.Since(t0)
		if err != nil || snap.Entries[0].Value != nil || keylog.VerifyMap(snap.MapRoot, snap.Entries[0].Index, nil, snap.Entries[0].MapProof) != nil {
			b.Fatalf("cold lookup = %+v, %v", snap, err)
		}
		t0 = time.Now()
		const warm = 1000
		for range warm {
			if _, err := store.Lookup(ctx, []jid.JID{nobody}); err != nil {
				b.Fatal(err)
			}
		}
		warmDur := time.Since(t0) / warm
		t0 = time.Now()
		var count int64
		if err := l.DB.QueryRow(ctx, `SELECT count(*) FROM keydir_map`).Scan(&count); err != nil || count != n {
			b.Fatal(err)
		}
		scan := time.Since(t0)
		b.ReportMetric(cold.Seconds(), "first-lookup-load-1M-s")
		b.ReportMetric(float64(warmDur.Microseconds()), "warm-lookup-µs")
		b.ReportMetric(scan.Seconds(), "count-scan-s")
		b.ReportMetric(copyDur.Seconds(), "copy-1M-rows-s")
		b.ReportMetric(cold.Seconds()/scan.Seconds(), "load/scan")
	}
}

// BenchmarkPublish: a v1 publish through the store (VRF index, map read
// and update, entry, hashes, event, binding and map row in one
// transaction) against, in the same run, the v0 publish transaction
// (entry, hashes, event, binding, size), replayed here on a v0 log of
// its own, and the signer's state-file write (temporary file, fsync,
// rename, fsync of the directory), which a checkpoint of a new size
// costs once.
//
//	go test -run '^$' -bench 'Publish$' -benchtime 1x -timeout 30m ./keydir/logdb/
func BenchmarkPublish(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	const rounds = 500
	v1 := keydirtest.New(b, keydir.Config{})
	v0 := keydirtest.NewUnstarted(b, keydir.Config{})
	keys := make([][]byte, rounds)
	for i := range keys {
		keys[i] = keydirtest.FakeRSAKey(b, 3072)
	}
	state := b.TempDir() + "/state"
	msg, _ := keylog.SignCheckpoint(keylog.Checkpoint{Origin: keydirtest.Origin, Size: 1}, v1.Signer)
	for b.Loop() {
		t0 := time.Now()
		for i := range rounds {
			if _, _, err := v1.Store.Publish(ctx, keydirtest.MustJID(b, fmt.Sprintf("p%d@lab.localhost", i)), keys[i], time.Now()); err != nil {
				b.Fatal(err)
			}
		}
		pub1 := time.Since(t0) / rounds
		t0 = time.Now()
		for i := range rounds {
			if err := v0Publish(ctx, v0.DB, keydirtest.MustJID(b, fmt.Sprintf("p%d@lab.localhost", i)), keys[i]); err != nil {
				b.Fatal(err)
			}
		}
		pub0 := time.Since(t0) / rounds
		t0 = time.Now()
		for range rounds {
			if err := keydir.WriteState(state, msg); err != nil {
				b.Fatal(err)
			}
		}
		st := time.Since(t0) / rounds
		b.ReportMetric(float64(pub1.Microseconds()), "publish-v1-µs")
		b.ReportMetric(float64(pub0.Microseconds()), "publish-v0-µs")
		b.ReportMetric(float64(st.Microseconds()), "state-write-µs")
		b.ReportMetric(float64(pub1)/float64(pub0), "v1/v0")
	}
}

// v0Publish is the publish transaction of clinkd before v1 (its
// logdb.Store.Publish and appendEntry), for the baseline.
func v0Publish(ctx context.Context, db *pgxpool.Pool, bare jid.JID, der []byte) error {
	return pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		var size int64
		if err := tx.QueryRow(ctx, `SELECT size FROM keydir_tree FOR UPDATE`).Scan(&size); err != nil {
			return err
		}
		label, fp := keylog.Label(bare), keylog.Fingerprint(der)
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM keydir_bindings WHERE label = $1`, label[:]).Scan(&n); err != nil {
			return err
		}
		rec := keylog.Record{Label: label, Kind: keylog.KindPublish, Fingerprint: fp, Time: time.Now().Unix()}
		text := rec.Marshal()
		hashes, err := tlog.StoredHashes(size, text, txHashes{ctx, tx})
		if err != nil {
			return err
		}
		first := tlog.StoredHashIndex(0, size)
		idxs, hs := make([]int64, len(hashes)), make([][]byte, len(hashes))
		for i := range hashes {
			idxs[i], hs[i] = first+int64(i), hashes[i][:]
		}
		batch := &pgx.Batch{}
		batch.Queue(`INSERT INTO keydir_entries (idx, label, record) VALUES ($1, $2, $3)`, size, label[:], text)
		batch.Queue(`INSERT INTO keydir_hashes (idx, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])`, idxs, hs)
		batch.Queue(`INSERT INTO keydir_events (idx, jid, kind, reason) VALUES ($1, $2, 'publish', '')`, size, bare.String())
		batch.Queue(`UPDATE keydir_tree SET size = $1`, size+1)
		batch.Queue(`INSERT INTO keydir_bindings (label, jid, public_key, fingerprint, idx, time) VALUES ($1, $2, $3, $4, $5, $6)`,
			label[:], bare.String(), der, fp[:], size, rec.Time)
		return tx.SendBatch(ctx, batch).Close()
	})
}

type txHashes struct {
	ctx context.Context
	tx  pgx.Tx
}

func (r txHashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	rows, err := r.tx.Query(r.ctx, `SELECT idx, hash FROM keydir_hashes WHERE idx = ANY($1)`, indexes)
	if err != nil {
		return nil, err
	}
	got := map[int64]tlog.Hash{}
	var (
		idx int64
		h   []byte
	)
	if _, err := pgx.ForEachRow(rows, []any{&idx, &h}, func() error { got[idx] = tlog.Hash(h); return nil }); err != nil {
		return nil, err
	}
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		out[i] = got[x]
	}
	return out, nil
}
