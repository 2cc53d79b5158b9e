// Package receipts passes delivery receipts (XEP-0184) and read markers
// (XEP-0333) for messages that went through clinkd from the recipient's
// devices to the sender's, and keeps the receipt state of ordinary tracked
// messages so a sender's device can ask for it after reconnecting.
//
// A recipient's device sends its receipt to the sender's address at the
// component (package address). clinkd forwards it to every online device
// of the sender as a headline with no-store hints, so the server keeps no
// copy. For a timed message the receipt is held in memory only, and only
// until the message expires, for sender devices that come online later.
// For an ordinary tracked message the state (message id, sender,
// recipient, timestamps; never content) is kept in PostgreSQL for a
// configurable retention and can be asked for with the status query of
// docs/receipts.md.
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
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/extensions/envelopexml"
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

// Devices knows the online devices of each user (a *devices.Registry).
type Devices interface {
	Online(user jid.JID) []jid.JID
	Gone(device jid.JID)
}

// TimedLookup tells whether a message is a timed one held by this
// instance, and until when (an *expiry.Relay).
type TimedLookup interface {
	SentExpiry(owner, peer jid.JID, id string) (time.Time, bool)
}

// Config tunes the tracker.
type Config struct {
	// Retention is how long the state of ordinary tracked messages is kept
	// (default 30 days).
	Retention time.Duration
	// PerUserHeld bounds the receipts of timed messages held in memory for
	// one user (default 1000).
	PerUserHeld int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Tracker is the receipts feature.
type Tracker struct {
	cfg       Config
	component jid.JID
	db        *pgxpool.Pool // nil: ordinary messages are not tracked
	send      Sender
	devices   Devices
	timed     TimedLookup
	log       *slog.Logger
	forwarded *prometheus.CounterVec

	mu   sync.Mutex
	held map[string][]*pending // by sender (owner) bare JID
}

// pending is a receipt for a timed message, held until the message
// expires.
type pending struct {
	peer    jid.JID // the recipient who sent the receipt
	payload any     // receiptsxml.Received or markers.Displayed
	expires time.Time
}

// New returns a tracker. db may be nil (then ordinary messages are not
// relayed).
func New(cfg Config, domain jid.JID, db *pgxpool.Pool, send Sender, devs Devices, timed TimedLookup, log *slog.Logger, reg prometheus.Registerer) *Tracker {
	if cfg.Retention <= 0 {
		cfg.Retention = 30 * 24 * time.Hour
	}
	if cfg.PerUserHeld <= 0 {
		cfg.PerUserHeld = 1000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tracker{
		cfg: cfg, component: domain, db: db, send: send, devices: devs, timed: timed, log: log,
		held: make(map[string][]*pending),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clinkd_receipts_forwarded_total",
			Help: "Receipts forwarded to senders' devices, by kind (received, displayed) and message (timed, ordinary).",
		}, []string{"kind", "message"}),
	}
	if reg != nil {
		reg.MustRegister(t.forwarded)
	}
	return t
}

// Register routes receipts, markers and the status query to t.
func (t *Tracker) Register(c *component.Component) {
	c.HandleMessage(receiptsxml.NS, component.MessageHandlerFunc(t.HandleMessage))
	c.HandleMessage(markers.NS, component.MessageHandlerFunc(t.HandleMessage))
	c.HandleIQ(xml.Name{Space: receiptstate.NS, Local: "status"}, component.IQHandlerFunc(t.HandleStatus))
}

var (
	receivedName  = xml.Name{Space: receiptsxml.NS, Local: "received"}
	displayedName = xml.Name{Space: markers.NS, Local: "displayed"}
)

// HandleMessage handles a receipt or marker a recipient's device sent to
// the sender's address.
func (t *Tracker) HandleMessage(ctx context.Context, m *component.Stanza) error {
	if m.Type == string(stanza.ErrorMessage) {
		if m.From.Resourcepart() != "" {
			t.devices.Gone(m.From)
		}
		return nil
	}
	owner, err := address.User(m.To)
	if err != nil {
		return component.BadRequest("send receipts to the sender's address at this component")
	}
	reader := m.From.Bare()
	var (
		id, kind string
		payload  any
	)
	switch {
	case m.Has(receivedName):
		var r receiptsxml.Received
		if err := m.Decode(receivedName, &r); err != nil {
			return err
		}
		id, kind, payload = r.ID, "received", receiptsxml.Received{ID: r.ID}
	case m.Has(displayedName):
		var d markers.Displayed
		if err := m.Decode(displayedName, &d); err != nil {
			return err
		}
		id, kind, payload = d.ID, "displayed", markers.Displayed{ID: d.ID}
	default:
		return nil // a request or markable alone asks nothing of clinkd
	}
	if id == "" || len(id) > envelopexml.MaxIDLen {
		return component.BadRequest("a receipt names the message id it is for")
	}

	if t.timed != nil {
		if expires, ok := t.timed.SentExpiry(owner, reader, id); ok {
			t.hold(owner, &pending{peer: reader, payload: payload, expires: expires})
			t.forward(ctx, owner, reader, payload, t.devices.Online(owner))
			t.forwarded.WithLabelValues(kind, "timed").Inc()
			return nil
		}
	}
	if t.db == nil {
		return nil
	}
	col := "delivered_at"
	if kind == "displayed" {
		col = "displayed_at"
	}
	// The recipient may only mark messages sent to it; coalesce keeps the
	// first time.
	tag, err := t.db.Exec(ctx, `UPDATE receipts_tracked SET `+col+` = coalesce(`+col+`, $4)
		WHERE sender = $1 AND id = $2 AND recipient = $3`, owner.String(), id, reader.String(), t.cfg.Now())
	if err != nil {
		return fmt.Errorf("receipts: record %s: %w", kind, err)
	}
	if tag.RowsAffected() == 0 {
		return nil // not a tracked message of this pair: nothing to pass on
	}
	t.forward(ctx, owner, reader, payload, t.devices.Online(owner))
	t.forwarded.WithLabelValues(kind, "ordinary").Inc()
	return nil
}

