// Package component links clinkd to an XMPP server as an XEP-0114 external
// component and routes the stanzas it receives to feature handlers.
//
// It is the only package that owns the connection. A [Component] dials the
// server's component port, performs the XEP-0114 handshake, reads stanzas
// whole on one read loop and hands each to a bounded pool of workers, which
// run the handler registered for the stanza's kind and payload namespace and
// write the reply. When the link ends for any reason (a graceful stream close,
// a TCP drop, a server restart, a keepalive timeout) it dials again with
// jittered exponential backoff; handlers and whatever they hold in memory are
// untouched by a re-link.
//
// The component answers XEP-0030 service discovery (disco#info lists the
// features of every registered handler, so what is advertised cannot drift
// from what is served) and XEP-0199 ping itself.
//
// Invariants the rest of clinkd relies on:
//   - an IQ get or set always gets exactly one reply: the handler's result,
//     its error, service-unavailable when nothing handles the payload, or
//     resource-constraint when it could not be handled in time or its
//     sender had too much waiting;
//   - a stanza of type "error" is never answered;
//   - stanzas from one sender (bare JID) are handled one at a time, in the
//     order they arrived;
//   - senders take turns on the workers, and the read loop never waits for
//     a worker: a sender over its queue is refused, not waited for, so one
//     sender cannot hold up the others (and no goroutine is started per
//     stanza).
package component
