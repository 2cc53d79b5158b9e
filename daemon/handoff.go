package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/expiry"
)

// A handoff moves what a running clinkd (the giver) holds in memory, its
// timed messages and its registry of online devices, to a new clinkd (the
// taker) that takes over from it: a restart, an upgrade, a stopping
// instance's state to a sibling. docs/expiry.md specifies the protocol,
// docs/operators.md the procedure. The steps, in order:
//
//  1. The taker (clinkd serve --takeover) connects to the giver's
//     expiry.handoff_socket; each checks the other's credentials (same
//     user) and hello (protocol version, component).
//  2. The giver stops accepting other takers and removes its socket; its
//     relay goes quiet (it holds what it is handed but sends nothing,
//     since Prosody may close the link under it without a word), the
//     sends under way finish and a ping to the server is answered (so
//     the server has read everything sent before); and a
//     link it loses from now on is not made again (Prosody gives the
//     component to the newest connection).
//  3. The taker links; until the state is in, its relay holds every stanza
//     it is handed (the XMPP server routes to the new link from the moment
//     it is up, so nothing arrives at a clinkd that cannot answer it).
//     It tells the giver it is linked.
//  4. The giver stops its background loops (no expiry notice goes out on a
//     link that is going) and releases its link: it closes its side of
//     the stream and reads until the server closes the other (Prosody
//     closed it already when the new link came; ejabberd, which keeps
//     both, closes it at once; handoffReleaseTimeout at most), handles
//     what it read, and sends its state once nothing changes it any more.
//  5. The taker takes the state, says what it took, and lets its relay go
//     on: held stanzas are answered, and what the giver left unsent
//     (deliveries, copies, receipts, expiry notices) is sent. It serves
//     the handoff socket in turn.
//  6. The giver exits 0.
//
// With link.balanced (protocol version 2) steps 3 and 4 are turned round:
// ejabberd gives each link a fixed slot, so the giver releases its links
// first and says how many (giveSlot), and the taker then makes as many
// (awaitSlot). The same version lets a stopping clinkd offer its slots
// and state to a running sibling (scale-in: scaleIn on the stopping side,
// takeFromSibling on the sibling's; daemon/links.go holds the links).

// Bounds of the handoff's steps. Each stops a peer that hangs from
// holding the other for ever; none is reached by a handoff that works.
const (
	// handoffHelloTimeout bounds the hellos: both sides are up already.
	handoffHelloTimeout = 10 * time.Second
	// handoffLinkTimeout bounds how long the taker may take to link and
	// the giver waits for it: a dial, a handshake and a few backoffs.
	handoffLinkTimeout = time.Minute
	// handoffReleaseTimeout bounds how long the giver, once the taker
	// holds the link, reads its own link after closing its side of the
	// stream, waiting for the server's close. Prosody's
	// component_conflict_resolve = "kick_old" closed it already, before
	// it even answered the taker's handshake; ejabberd answers the close
	// at once. Until then the giver reads, so it holds everything the
	// server sent it before it stopped routing to this link.
	handoffReleaseTimeout = 5 * time.Second
	// handoffSyncTimeout bounds the giver's wait for the server's answer
	// to the ping that follows its last stanza (component.Sync).
	handoffSyncTimeout = 5 * time.Second
	// handoffStateTimeout bounds sending the state: the giver first
	// answers what it read (link.handler_timeout at most), then writes
	// memory to memory.
	handoffStateTimeout = 2 * time.Minute
)

// errNoGiver says that nothing listens on the handoff socket: there is
// no clinkd to take over from.
var errNoGiver = errors.New("daemon: no clinkd listens on expiry.handoff_socket")

