package logdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Size leases (docs/keydir.md, "Size leases"; migration 0003_lease.sql).
//
// A lookup must be answered at a size that is at least that of every
// append that ended before the lookup began, whichever clinkd made it.
// Without a lease, a lookup reads the size row for that (one round trip
// to PostgreSQL, the larger part of a lookup's cost in clinkd). With one,
// the store knows that no other writer's append can commit: the database
// makes every change to the size row wait, under a gate that renewals
// cannot pass, until every other lease has ended. So while its lease runs,
// the store's map in memory (kept current by its own appends) is the log,
// and lookups of what it keeps need no statement at all.
//
// The invariant: the store trusts its lease until start + ttl − ttl/5,
// where start is its own clock's reading before the renewal was sent;
// the database's lease ends at its clock's reading when the renewal ran,
// plus ttl, which is later unless the database's clock steps forward by
// more than ttl/5 within a lease. A writer gives notice on leaseChannel
// before it waits at the gate, and holders give their leases up at once,
// so that a write waits milliseconds, not a lease; nothing depends on the
// notice arriving.

// leaseChannel is the LISTEN/NOTIFY channel of writers' notices; the
// payload is the writer's instance, empty for a store without a lease.
const leaseChannel = "keydir_size_lease"

// lease is a Store's size lease.
type lease struct {
	ttl      time.Duration // 0: no lease
	instance string        // random, names the lease in keydir_leases
	born     time.Time     // the origin of until and paused (monotonic)

	until   atomic.Int64 // ns since born the lease is trusted until; 0: not held
	notices atomic.Int64 // other writers' notices heard
	paused  atomic.Int64 // ns since born before which no renewal is sent
}

// start names the lease and sets its duration; ttl 0 leaves the store
// without one.
func (l *lease) start(ttl time.Duration) error {
	if ttl == 0 {
		return nil
	}
	if ttl < 10*time.Millisecond || ttl > time.Minute {
		return fmt.Errorf("logdb: a size lease runs 10 ms to 1 min, not %v", ttl)
	}
	b := make([]byte, 16)
	rand.Read(b)
	l.ttl, l.instance, l.born = ttl, hex.EncodeToString(b), time.Now()
	return nil
}

func (l *lease) now() int64 { return int64(time.Since(l.born)) }

// held reports whether the lease is trusted now. A caller that read the
// map under mu before asking answers at a moment the lease ran.
func (l *lease) held() bool {
	u := l.until.Load()
	return u != 0 && l.now() < u
}

// drop stops trusting the lease, before anything tells the database.
func (l *lease) drop() { l.until.Store(0) }

// Leased reports whether the store holds its size lease now (HoldLease).
func (s *Store) Leased() bool { return s.lease.held() }