// forward sends a receipt to the owner's devices, from the reader's
// address, as a headline the server keeps no copy of.
func (t *Tracker) forward(ctx context.Context, owner, reader jid.JID, payload any, devices []jid.JID) {
	from, err := address.AtComponent(reader, t.component)
	if err != nil {
		return
	}
	for _, d := range devices {
		if err := t.send.SendMessage(ctx, stanza.Message{To: d, From: from, Type: stanza.HeadlineMessage},
			payload, hints.NoStore{}, hints.NoPermanentStore{}, hints.NoCopy{}); err != nil {
			t.log.Debug("receipts: forward failed", "err", err)
		}
	}
}

func (t *Tracker) hold(owner jid.JID, p *pending) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := owner.String()
	list := t.pruneLocked(k)
	if len(list) >= t.cfg.PerUserHeld {
		list = list[1:] // the oldest goes; memory stays bounded
	}
	t.held[k] = append(list, p)
}

// pruneLocked drops expired receipts of one owner and returns the rest.
func (t *Tracker) pruneLocked(k string) []*pending {
	now := t.cfg.Now()
	list := t.held[k][:0]
	for _, p := range t.held[k] {
		if p.expires.After(now) {
			list = append(list, p)
		}
	}
	if len(list) == 0 {
		delete(t.held, k)
		return nil
	}
	t.held[k] = list
	return list
}

// OnOnline delivers the held receipts of a user to a device that just
// announced itself.
func (t *Tracker) OnOnline(ctx context.Context, user, device jid.JID) {
	t.mu.Lock()
	list := append([]*pending(nil), t.pruneLocked(user.String())...)
	t.mu.Unlock()
	for _, p := range list {
		t.forward(ctx, user, p.peer, p.payload, []jid.JID{device})
	}
}

// RelayOrdinary records an ordinary message's receipt state and passes
// the envelope to the recipient as a normal chat message, which the server
// stores and archives as it does any other.
func (t *Tracker) RelayOrdinary(ctx context.Context, from, to jid.JID, env *envelopexml.Envelope) error {
	if t.db == nil {
		return component.Error(stanza.ServiceUnavailable, "this clinkd does not track ordinary messages")
	}
	sender := from.Bare()
	if _, err := t.db.Exec(ctx, `INSERT INTO receipts_tracked (sender, id, recipient, sent_at)
		VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, sender.String(), env.ID, to.String(), t.cfg.Now()); err != nil {
		return fmt.Errorf("receipts: track: %w", err)
	}
	addr, err := address.AtComponent(sender, t.component)
	if err != nil {
		return err
	}
	return t.send.SendMessage(ctx, stanza.Message{ID: env.ID, To: to, From: addr, Type: stanza.ChatMessage},
		env, receiptsxml.Request{}, markers.Markable{})
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
	if t.db == nil {
		return nil, component.Error(stanza.ServiceUnavailable, "this clinkd does not track ordinary messages")
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
		rows, err = t.db.Query(ctx, `SELECT id, recipient, sent_at, delivered_at, displayed_at FROM receipts_tracked
			WHERE sender = $1 AND id = ANY($2) ORDER BY sent_at`, owner.String(), ids)
	case q.Since != nil:
		rows, err = t.db.Query(ctx, `SELECT id, recipient, sent_at, delivered_at, displayed_at FROM
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

// Run deletes tracked state past its retention, and held receipts past
// their message's expiry, until ctx ends.
func (t *Tracker) Run(ctx context.Context) error {
	tick := time.NewTicker(min(time.Hour, t.cfg.Retention/4))
	defer tick.Stop()
	for {
		if t.db != nil {
			_, err := t.db.Exec(ctx, `DELETE FROM receipts_tracked WHERE sent_at < $1`, t.cfg.Now().Add(-t.cfg.Retention))
			if err != nil && !errors.Is(err, context.Canceled) {
				t.log.Warn("receipts: retention sweep failed", "err", err)
			}
		}
		t.mu.Lock()
		for k := range t.held {
			t.pruneLocked(k)
		}
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