// checkHandoffDir refuses a socket whose directory another user could
// reach: only clinkd's own user may connect to it, replace it or read it.
func checkHandoffDir(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("config: expiry.handoff_socket %q is not an absolute path", path)
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("config: expiry.handoff_socket: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("config: expiry.handoff_socket: %s is not a directory", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("config: expiry.handoff_socket: directory %s is open to other users (mode %04o); it must be 0700, clinkd's own (systemd RuntimeDirectory=clinkd)", dir, fi.Mode().Perm())
	case ok && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("config: expiry.handoff_socket: directory %s belongs to uid %d, not to clinkd's user (uid %d)", dir, st.Uid, os.Geteuid())
	}
	return nil
}

// dialGiver connects to the clinkd serving on the handoff socket and
// checks that it runs as this user. errNoGiver: nobody listens there.
func dialGiver(path string) (*net.UnixConn, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, errNoGiver
		}
		return nil, fmt.Errorf("daemon: handoff: connect to %s: %w", path, err)
	}
	if err := checkPeer(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// listenHandoff binds the handoff socket, mode 0600. A socket left by a
// clinkd that is gone is replaced; one a clinkd still serves on is not:
// that one must be taken over (--takeover), or two would fight for the
// link.
func listenHandoff(path string) (*net.UnixListener, error) {
	if err := checkHandoffDir(path); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path); err == nil {
		conn, err := dialGiver(path)
		switch {
		case err == nil:
			conn.Close()
			return nil, fmt.Errorf("daemon: another clinkd serves on expiry.handoff_socket %s: take over from it with clinkd serve --takeover, or stop it first", path)
		case errors.Is(err, errNoGiver):
			os.Remove(path) // left by a clinkd that is gone
		default:
			return nil, err
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("daemon: handoff: listen on %s: %w", path, err)
	}
	// Closing the listener must not remove a path that the next clinkd
	// may own by then: the giver removes it itself, at the right time.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("daemon: handoff: %w", err)
	}
	return ln, nil
}

// giving is a handoff under way on the giver's side.
type giving struct {
	conn  *expiry.HandoffConn
	raw   *net.UnixConn
	start time.Time
}

// serveHandoff accepts takers on ln until ctx ends or one is accepted,
// which it returns. A connection from another user, or that does not
// speak the protocol (a wrong version, another component, a truncated
// frame), is refused and logged, and the next one is awaited.
func (d *Daemon) serveHandoff(ctx context.Context, ln *net.UnixListener) (*giving, error) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, fmt.Errorf("daemon: handoff: accept: %w", err)
		}
		if err := checkPeer(conn); err != nil {
			d.log.Warn("handoff: connection refused", "err", err)
			conn.Close()
			continue
		}
		hc := expiry.NewHandoffConn(conn)
		if d.cfg.Link.Balanced {
			hc.SetBalanced()
		}
		conn.SetDeadline(time.Now().Add(handoffHelloTimeout))
		if err := hc.ReceiveHello(d.cfg.Link.Domain); err != nil {
			d.log.Warn("handoff: connection refused", "err", err)
			if errors.Is(err, expiry.ErrHandoffProtocol) {
				hc.SendRefusal(err.Error())
			}
			conn.Close()
			continue
		}
		return &giving{conn: hc, raw: conn, start: time.Now()}, nil
	}
}

// checkPeer refuses a peer that does not run as this process's user.
func checkPeer(conn *net.UnixConn) error {
	uid, pid, err := peerCredentials(conn)
	if err != nil {
		return fmt.Errorf("daemon: handoff: peer credentials: %w", err)
	}
	if uid != os.Geteuid() {
		return fmt.Errorf("daemon: handoff: peer (pid %d) runs as uid %d, not as clinkd's user (uid %d)", pid, uid, os.Geteuid())
	}
	return nil
}

