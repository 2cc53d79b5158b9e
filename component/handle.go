package component

import (
	"context"
	"encoding/xml"
	"runtime/debug"
	"time"

	"mellium.im/xmpp/stanza"
)

// StanzaError returns the stanza error carried by an error-typed stanza.
func (s *Stanza) StanzaError() (stanza.Error, bool) {
	for _, c := range s.children {
		if c.name.Local != "error" {
			continue
		}
		var se stanza.Error
		if err := xml.NewTokenDecoder(&sliceReader{toks: s.tokens[c.lo:c.hi]}).Decode(&se); err == nil {
			return se, true
		}
	}
	return stanza.Error{}, false
}

// handle runs on a worker: it routes one stanza to its handler and sends
// the reply. A panic in a handler is a bug; it is recovered, counted and
// answered as internal-server-error, so no input can take clinkd down.
func (c *Component) handle(ctx context.Context, s *Stanza) {
	defer func() {
		if p := recover(); p != nil {
			c.metrics.Panics.Inc()
			c.log.Error("handler panic", "kind", s.Kind, "panic", p, "stack", string(debug.Stack()))
			c.replyError(ctx, s, Error(stanza.InternalServerError, ""))
		}
	}()
	if s.From.Domainpart() == "" {
		// Without a sender there is nobody to answer; servers always stamp
		// one, so this is noise.
		c.log.Debug("dropping stanza without a valid from", "kind", s.Kind)
		return
	}
	if s.oversized {
		c.replyError(ctx, s, Errorf(stanza.PolicyViolation, "stanza larger than %d bytes", c.cfg.MaxStanzaBytes))
		return
	}
	// The handler's time counts from the stanza's arrival, not from when
	// a worker got to it: a requester waits for the whole of it.
	deadline := s.arrived.Add(c.cfg.HandlerTimeout)
	if s.arrived.IsZero() {
		deadline = time.Now().Add(c.cfg.HandlerTimeout)
	}
	if time.Until(deadline) <= 0 {
		c.metrics.Refused.WithLabelValues("late").Inc()
		c.replyError(ctx, s, Error(stanza.ResourceConstraint, "clinkd was too busy to answer in time; try again"))
		return
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	switch s.Kind {
	case KindIQ:
		c.handleIQ(ctx, s)
	case KindMessage:
		c.handleMessage(ctx, s)
	case KindPresence:
		c.handlePresence(ctx, s)
	}
}

func (c *Component) handleIQ(ctx context.Context, s *Stanza) {
	if s.Type != string(stanza.GetIQ) && s.Type != string(stanza.SetIQ) {
		// A result or error nobody waits for (late, or a keepalive reply).
		return
	}
	if len(s.children) != 1 {
		c.replyError(ctx, s, BadRequest("an IQ get or set carries exactly one payload"))
		return
	}
	route, ok := c.mux.iq[s.children[0].name]
	if !ok {
		c.replyError(ctx, s, Error(stanza.ServiceUnavailable, ""))
		return
	}
	start := time.Now()
	res, err := route.h.HandleIQ(ctx, s)
	c.metrics.HandlerSeconds.WithLabelValues(route.label).Observe(time.Since(start).Seconds())
	if err != nil {
		c.replyError(ctx, s, err)
		return
	}
	reply := stanza.IQ{ID: s.ID, To: s.From, From: s.To, Type: stanza.ResultIQ}
	if raw, ok := res.(RawXML); ok {
		bp := c.rawBufs.Get().(*[]byte)
		defer c.rawBufs.Put(bp)
		*bp = appendIQStart((*bp)[:0], reply)
		if err := c.sendRaw(context.WithoutCancel(ctx), KindIQ, *bp, iqEnd, raw); err != nil {
			c.log.Debug("reply not sent", "err", err)
		}
		return
	}
	var p []any
	if res != nil {
		p = []any{res}
	}
	// The reply goes out even if the handler used up its time: the
	// requester is still waiting. sendStanza bounds the write itself.
	if err := c.send(context.WithoutCancel(ctx), KindIQ, reply.StartElement(), p...); err != nil {
		c.log.Debug("reply not sent", "err", err)
	}
}

func (c *Component) handleMessage(ctx context.Context, s *Stanza) {
	h, ns := c.mux.messageRoute(s)
	if h == nil {
		c.replyError(ctx, s, Error(stanza.ServiceUnavailable, ""))
		return
	}
	start := time.Now()
	err := h.HandleMessage(ctx, s)
	c.metrics.HandlerSeconds.WithLabelValues(ns + " message").Observe(time.Since(start).Seconds())
	if err != nil {
		c.replyError(ctx, s, err)
	}
}

// handlePresence shows the presence to every presence handler, even when
// one fails, because each keeps its own view of who is online.
func (c *Component) handlePresence(ctx context.Context, s *Stanza) {
	var first error
	for _, h := range c.mux.presence {
		start := time.Now()
		err := h.HandlePresence(ctx, s)
		c.metrics.HandlerSeconds.WithLabelValues("presence").Observe(time.Since(start).Seconds())
		if err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		c.replyError(ctx, s, first)
	}
}

// replyError answers s with err, unless s is itself an error: answering
// errors with errors can loop between two entities for ever (RFC 6120
// §8.3.1).
func (c *Component) replyError(ctx context.Context, s *Stanza, err error) {
	se, internal := asStanzaError(err, c.cfg.Transient)
	if internal {
		// One line per kind of failure per interval: an outage of the
		// database fails every request, and a log line per request would
		// bury everything else.
		if n, ok := c.logLimit.allow(string(se.Type), time.Now()); ok {
			c.log.Error("handler failed", "kind", s.Kind, "err", err, "type", se.Type, "suppressed_since_last", n)
		}
	}
	if s.Type == "error" {
		return
	}
	if s.Kind == KindIQ && s.Type != string(stanza.GetIQ) && s.Type != string(stanza.SetIQ) {
		return // results are never answered either
	}
	c.metrics.Errors.WithLabelValues(string(se.Condition)).Inc()
	var start xml.StartElement
	switch s.Kind {
	case KindIQ:
		start = stanza.IQ{ID: s.ID, To: s.From, From: s.To, Type: stanza.ErrorIQ}.StartElement()
	case KindMessage:
		start = stanza.Message{ID: s.ID, To: s.From, From: s.To, Type: stanza.ErrorMessage}.StartElement()
	case KindPresence:
		start = stanza.Presence{ID: s.ID, To: s.From, From: s.To, Type: stanza.ErrorPresence}.StartElement()
	}
	if err := c.send(context.WithoutCancel(ctx), s.Kind, start, se); err != nil {
		c.log.Debug("error reply not sent", "err", err)
	}
}
