package client

import (
	"context"
	"encoding/xml"
	"fmt"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/extensions/carbons"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptstate"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
)

// Announce tells clinkd (at component) that this device is online, with
// directed presence to the user's own address there, so that it gets the
// timed messages and receipts held for it. The XMPP server tells clinkd
// when the device goes. AnnounceDevice does the same with the device's
// stable id.
func (c *Client) Announce(ctx context.Context, component jid.JID) error {
	return c.AnnounceDevice(ctx, component, "")
}

// AnnounceDevice is Announce with the device's stable id
// (docs/expiry.md, step 1): clinkd then delivers each held message to
// this device once, however often it reconnects with a new resource, and
// names it by id in the receipts it forwards for it. An empty id
// announces without one.
func (c *Client) AnnounceDevice(ctx context.Context, component jid.JID, id string) error {
	own, err := address.AtComponent(c.JID(), component)
	if err != nil {
		return err
	}
	if id == "" {
		return c.SendPresence(ctx, stanza.Presence{To: own})
	}
	if err := expiryxml.CheckDeviceID(id); err != nil {
		return fmt.Errorf("client: announce: %w", err)
	}
	return c.SendPresence(ctx, stanza.Presence{To: own}, expiryxml.Device{ID: id})
}

// storeless are the hints on everything a device sends that no server may
// keep: no archive, no offline store, no carbon copy.
func storeless() []any {
	return []any{hints.NoStore{}, hints.NoPermanentStore{}, carbons.Private{}}
}

// SendEnvelope sends an envelope to the user to through clinkd, as
// docs/envelope.md ("Transport") specifies: to the user's address at the
// component, with the envelope's id and no <body>. A timed envelope
// (Expires set) goes as a headline with no-store hints and no carbon copy,
// so that the sender's own server keeps nothing either; clinkd refuses it
// otherwise. An ordinary envelope goes as chat, and clinkd tracks its
// receipts. A device sends one message for each recipient of the envelope.
func (c *Client) SendEnvelope(ctx context.Context, component, to jid.JID, env *envelopexml.Envelope) error {
	m, payload, err := envelopeMessage(component, to, env)
	if err != nil {
		return err
	}
	return c.SendMessage(ctx, m, payload...)
}

// envelopeMessage returns the message that carries env to the user to
// through the clinkd at component, and its children.
func envelopeMessage(component, to jid.JID, env *envelopexml.Envelope) (stanza.Message, []any, error) {
	addr, err := address.AtComponent(to, component)
	if err != nil {
		return stanza.Message{}, nil, err
	}
	if env.Expires.IsZero() {
		return stanza.Message{ID: env.ID, To: addr, Type: stanza.ChatMessage}, []any{env}, nil
	}
	return stanza.Message{ID: env.ID, To: addr, Type: stanza.HeadlineMessage}, append([]any{env}, storeless()...), nil
}

// SendReceipt tells the sender of message id, through clinkd, that it was
// delivered or displayed. Receipts for timed messages go with no-store
// hints (Prosody archives bodyless receipts otherwise).
func (c *Client) SendReceipt(ctx context.Context, component, sender jid.JID, id string, kind ReceiptKind, timed bool) error {
	addr, err := address.AtComponent(sender, component)
	if err != nil {
		return err
	}
	var payload any = receiptsxml.Received{ID: id}
	if kind == Displayed {
		payload = markers.Displayed{ID: id}
	}
	m := stanza.Message{To: addr, Type: stanza.ChatMessage}
	p := []any{payload}
	if timed {
		m.Type = stanza.HeadlineMessage
		p = append(p, storeless()...)
	}
	return c.SendMessage(ctx, m, p...)
}

// ReceiptStatus asks clinkd for the receipt state of ordinary messages
// this user sent through it.
func (c *Client) ReceiptStatus(ctx context.Context, component jid.JID, ids ...string) ([]receiptstate.MessageRef, error) {
	own, err := address.AtComponent(c.JID(), component)
	if err != nil {
		return nil, err
	}
	q := receiptstate.Status{}
	for _, id := range ids {
		q.Messages = append(q.Messages, receiptstate.MessageRef{ID: id})
	}
	var res receiptstate.Status
	if err := c.IQ(ctx, stanza.GetIQ, own, q, &res); err != nil {
		return nil, err
	}
	return res.Messages, nil
}

// What the relay sends devices.
var (
	EnvelopeName  = xml.Name{Space: envelopexml.NS, Local: "envelope"}
	EnvelopeName1 = xml.Name{Space: envelopexml.NS1, Local: "envelope"} // version 1 (docs/envelope.md, section 12)
	ExpiredName   = xml.Name{Space: expiryxml.NS, Local: "expired"}
	SentName      = xml.Name{Space: expiryxml.NS, Local: "sent"}
	ReceivedName  = xml.Name{Space: receiptsxml.NS, Local: "received"}
	DisplayedName = xml.Name{Space: markers.NS, Local: "displayed"}
)

// Envelope returns the envelope a message carries.
func (s *Stanza) Envelope() (*envelopexml.Envelope, error) {
	var env envelopexml.Envelope
	name := EnvelopeName
	if !s.Has(EnvelopeName) && s.Has(EnvelopeName1) {
		name = EnvelopeName1
	}
	if err := s.Decode(name, &env); err != nil {
		return nil, fmt.Errorf("client: envelope: %w", err)
	}
	return &env, nil
}

// Peer returns the user a message from clinkd is about: the other party
// of the conversation, whose address at the component sent it.
func (s *Stanza) Peer() (jid.JID, error) { return address.User(s.From) }

// ExpiredID returns the id of the message an expiry notice is for.
func (s *Stanza) ExpiredID() (string, bool) {
	var e expiryxml.Expired
	if s.Decode(ExpiredName, &e) != nil {
		return "", false
	}
	return e.ID, true
}

// ReceiptDevice returns the stable id of the reader's device that a
// receipt forwarded by clinkd names, or "" when it names none.
func (s *Stanza) ReceiptDevice() string {
	var d expiryxml.Device
	if s.Decode(deviceName, &d) != nil || expiryxml.CheckDeviceID(d.ID) != nil {
		return ""
	}
	return d.ID
}

var deviceName = xml.Name{Space: expiryxml.NS, Local: "device"}

// ReceiptFor returns the message id and kind of a receipt passed on by
// clinkd.
func (s *Stanza) ReceiptFor() (string, ReceiptKind, bool) {
	var r receiptsxml.Received
	if s.Decode(ReceivedName, &r) == nil {
		return r.ID, Delivered, true
	}
	var d markers.Displayed
	if s.Decode(DisplayedName, &d) == nil {
		return d.ID, Displayed, true
	}
	return "", 0, false
}