// give runs the giver's side of an accepted handoff up to the point
// where its state can go: it answers the hello, gives up the socket, and
// from then on gives up its link once lost rather than making it again
// (Prosody closes the older connection when the taker links). When the
// taker holds the link, it stops the background loops (no expiry notice
// goes out on a link that is going) and releases its own link (closes
// its side, reads until the server closes the other or
// handoffReleaseTimeout). An error means the taker went away
// first; the giver then serves on, unless its link is lost already.
func (d *Daemon) give(ctx context.Context, g *giving, path string, stopLink, stopBG context.CancelFunc) error {
	stop := context.AfterFunc(ctx, func() { g.raw.Close() })
	defer stop()
	// No other taker: the socket goes now, so that the taker can bind it
	// for the clinkd after it.
	os.Remove(path)
	// The relay sends nothing more: Prosody may close this link without
	// a word when the taker links, and what went out after that would be
	// lost. The taker sends it. What went out before must have reached
	// the server before the taker may link (Prosody drops what it has not
	// read from the old link): Quiesce waits for the sends under way, Sync
	// for the server's answer to a ping written after them.
	d.relay.Quiesce()
	sctx, cancel := context.WithTimeout(ctx, handoffSyncTimeout)
	if err := d.comp.Sync(sctx); err != nil {
		d.log.Warn("handoff: the server did not answer a ping before the takeover; what this clinkd sent just before may be lost", "err", err)
	}
	cancel()
	if err := g.conn.SendHello(d.cfg.Link.Domain); err != nil {
		return err
	}
	if d.cfg.Link.Balanced {
		return d.giveSlot(ctx, g, stopLink, stopBG)
	}
	d.log.Info("handoff: a clinkd takes over; waiting for it to hold the link")
	armed, disarm := context.WithCancel(ctx)
	defer disarm()
	lost := make(chan struct{})
	go func() {
		if d.comp.WaitState(armed, component.Down) == nil {
			stopLink()
			close(lost)
		}
	}()
	g.raw.SetDeadline(time.Now().Add(handoffLinkTimeout))
	if err := g.conn.ReceiveLinked(); err != nil {
		return err
	}
	g.raw.SetDeadline(time.Time{})
	stopBG()
	// Close this link's stream on our side: the server stops routing to
	// it, and what it sent before is read and held until it closes its
	// side. ejabberd keeps several links per component and would
	// otherwise go on sending here until the giver stops reading, and
	// what was in flight then would be lost. Prosody closed it already.
	rctx, cancel := context.WithTimeout(ctx, handoffReleaseTimeout)
	if err := d.comp.Release(rctx); err != nil {
		d.log.Warn("handoff: link released without the server's close", "err", err)
	}
	cancel()
	stopLink()
	return nil
}

// giveSlot is give's end on a balanced link (link.balanced, handoff
// protocol version 2): ejabberd gives each link a fixed slot, and the
// taker's link can hold this one's only once this link is gone, so the
// giver releases its link first (stops its background loops, closes its
// side of the stream and reads until the server closes the other), tells
// the taker, and waits for the taker to hold the link. Between the
// release and the taker's handshake ejabberd drops what it routes to the
// empty slot. A taker that goes away after the release leaves this clinkd
// without a link: what it holds is lost, as in a crash.
func (d *Daemon) giveSlot(ctx context.Context, g *giving, stopLink, stopBG context.CancelFunc) error {
	d.log.Info("handoff: a clinkd takes over; giving up this clinkd's slots first (link.balanced)")
	stopBG()
	links := d.releaseLinks(ctx)
	stopLink()
	if err := g.conn.SendReleased(links); err != nil {
		return err
	}
	g.raw.SetDeadline(time.Now().Add(handoffLinkTimeout))
	if err := g.conn.ReceiveLinked(); err != nil {
		return err
	}
	g.raw.SetDeadline(time.Time{})
	return nil
}

