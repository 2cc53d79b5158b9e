// Package receipts relays ordinary tracked messages (end-to-end envelopes
// without a validity period) and their delivery receipts (XEP-0184) and
// read markers (XEP-0333), and keeps their receipt state so that a
// sender's device can ask for it after reconnecting (docs/receipts.md).
//
// The envelope router (package dispatch) hands it each ordinary envelope
// (HandleOrdinary), already checked, and each receipt that is not for a
// timed message (HandleReceipt; package expiry owns those). An envelope is
// passed to the recipient as a chat message, which the server stores and
// archives as any other, and its state (message id, sender, recipient,
// timestamps; never content) is kept in PostgreSQL for a configurable
// retention. A receipt updates that state and is forwarded to every online
// device of the sender as a headline with no-store hints, so the server
// keeps no copy of it.
package receipts

import (
	"context"
	"embed"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptstate"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
	"github.com/clinkme/clinkd/internal/migrate"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations are the package's tables.
func Migrations() migrate.Set {
	sub, _ := fs.Sub(migrations, "migrations")
	return migrate.Set{Name: "receipts", FS: sub}
}

// Sender sends stanzas to the XMPP server (a *component.Component).
type Sender interface {
	SendMessage(ctx context.Context, m stanza.Message, payload ...any) error
}

// Devices knows the online devices of each user (a *dispatch.Devices).
type Devices interface {
	Online(user jid.JID) []jid.JID
}

// Config is what a Tracker needs. Component, DB, Send and Devices are
// required.
type Config struct {
	// Component is the component's domain, whose user addresses the
	// tracker sends from.
	Component jid.JID
	// DB holds the receipt state (the package's Migrations).
	DB      *pgxpool.Pool
	Send    Sender
	Devices Devices
	// Limits bound what is kept; Reload replaces them while clinkd runs.
	Limits Limits
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
	// Registerer, if set, gets the tracker's metrics.
	Registerer prometheus.Registerer
}

// Limits bound the receipt state kept. Zero values take the defaults in
// the comments.
type Limits struct {
	// Retention is how long the state of ordinary tracked messages is kept
	// (default 30 days).
	Retention time.Duration
	// PerSenderTracked bounds the tracked messages kept for one sender
	// (default 20,000): past it the oldest states are forgotten, so no
	// sender can grow the table without bound within the retention.
	PerSenderTracked int
}

func (l *Limits) setDefaults() {
	if l.Retention <= 0 {
		l.Retention = 30 * 24 * time.Hour
	}
	if l.PerSenderTracked <= 0 {
		l.PerSenderTracked = 20_000
	}
}

// Tracker is the receipts feature: the dispatch.Ordinary of clinkd.
type Tracker struct {
	cfg       Config
	limits    atomic.Pointer[Limits]
	log       *slog.Logger
	forwarded *prometheus.CounterVec
	trimmed   prometheus.Counter

	mu      sync.Mutex
	inserts map[string]int // per sender, since its rows were last trimmed
}

// trimEvery is how many tracked messages of one sender may be added
// between two trims of its rows: a sender exceeds PerSenderTracked by at
// most this many (a quarter of the bound, and never more than 64), and a
// trim's cost is spread over as many inserts.
func (t *Tracker) trimEvery() int { return max(1, min(64, t.limits.Load().PerSenderTracked/4)) }

// New checks cfg and returns a tracker.
func New(cfg Config) (*Tracker, error) {
	switch {
	case cfg.Component.Domainpart() == "":
		return nil, errors.New("receipts: no component domain")
	case cfg.DB == nil:
		return nil, errors.New("receipts: no database (ordinary messages are tracked in PostgreSQL)")
	case cfg.Send == nil || cfg.Devices == nil:
		return nil, errors.New("receipts: Send and Devices are required")
	}
	cfg.Limits.setDefaults()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	t := &Tracker{
		cfg: cfg, log: cfg.Log,
		inserts: make(map[string]int),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_receipts_forwarded_total",
			Help: "Receipts of ordinary tracked messages forwarded to senders' devices, by kind (received, displayed).",
		}, []string{"kind"}),
		trimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clinkd_receipts_trimmed_total",
			Help: "Tracked message states forgotten because their sender had more than receipts.per_sender_tracked.",
		}),
	}
	lim := cfg.Limits
	t.limits.Store(&lim)
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(t.forwarded, t.trimmed)
	}
	return t, nil
}