// HoldLease holds the store's size lease (Config.SizeLease) until ctx
// ends, renewing it three times per lease, and gives it up then. Lookups
// read the size row as before whenever the lease is not held: before the
// first renewal, after a failed one, and while another writer appends.
// It returns nil at once for a store without a lease.
func (s *Store) HoldLease(ctx context.Context) error {
	l := &s.lease
	if l.ttl == 0 {
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.listenNotices(ctx)
	}()
	defer func() {
		<-done
		l.drop()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := s.db.Exec(ctx, `DELETE FROM keydir_leases WHERE instance = $1`, l.instance); err != nil {
			s.log.Warn("keydir: size lease: give up", "err", err)
		}
	}()
	every := l.ttl / 3
	failing := false
	for {
		if l.now() >= l.paused.Load() {
			err := s.renewLease(ctx)
			switch {
			case err != nil && ctx.Err() == nil && !failing:
				s.log.Warn("keydir: size lease not renewed; lookups read the size row until it is", "err", err)
				failing = true
			case err == nil && failing:
				s.log.Info("keydir: size lease renewed again")
				failing = false
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// renewLease renews the lease and trusts it if the map in memory is at
// the size the renewal read (after catching up if it is behind).
func (s *Store) renewLease(ctx context.Context) error {
	l := &s.lease
	notices := l.notices.Load()
	start := l.now()
	var (
		size, gen, t *int64
		root         []byte
	)
	err := s.db.QueryRow(ctx, `SELECT size, genesis, map_root, v1_time FROM keydir_renew_lease($1, $2)`,
		l.instance, l.ttl.Milliseconds()).Scan(&size, &gen, &root, &t)
	if err != nil {
		l.drop()
		return fmt.Errorf("logdb: renew size lease: %w", err)
	}
	deadline := start + int64(l.ttl-l.ttl/5)
	if l.notices.Load() != notices {
		// A writer gave notice while the renewal ran: give the lease up
		// again rather than make it wait for this one.
		l.drop()
		return s.surrender(ctx)
	}
	if size == nil || gen == nil || t == nil || len(root) != 32 {
		l.drop()
		return nil // not a v1 log (yet): nothing to answer from memory
	}
	current := func() bool {
		return s.m != nil && s.msize == *size && s.m.Root() == [32]byte(root)
	}
	s.mu.RLock()
	ok, loaded := current(), s.m != nil
	if ok {
		l.trust(deadline, notices)
	}
	s.mu.RUnlock()
	if ok || !loaded {
		return nil
	}
	// Behind (another clinkd appended before the renewal): catch up; no
	// other writer's append can commit before the lease ends.
	s.mu.Lock()
	defer s.mu.Unlock()
	if !current() && s.msize < *size {
		if err := s.catchUp(ctx); err != nil {
			l.drop()
			return fmt.Errorf("logdb: size lease: %w", err)
		}
	}
	if current() {
		l.trust(deadline, notices)
	}
	return nil
}

// trust trusts the lease until deadline, unless a notice came since the
// renewal began (notices then). A notice is counted before the listener
// drops the lease and then ends it in the database (listenNotices), and
// trust stores the deadline before it looks at the count: so either it
// sees the notice and drops the lease itself, or the listener's drop
// comes after its store. Either way the lease is not trusted once the
// writer can pass the gate.
func (l *lease) trust(deadline, notices int64) {
	l.until.Store(deadline)
	if l.notices.Load() != notices {
		l.drop()
	}
}

// surrender ends the lease in the database now: a writer waiting at the
// gate goes on.
func (s *Store) surrender(ctx context.Context) error {
	_, err := s.db.Exec(ctx, `UPDATE keydir_leases SET expires = least(expires, clock_timestamp()) WHERE instance = $1`, s.lease.instance)
	if err != nil {
		return fmt.Errorf("logdb: give up size lease: %w", err)
	}
	return nil
}

// listenNotices gives the lease up whenever another writer gives notice,
// and pauses renewals for half a lease so that the writer passes the gate
// before the next one. It listens on a connection of its own, opened
// again after a failure; without it, writers wait for leases to end.
func (s *Store) listenNotices(ctx context.Context) {
	l := &s.lease
	for ctx.Err() == nil {
		err := s.listen(ctx, func(writer string) {
			if writer == l.instance {
				return
			}
			// In this order (lease.trust): count, drop, then end it.
			l.notices.Add(1)
			l.drop()
			l.paused.Store(l.now() + int64(l.ttl/2))
			if err := s.surrender(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("keydir: size lease", "err", err)
			}
		})
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("keydir: size lease: not listening for writers' notices; a write elsewhere waits for the lease to end", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Store) listen(ctx context.Context, notice func(writer string)) error {
	// A connection of the pool's making (its credentials, its hooks),
	// taken out of it for good: a LISTENing connection is no use to
	// others.
	pc, err := s.db.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	conn := pc.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `LISTEN `+leaseChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		notice(n.Payload)
	}
}

// passGate gives notice to lease holders and waits at the gate until no
// other lease runs (keydir_lease_gate). tx holds the size row; the caller
// is about to change it.
func (s *Store) passGate(ctx context.Context, tx pgx.Tx) error {
	// The notice is sent on another connection, so that it is delivered
	// now, not when tx commits.
	if _, err := s.db.Exec(ctx, `SELECT pg_notify($1, $2)`, leaseChannel, s.lease.instance); err != nil {
		return fmt.Errorf("notify lease holders: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT keydir_lease_gate($1)`, s.lease.instance); err != nil {
		return fmt.Errorf("lease gate: %w", err)
	}
	return nil
}