// handoffLoop serves the handoff socket until ctx ends or a handoff
// reaches the point where the state can go; it then sends that handoff
// on outcome (nil for none) and returns. A taker that goes away first
// leaves this clinkd serving, unless its link stopped meanwhile (linkCtx):
// a component is linked once per process.
func (d *Daemon) handoffLoop(ctx, linkCtx context.Context, ln *net.UnixListener, stopLink, stopBG context.CancelFunc, outcome chan<- *giving) {
	path := d.cfg.Expiry.HandoffSocket
	for {
		g, err := d.serveHandoff(ctx, ln)
		if err != nil {
			d.log.Error("handoff: the socket stopped serving; this clinkd can no longer be taken over", "err", err)
		}
		if g == nil {
			if ctx.Err() != nil {
				os.Remove(path) // stopping: nobody serves it any more
			}
			outcome <- nil
			return
		}
		if g.conn.Offer() {
			// A stopping sibling hands over its slots and state; this
			// clinkd serves on.
			d.takeFromSibling(ctx, linkCtx, g)
			continue
		}
		gerr := d.give(ctx, g, path, stopLink, stopBG)
		if gerr == nil {
			outcome <- g
			return
		}
		g.raw.Close()
		if ctx.Err() != nil || linkCtx.Err() != nil {
			// The link went while armed: it cannot be made again.
			outcome <- nil
			return
		}
		d.relay.Resume(ctx)
		if ln, err = listenHandoff(path); err != nil {
			d.log.Error("handoff: cannot listen on the socket again; this clinkd can no longer be taken over", "err", err)
			outcome <- nil
			return
		}
		d.log.Warn("handoff: the clinkd taking over went away before it held the link; serving on", "err", gerr)
	}
}

// sendState sends the relay's state and the registry once the link and
// the background loops have stopped, and waits for the taker's receipt.
func (d *Daemon) sendState(g *giving) error {
	defer g.raw.Close()
	g.raw.SetDeadline(time.Now().Add(handoffStateTimeout))
	sent, err := g.conn.SendState(d.relay, d.devices)
	if err != nil {
		return fmt.Errorf("daemon: handoff: send the state: %w (the timed messages held here are lost)", err)
	}
	took, err := g.conn.ReceiveDone()
	if err != nil {
		return fmt.Errorf("daemon: handoff: the taker did not confirm the state: %w (the timed messages held here may be lost)", err)
	}
	d.log.Info("handoff: state handed over; exiting", "messages", sent.Messages, "receipts", sent.Receipts,
		"users_seen", sent.Seen, "devices", sent.Devices, "taken_messages", took.Messages, "took", time.Since(g.start).Round(time.Millisecond))
	if took.Messages < sent.Messages {
		d.log.Warn("handoff: the taker dropped messages over its quotas", "dropped", sent.Messages-took.Messages)
	}
	return nil
}

// takeover is a handoff under way on the taker's side.
type takeover struct {
	conn  *expiry.HandoffConn
	raw   *net.UnixConn
	start time.Time
	links int // the links the giver gave up (link.balanced), which this clinkd makes
}

