package daemon

import (
	"context"
	"fmt"
	"sync"

	"github.com/clinkme/clinkd/component"
)

// On a balanced domain (link.balanced) ejabberd gives each link a slot of
// its own and keeps the number of slots until it restarts, so when one of
// several instances stops for good (scale-in) its slot does not go away:
// a sibling takes it with a second link (docs/expiry.md, "Scale-in").
// A clinkd therefore holds one link or more: d.comp, which its features
// send through, and the extra links, which only read and answer what
// ejabberd routes to their slots, through the same handlers.

// extraLink is a link beyond d.comp.
type extraLink struct {
	comp *component.Component
	stop context.CancelFunc
	done chan struct{} // closed when its Run returned
}

// addLinks makes n more links of the component, each taking a free slot,
// and waits up to handoffLinkTimeout for each to be up. They run until
// ctx ends (the daemon's link context) or stopExtraLinks. A link that is
// not up in time keeps trying, as any link does, and is reported.
func (d *Daemon) addLinks(ctx context.Context, n int) error {
	var slow error
	for range n {
		d.extraMu.Lock()
		index := len(d.extra) + 2
		d.extraMu.Unlock()
		l := d.comp.NewLink(d.log.With("part", "link", "link", index))
		lctx, stop := context.WithCancel(ctx)
		e := &extraLink{comp: l, stop: stop, done: make(chan struct{})}
		go func() {
			defer close(e.done)
			l.Run(lctx)
		}()
		d.extraMu.Lock()
		d.extra = append(d.extra, e)
		d.extraMu.Unlock()
		wctx, cancel := context.WithTimeout(ctx, handoffLinkTimeout)
		if err := l.WaitState(wctx, component.Linked); err != nil && slow == nil {
			slow = fmt.Errorf("daemon: link %d: %w", index, err)
		}
		cancel()
	}
	return slow
}

// links returns every link this clinkd holds, d.comp first.
func (d *Daemon) links() []*component.Component {
	d.extraMu.Lock()
	defer d.extraMu.Unlock()
	ls := []*component.Component{d.comp}
	for _, e := range d.extra {
		ls = append(ls, e.comp)
	}
	return ls
}

// Links is how many links to the XMPP server this clinkd holds, for tests.
func (d *Daemon) Links() int { return len(d.links()) }

// releaseLinks releases every link at once (component.Release: each
// closes its side of the stream and reads, holding what it reads, until
// the server closes the other) and returns how many there were. Their
// slots are free when it returns.
func (d *Daemon) releaseLinks(ctx context.Context) int {
	ls := d.links()
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, handoffReleaseTimeout)
			defer cancel()
			if err := l.Release(rctx); err != nil {
				d.log.Warn("handoff: link released without the server's close", "err", err)
			}
		})
	}
	wg.Wait()
	return len(ls)
}

// stopExtraLinks stops the extra links and waits until each has handled
// what it read.
func (d *Daemon) stopExtraLinks() {
	d.extraMu.Lock()
	ex := d.extra
	d.extra = nil
	d.extraMu.Unlock()
	for _, e := range ex {
		e.stop()
	}
	for _, e := range ex {
		<-e.done // bounded: a link drains for link.handler_timeout at most
	}
}
