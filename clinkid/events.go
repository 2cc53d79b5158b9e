package clinkid

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Account events: what the XMPP servers must hear about an account. Each
// is written in the transaction that makes the change, so a change and its
// event are never apart.
const (
	EventRegistered      = "registered"       // a name now has an account
	EventDeleted         = "deleted"          // the account is gone: end its sessions, drop what the server keeps for it
	EventPasswordChanged = "password_changed" // end its sessions: devices log in again with the new password or their token
)

// Event is one account event, in order (Seq).
type Event struct {
	Seq  int64  `json:"seq"`
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// EventBatch is what /clinkid/v1/bridge/events answers.
type EventBatch struct {
	Events []Event `json:"events"`
	// Last is the cursor to ask from next time.
	Last int64 `json:"last"`
	// Gap is set when events after the cursor asked from were already
	// swept (eventRetention) or the cursor is not this database's: the
	// reader must re-check what it holds (every connected account).
	Gap bool `json:"gap"`
}

// eventLock serialises the writers of clinkid_events until they commit
// (pg_advisory_xact_lock), so events become visible in the order of their
// sequence numbers and a reader never skips one that commits late.
const eventLock = 0x636c696e6b6964 // "clinkid"

// addEvent records an account event in tx.
func addEvent(ctx context.Context, tx pgx.Tx, name, kind string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(eventLock)); err != nil {
		return fmt.Errorf("clinkid: %s event for %s: %w", kind, name, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO clinkid_events (name, kind) VALUES ($1, $2)`, name, kind); err != nil {
		return fmt.Errorf("clinkid: %s event for %s: %w", kind, name, err)
	}
	return nil
}

// eventAdded counts a committed event and wakes Run.
func (s *Service) eventAdded(kind string) {
	s.m.events.WithLabelValues(kind).Inc()
	select {
	case s.wakeup <- struct{}{}:
	default:
	}
}

// maxEventBatch bounds one answer of Events.
const maxEventBatch = 500

// Events returns the events after cursor after, oldest first, at most
// maxEventBatch; with from false it returns none and the current cursor
// (a reader starting afresh holds nothing to correct).
func (s *Service) Events(ctx context.Context, after int64, from bool) (EventBatch, error) {
	var lo, hi int64
	if err := s.db.QueryRow(ctx, `SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM clinkid_events`).Scan(&lo, &hi); err != nil {
		return EventBatch{}, fmt.Errorf("clinkid: events: %w", err)
	}
	b := EventBatch{Events: []Event{}, Last: hi}
	if !from {
		return b, nil
	}
	if after > hi || (lo > 0 && after < lo-1) {
		b.Gap = true
		if after > hi {
			return b, nil
		}
	}
	rows, err := s.db.Query(ctx, `SELECT seq, name, kind FROM clinkid_events WHERE seq > $1 ORDER BY seq LIMIT $2`, after, maxEventBatch)
	if err != nil {
		return EventBatch{}, fmt.Errorf("clinkid: events: %w", err)
	}
	b.Events, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Event])
	if err != nil {
		return EventBatch{}, fmt.Errorf("clinkid: events: %w", err)
	}
	if n := len(b.Events); n > 0 {
		b.Last = b.Events[n-1].Seq
	} else {
		b.Last = max(after, b.Last)
	}
	return b, nil
}

// SessionEnder ends the XMPP sessions of accounts on a server that clinkd
// tells (ejabberd, through its HTTP API). Prosody's module asks for the
// events itself (/clinkid/v1/bridge/events).
type SessionEnder interface {
	// AccountDeleted ends the sessions of the deleted account name and
	// drops what the server keeps for it.
	AccountDeleted(ctx context.Context, name string) error
	// PasswordChanged ends the sessions of name.
	PasswordChanged(ctx context.Context, name string) error
	// Consumer names the server, for the cursor kept in the database.
	Consumer() string
}

// PulledOnly is the SessionEnder of a clinkd that tells no server:
// Prosody's module pulls the events, and `clinkd extauth` changes no
// account.
type PulledOnly struct{}

func (PulledOnly) AccountDeleted(context.Context, string) error  { return nil }
func (PulledOnly) PasswordChanged(context.Context, string) error { return nil }
func (PulledOnly) Consumer() string                              { return "" }

// EjabberdAPI ends sessions through ejabberd's HTTP API (mod_http_api):
// `unregister` for a deleted account (ejabberd 23.01 runs its remove_user
// hook whatever the auth backend answers: every session is closed with
// "User removed", and the roster, offline messages, archive and vCard the
// server kept go; the account itself was ClinkID's, and extauth refuses
// to remove it), and `kick_user` for a changed password (every session is
// closed with policy-violation "has been kicked"). The API needs a
// permission for these two commands only (docs/clinkid.md).
type EjabberdAPI struct {
	URL    string       // the API's base, e.g. http://127.0.0.1:5281/api
	Host   string       // the XMPP domain of the accounts
	Client *http.Client // nil: a client with a 10 s timeout
}

// ParseEjabberdAPI checks an API base URL: http or https, a host, no
// credentials in it (they would end up in logs).
func ParseEjabberdAPI(raw, host string) (EjabberdAPI, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return EjabberdAPI{}, errors.New("clinkid: ejabberd_api_url must be an http:// or https:// URL with a host and no credentials or query")
	}
	return EjabberdAPI{URL: strings.TrimSuffix(u.String(), "/"), Host: host}, nil
}

func (a EjabberdAPI) AccountDeleted(ctx context.Context, name string) error {
	return a.call(ctx, "unregister", name)
}

func (a EjabberdAPI) PasswordChanged(ctx context.Context, name string) error {
	return a.call(ctx, "kick_user", name)
}

func (a EjabberdAPI) Consumer() string { return "ejabberd" }

func (a EjabberdAPI) call(ctx context.Context, cmd, name string) error {
	body, _ := json.Marshal(map[string]string{"user": name, "host": a.Host})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL+"/"+cmd, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("clinkid: ejabberd %s %s: %w", cmd, name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	hc := a.Client
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("clinkid: ejabberd %s %s: %w", cmd, name, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("clinkid: ejabberd %s %s: %s: %s", cmd, name, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// pushInterval is how often Run looks for events it could not push yet;
// a new event wakes it at once.
const pushInterval = 5 * time.Second

// Run pushes account events to Config.Sessions until ctx ends: each
// deletion and password change, in order, at least once (a failed call is
// retried every pushInterval, later events wait behind it, and the
// cursor lives in the database, so a restart resumes). With PulledOnly it
// only waits for ctx.
func (s *Service) Run(ctx context.Context) error {
	consumer := s.cfg.Sessions.Consumer()
	if consumer == "" {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(pushInterval)
	defer t.Stop()
	for {
		if err := s.push(ctx, consumer); err != nil && ctx.Err() == nil {
			s.log.Warn("clinkid: could not tell the XMPP server of account changes; retrying", "server", consumer, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.wakeup:
		case <-t.C:
		}
	}
}

// push delivers the events after consumer's cursor.
func (s *Service) push(ctx context.Context, consumer string) error {
	var cursor int64
	err := s.db.QueryRow(ctx, `SELECT seq FROM clinkid_event_cursors WHERE consumer = $1`, consumer).Scan(&cursor)
	if errors.Is(err, pgx.ErrNoRows) {
		// A consumer new to this database starts now: what happened
		// before it was configured is not replayed.
		if err := s.db.QueryRow(ctx, `INSERT INTO clinkid_event_cursors (consumer, seq)
			SELECT $1, coalesce(max(seq), 0) FROM clinkid_events
			ON CONFLICT (consumer) DO UPDATE SET seq = clinkid_event_cursors.seq RETURNING seq`, consumer).Scan(&cursor); err != nil {
			return fmt.Errorf("clinkid: event cursor of %s: %w", consumer, err)
		}
	} else if err != nil {
		return fmt.Errorf("clinkid: event cursor of %s: %w", consumer, err)
	}
	for {
		b, err := s.Events(ctx, cursor, true)
		if err != nil {
			return err
		}
		for _, ev := range b.Events {
			var err error
			switch ev.Kind {
			case EventDeleted:
				err = s.cfg.Sessions.AccountDeleted(ctx, ev.Name)
			case EventPasswordChanged:
				err = s.cfg.Sessions.PasswordChanged(ctx, ev.Name)
			default:
				continue
			}
			if err != nil {
				s.m.sessionEnds.WithLabelValues("error").Inc()
				return err
			}
			s.m.sessionEnds.WithLabelValues("ok").Inc()
			s.log.Info("clinkid: XMPP server told of an account change", "server", consumer, "account", s.jidOf(ev.Name), "event", ev.Kind)
			if _, err := s.db.Exec(ctx, `UPDATE clinkid_event_cursors SET seq = greatest(seq, $2) WHERE consumer = $1`, consumer, ev.Seq); err != nil {
				return fmt.Errorf("clinkid: event cursor of %s: %w", consumer, err)
			}
		}
		if b.Last > cursor {
			if _, err := s.db.Exec(ctx, `UPDATE clinkid_event_cursors SET seq = greatest(seq, $2) WHERE consumer = $1`, consumer, b.Last); err != nil {
				return fmt.Errorf("clinkid: event cursor of %s: %w", consumer, err)
			}
		}
		if len(b.Events) < maxEventBatch {
			return nil
		}
		cursor = b.Last
	}
}