// Reload replaces the limits while the tracker runs.
func (t *Tracker) Reload(l Limits) {
	l.setDefaults()
	t.limits.Store(&l)
}

// Register routes the status query to t. Envelopes and receipts reach it
// through the envelope router (package dispatch).
func (t *Tracker) Register(c *component.Component) {
	c.HandleIQ(xml.Name{Space: receiptstate.NS, Local: "status"}, component.IQHandlerFunc(t.HandleStatus))
}

// HandleReceipt records a receipt or marker for an ordinary tracked
// message and forwards it to the sender's devices. A receipt for a message
// that is not tracked for this pair is dropped: the recipient may only mark
// messages sent to it.
func (t *Tracker) HandleReceipt(ctx context.Context, rc *dispatch.Receipt) error {
	col := "delivered_at"
	if rc.Kind == dispatch.Displayed {
		col = "displayed_at"
	}
	// coalesce keeps the first time.
	tag, err := t.cfg.DB.Exec(ctx, `UPDATE receipts_tracked SET `+col+` = coalesce(`+col+`, $4)
		WHERE sender = $1 AND id = $2 AND recipient = $3`, rc.Owner.String(), rc.ID, rc.Reader.String(), t.cfg.Now())
	if err != nil {
		return fmt.Errorf("receipts: record %s: %w", rc.Kind, err)
	}
	if tag.RowsAffected() == 0 {
		return nil // not a tracked message of this pair: nothing to pass on
	}
	from, err := address.AtComponent(rc.Reader, t.cfg.Component)
	if err != nil {
		return nil
	}
	payload := append(rc.Forwarded(), hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{})
	for _, d := range t.cfg.Devices.Online(rc.Owner) {
		if err := t.cfg.Send.SendMessage(ctx, stanza.Message{To: d, From: from, Type: stanza.HeadlineMessage},
			payload...); err != nil {
			t.log.Debug("receipts: forward failed", "err", err)
		}
	}
	t.forwarded.WithLabelValues(string(rc.Kind)).Inc()
	return nil
}

