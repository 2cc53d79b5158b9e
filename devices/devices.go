// Package devices tracks which devices of each user are online at clinkd.
//
// A ClinkMe device announces itself with directed presence to its own
// user's address at the component (package address), and the XMPP server
// sends unavailable presence to that address when the device goes away
// (XEP-0114 servers track directed presence; with stream management this
// can lag by minutes). The registry is in memory only: after a clinkd
// restart devices are known again as they re-announce.
package devices

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/component"
)

// OnlineFunc is called when a device announces itself; features use it to
// deliver what they hold for the user.
type OnlineFunc func(ctx context.Context, user, device jid.JID)

// Registry is the set of online devices, by user.
type Registry struct {
	maxPerUser int
	log        *slog.Logger
	online     prometheus.Gauge
	callbacks  []OnlineFunc

	mu    sync.Mutex
	users map[string]map[string]time.Time // bare user -> full device JID -> announced
}

// New returns an empty registry that keeps at most maxPerUser devices per
// user (default 16): a device that never says goodbye (the server was
// restarted under it) is eventually pushed out, so memory stays bounded.
func New(maxPerUser int, log *slog.Logger, reg prometheus.Registerer) *Registry {
	if maxPerUser <= 0 {
		maxPerUser = 16
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registry{
		maxPerUser: maxPerUser,
		log:        log,
		users:      make(map[string]map[string]time.Time),
		online: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clinkd_devices_online",
			Help: "Devices that announced themselves to clinkd and have not gone.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.online)
	}
	return r
}

// OnOnline registers f to be called, on the announcing device's worker,
// whenever a device announces itself. Call it before the component runs.
func (r *Registry) OnOnline(f OnlineFunc) { r.callbacks = append(r.callbacks, f) }

// Register makes the registry see presence sent to the component.
func (r *Registry) Register(c *component.Component) {
	c.HandlePresence(component.PresenceHandlerFunc(r.HandlePresence))
}

// HandlePresence records available and unavailable presence that a
// user's device sends to that user's own address at the component. A
// device may announce itself only at its own user's address.
func (r *Registry) HandlePresence(ctx context.Context, p *component.Stanza) error {
	user, err := address.User(p.To)
	if err != nil {
		return nil // presence to the component itself: nothing to track
	}
	switch p.Type {
	case "", string(stanza.UnavailablePresence):
	default:
		return nil // subscriptions, probes and errors are not announcements
	}
	if !p.From.Bare().Equal(user) || p.From.Resourcepart() == "" {
		if p.Type == "" {
			return component.Error(stanza.Forbidden, "a device announces itself only at its own user's address")
		}
		return nil
	}
	if p.Type == string(stanza.UnavailablePresence) {
		r.Gone(p.From)
		return nil
	}
	r.add(user, p.From)
	for _, f := range r.callbacks {
		f(ctx, user, p.From)
	}
	return nil
}

func (r *Registry) add(user, device jid.JID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := user.String()
	devs := r.users[u]
	if devs == nil {
		devs = make(map[string]time.Time)
		r.users[u] = devs
	}
	if _, ok := devs[device.String()]; !ok {
		if len(devs) >= r.maxPerUser {
			oldest, at := "", time.Time{}
			for d, t := range devs {
				if oldest == "" || t.Before(at) {
					oldest, at = d, t
				}
			}
			delete(devs, oldest)
			r.online.Dec()
		}
		r.online.Inc()
	}
	devs[device.String()] = time.Now()
}

// Gone forgets a device: it said goodbye, or a delivery to it bounced.
func (r *Registry) Gone(device jid.JID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := device.Bare().String()
	devs := r.users[u]
	if _, ok := devs[device.String()]; !ok {
		return
	}
	delete(devs, device.String())
	r.online.Dec()
	if len(devs) == 0 {
		delete(r.users, u)
	}
}

// Online returns the user's online devices.
func (r *Registry) Online(user jid.JID) []jid.JID {
	r.mu.Lock()
	defer r.mu.Unlock()
	devs := r.users[user.Bare().String()]
	out := make([]jid.JID, 0, len(devs))
	for d := range devs {
		j, err := jid.Parse(d)
		if err == nil {
			out = append(out, j)
		}
	}
	return out
}