// beginTakeover connects to the giver and exchanges hellos, and makes the
// relay and the registry wait for the state. It returns nil, nil when no
// clinkd serves on the socket: this clinkd starts afresh.
func (d *Daemon) beginTakeover() (*takeover, error) {
	path := d.cfg.Expiry.HandoffSocket
	start := time.Now()
	raw, err := dialGiver(path)
	if errors.Is(err, errNoGiver) {
		d.log.Info("takeover: no clinkd serves on the handoff socket; starting afresh", "socket", path)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	t := &takeover{conn: expiry.NewHandoffConn(raw), raw: raw, start: start}
	if d.cfg.Link.Balanced {
		t.conn.SetBalanced()
	}
	raw.SetDeadline(time.Now().Add(handoffHelloTimeout))
	err = t.conn.SendHello(d.cfg.Link.Domain)
	if err == nil {
		err = t.conn.ReceiveHello(d.cfg.Link.Domain)
	}
	if err == nil && t.conn.Offer() {
		err = fmt.Errorf("%w: the answer to a takeover is an offer", expiry.ErrHandoffProtocol)
	}
	if err != nil {
		if errors.Is(err, expiry.ErrHandoffProtocol) {
			t.conn.SendRefusal(err.Error())
		}
		raw.Close()
		return nil, fmt.Errorf("daemon: takeover: %w", err)
	}
	raw.SetDeadline(time.Time{})
	d.relay.AwaitHandoff()
	d.devices.ExpectImport()
	d.log.Info("takeover: the clinkd serving on the handoff socket hands over; linking")
	return t, nil
}

// awaitSlot waits, on a balanced link (link.balanced), for the giver to
// give up its link, whose slot this clinkd's link then takes; until then
// this clinkd must not link (ejabberd would give its link no slot). An
// error means the giver serves on, or went away: this clinkd does not
// start.
func (d *Daemon) awaitSlot(t *takeover) error {
	t.raw.SetDeadline(time.Now().Add(handoffLinkTimeout))
	links, err := t.conn.ReceiveReleased()
	t.raw.SetDeadline(time.Time{})
	if err != nil {
		d.relay.EndHandoff(context.Background())
		d.devices.Import(nil)
		return fmt.Errorf("daemon: takeover: the clinkd serving on the handoff socket did not give up its link: %w", err)
	}
	t.links = links
	d.log.Info("takeover: the previous clinkd gave up its slots; linking (link.balanced)", "links", links)
	return nil
}

// finishTakeover waits for this clinkd's link, tells the giver, and takes
// the state. A giver that fails halfway leaves this clinkd serving
// without its state (as after a crash); it is logged. The caller closes
// the connection.
func (d *Daemon) finishTakeover(ctx, linkCtx context.Context, t *takeover) error {
	lctx, cancel := context.WithTimeout(ctx, handoffLinkTimeout)
	err := d.comp.WaitState(lctx, component.Linked)
	cancel()
	if err == nil && t.links > 1 {
		// The giver held several slots: this clinkd takes each.
		if err := d.addLinks(linkCtx, t.links-1); err != nil {
			d.log.Error("takeover: not every slot the previous clinkd held is linked yet; its users wait until it is", "err", err)
		}
	}
	if err != nil {
		d.relay.EndHandoff(ctx)
		d.devices.Import(nil)
		return fmt.Errorf("daemon: takeover: could not link: %w (the previous clinkd serves on)", err)
	}
	t.raw.SetDeadline(time.Now().Add(handoffStateTimeout))
	took, err := func() (expiry.HandoffCounts, error) {
		if err := t.conn.SendLinked(); err != nil {
			return expiry.HandoffCounts{}, err
		}
		took, err := t.conn.ReceiveState(d.relay, d.devices)
		if err != nil {
			return took, err
		}
		return took, t.conn.SendDone(took)
	}()
	d.relay.EndHandoff(ctx)
	if err != nil {
		d.devices.Import(nil)
		d.log.Error("takeover: the state did not arrive; serving without it (the timed messages the previous clinkd held are lost)", "err", err)
		return nil
	}
	d.log.Info("takeover: state taken", "messages", took.Messages, "receipts", took.Receipts,
		"users_seen", took.Seen, "devices", took.Devices, "took", time.Since(t.start).Round(time.Millisecond))
	return nil
}

// takeFromSibling takes a stopping sibling's slots and state (scale-in,
// link.balanced; docs/expiry.md, "Scale-in"), serving on throughout: it
// answers the offer, makes its relay and registry wait for the state,
// waits for the sibling to give up its links, makes as many links of its
// own into the freed slots, and takes the state into its relay beside
// what it holds. Failures are logged: the sibling's state is then lost,
// as in a crash, and this clinkd serves on as before.
func (d *Daemon) takeFromSibling(ctx, linkCtx context.Context, g *giving) {
	defer g.raw.Close()
	if d.comp.State() != component.Linked {
		g.conn.SendRefusal("the sibling is not linked to the XMPP server")
		d.log.Warn("scale-in: refused a stopping sibling's offer: this clinkd is not linked")
		return
	}
	g.conn.SetOffer()
	if err := g.conn.SendHello(d.cfg.Link.Domain); err != nil {
		d.log.Warn("scale-in: the stopping sibling went away", "err", err)
		return
	}
	d.relay.AwaitHandoff()
	d.devices.ExpectImport()
	took, err := func() (expiry.HandoffCounts, error) {
		g.raw.SetDeadline(time.Now().Add(handoffLinkTimeout))
		links, err := g.conn.ReceiveReleased()
		if err != nil {
			return expiry.HandoffCounts{}, fmt.Errorf("the sibling did not give up its links: %w", err)
		}
		if err := d.addLinks(linkCtx, links); err != nil {
			d.log.Error("scale-in: not every slot the sibling held is linked yet; its users wait until it is", "err", err)
		}
		g.raw.SetDeadline(time.Now().Add(handoffStateTimeout))
		if err := g.conn.SendLinked(); err != nil {
			return expiry.HandoffCounts{}, err
		}
		took, err := g.conn.ReceiveState(d.relay, d.devices)
		if err != nil {
			return took, err
		}
		return took, g.conn.SendDone(took)
	}()
	d.relay.EndHandoff(ctx)
	if err != nil {
		d.devices.Import(nil)
		d.log.Error("scale-in: the stopping sibling's state did not arrive (what it held is lost)", "err", err)
		return
	}
	d.log.Info("scale-in: took a stopping sibling's slots and state", "links", d.Links(), "messages", took.Messages, "receipts", took.Receipts,
		"users_seen", took.Seen, "devices", took.Devices, "took", time.Since(g.start).Round(time.Millisecond))
}

// scaleIn hands this stopping clinkd's slots and state to the sibling
// serving on expiry.scale_in_socket (link.balanced): it offers them, and
// once the sibling accepts, its relay goes quiet, it gives up every link
// and waits for the sibling to hold as many. It returns the handoff whose
// state is to go (sendState), or nil when there is none: no sibling
// serves there, or it refused, and the link is stopped as at any stop.
func (d *Daemon) scaleIn(ctx context.Context, stopLink, stopBG context.CancelFunc) *giving {
	path := d.cfg.Expiry.ScaleInSocket
	start := time.Now()
	raw, err := dialGiver(path)
	if err != nil {
		if errors.Is(err, errNoGiver) {
			err = errors.New("no clinkd serves on expiry.scale_in_socket")
		}
		d.log.Error("scale-in: stopping without handing over; the timed messages held here are lost", "err", err)
		stopLink()
		return nil
	}
	g := &giving{conn: expiry.NewHandoffConn(raw), raw: raw, start: start}
	g.conn.SetOffer()
	raw.SetDeadline(time.Now().Add(handoffHelloTimeout))
	err = g.conn.SendHello(d.cfg.Link.Domain)
	if err == nil {
		err = g.conn.ReceiveHello(d.cfg.Link.Domain)
	}
	if err == nil && !g.conn.Offer() {
		err = fmt.Errorf("%w: the answer to an offer is not an offer", expiry.ErrHandoffProtocol)
	}
	if err != nil {
		if errors.Is(err, expiry.ErrHandoffProtocol) {
			g.conn.SendRefusal(err.Error())
		}
		raw.Close()
		d.log.Error("scale-in: the sibling did not accept; stopping without handing over (the timed messages held here are lost)", "err", err)
		stopLink()
		return nil
	}
	d.log.Info("scale-in: handing this clinkd's slots and state to a sibling", "socket", path)
	d.relay.Quiesce()
	sctx, cancel := context.WithTimeout(ctx, handoffSyncTimeout)
	if err := d.comp.Sync(sctx); err != nil {
		d.log.Warn("scale-in: the server did not answer a ping; what this clinkd sent just before may be lost", "err", err)
	}
	cancel()
	stopBG()
	links := d.releaseLinks(ctx)
	stopLink()
	raw.SetDeadline(time.Now().Add(handoffLinkTimeout))
	err = g.conn.SendReleased(links)
	if err == nil {
		err = g.conn.ReceiveLinked()
	}
	if err != nil {
		raw.Close()
		d.log.Error("scale-in: the sibling went away after this clinkd gave up its links (the timed messages held here are lost)", "err", err)
		return nil
	}
	raw.SetDeadline(time.Time{})
	return g
}