// HandleOrdinary records an ordinary message's receipt state and passes
// the envelope to the recipient as a normal chat message, which the server
// stores and archives as it does any other.
func (t *Tracker) HandleOrdinary(ctx context.Context, e *dispatch.Envelope) error {
	if _, err := t.cfg.DB.Exec(ctx, `INSERT INTO receipts_tracked (sender, id, recipient, sent_at)
		VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, e.Sender.String(), e.Body.ID, e.Recipient.String(), t.cfg.Now()); err != nil {
		return fmt.Errorf("receipts: track: %w", err)
	}
	if err := t.maybeTrim(ctx, e.Sender.String()); err != nil {
		return err
	}
	addr, err := address.AtComponent(e.Sender, t.cfg.Component)
	if err != nil {
		return err
	}
	return t.cfg.Send.SendMessage(ctx, stanza.Message{ID: e.Body.ID, To: e.Recipient, From: addr, Type: stanza.ChatMessage},
		e.Body, receiptsxml.Request{}, markers.Markable{})
}

// maybeTrim forgets the oldest tracked states of sender beyond
// PerSenderTracked, once every trimEvery() inserts (and at a sender's first
// insert since start, so a restart cannot reset the bound).
func (t *Tracker) maybeTrim(ctx context.Context, sender string) error {
	t.mu.Lock()
	n, known := t.inserts[sender]
	due := !known || n+1 >= t.trimEvery()
	if due {
		t.inserts[sender] = 0
	} else {
		t.inserts[sender] = n + 1
	}
	if len(t.inserts) > 100_000 {
		clear(t.inserts) // bounded memory: forgetting only trims sooner
	}
	t.mu.Unlock()
	if !due {
		return nil
	}
	tag, err := t.cfg.DB.Exec(ctx, `DELETE FROM receipts_tracked WHERE (sender, id, recipient) IN
		(SELECT sender, id, recipient FROM receipts_tracked WHERE sender = $1 ORDER BY sent_at DESC OFFSET $2)`, sender, t.limits.Load().PerSenderTracked)
	if err != nil {
		return fmt.Errorf("receipts: trim %s: %w", sender, err)
	}
	t.trimmed.Add(float64(tag.RowsAffected()))
	return nil
}

// HandleStatus answers a device's query for the state of messages its user
// sent: by id, or everything sent since a time (the latest 100).
func (t *Tracker) HandleStatus(ctx context.Context, iq *component.Stanza) (any, error) {
	if iq.Type != string(stanza.GetIQ) {
		return nil, component.BadRequest("the status query is an IQ get")
	}
	owner, err := address.User(iq.To)
	if err != nil || !iq.From.Bare().Equal(owner) {
		return nil, component.Error(stanza.Forbidden, "ask at your own address for the state of your own messages")
	}
	var q receiptstate.Status
	if err := iq.Decode(xml.Name{Space: receiptstate.NS, Local: "status"}, &q); err != nil {
		return nil, err
	}
	if len(q.Messages) > receiptstate.MaxIDs {
		return nil, component.Errorf(stanza.PolicyViolation, "at most %d messages per query", receiptstate.MaxIDs)
	}
	var rows pgx.Rows
	switch {
	case len(q.Messages) > 0:
		ids := make([]string, len(q.Messages))
		for i, m := range q.Messages {
			ids[i] = m.ID
		}
		rows, err = t.cfg.DB.Query(ctx, `SELECT id, recipient, sent_at, delivered_at, displayed_at FROM receipts_tracked
			WHERE sender = $1 AND id = ANY($2) ORDER BY sent_at`, owner.String(), ids)
	case q.Since != nil:
		rows, err = t.cfg.DB.Query(ctx, `SELECT id, recipient, sent_at, delivered_at, displayed_at FROM
			(SELECT * FROM receipts_tracked WHERE sender = $1 AND sent_at >= $2 ORDER BY sent_at DESC LIMIT $3) latest
			ORDER BY sent_at`, owner.String(), *q.Since, receiptstate.MaxIDs)
	default:
		return nil, component.BadRequest("name message ids or a since time")
	}
	if err != nil {
		return nil, fmt.Errorf("receipts: status: %w", err)
	}
	res := receiptstate.Status{}
	found := map[string]bool{}
	for rows.Next() {
		var m receiptstate.MessageRef
		var sent time.Time
		if err := rows.Scan(&m.ID, &m.To, &sent, &m.Delivered, &m.Displayed); err != nil {
			rows.Close()
			return nil, fmt.Errorf("receipts: status: %w", err)
		}
		m.Sent = &sent
		found[m.ID] = true
		res.Messages = append(res.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("receipts: status: %w", err)
	}
	for _, m := range q.Messages {
		if !found[m.ID] {
			res.Messages = append(res.Messages, receiptstate.MessageRef{ID: m.ID, Unknown: true})
		}
	}
	return res, nil
}

// Run deletes tracked state past its retention, until ctx ends.
func (t *Tracker) Run(ctx context.Context) error {
	// At most an hour between sweeps; a reloaded shorter retention
	// applies at the next one.
	tick := time.NewTicker(min(time.Hour, t.limits.Load().Retention/4))
	defer tick.Stop()
	for {
		_, err := t.cfg.DB.Exec(ctx, `DELETE FROM receipts_tracked WHERE sent_at < $1`, t.cfg.Now().Add(-t.limits.Load().Retention))
		if err != nil && !errors.Is(err, context.Canceled) {
			t.log.Warn("receipts: retention sweep failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
