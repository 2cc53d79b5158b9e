package dispatch

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"
)

// Devices is the registry of the devices that announced themselves to
// clinkd and have not gone, by user. The Router writes it; features read
// it (Online) to know where to deliver.
//
// A ClinkMe device announces itself with directed presence to its own
// user's address at the component, and the XMPP server sends unavailable
// presence to that address when the device goes away (XEP-0114 servers
// track directed presence; with stream management this can lag by
// minutes). The registry is in memory only: after a clinkd restart devices
// are known again as they re-announce.
type Devices struct {
	maxPerUser int
	online     prometheus.Gauge

	mu    sync.Mutex
	users map[string]map[string]time.Time // bare user -> full device JID -> announced
}

// DevicesConfig bounds the registry.
type DevicesConfig struct {
	// MaxPerUser is how many devices are remembered per user (default
	// 16): a device that never says goodbye (the server was restarted
	// under it) is eventually pushed out by newer announcements, so memory
	// stays bounded.
	MaxPerUser int
	// Registerer, if set, gets the registry's gauge.
	Registerer prometheus.Registerer
}

// NewDevices returns an empty registry.
func NewDevices(cfg DevicesConfig) *Devices {
	if cfg.MaxPerUser <= 0 {
		cfg.MaxPerUser = 16
	}
	d := &Devices{
		maxPerUser: cfg.MaxPerUser,
		users:      make(map[string]map[string]time.Time),
		online: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clinkd_devices_online",
			Help: "Devices that announced themselves to clinkd and have not gone.",
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(d.online)
	}
	return d
}

func (d *Devices) add(user, device jid.JID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := user.String()
	devs := d.users[u]
	if devs == nil {
		devs = make(map[string]time.Time)
		d.users[u] = devs
	}
	if _, ok := devs[device.String()]; !ok {
		if len(devs) >= d.maxPerUser {
			oldest, at := "", time.Time{}
			for dev, t := range devs {
				if oldest == "" || t.Before(at) {
					oldest, at = dev, t
				}
			}
			delete(devs, oldest)
			d.online.Dec()
		}
		d.online.Inc()
	}
	devs[device.String()] = time.Now()
}

// gone forgets a device: it said goodbye, or a delivery to it bounced.
func (d *Devices) gone(device jid.JID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := device.Bare().String()
	devs := d.users[u]
	if _, ok := devs[device.String()]; !ok {
		return
	}
	delete(devs, device.String())
	d.online.Dec()
	if len(devs) == 0 {
		delete(d.users, u)
	}
}

// Online returns the user's online devices.
func (d *Devices) Online(user jid.JID) []jid.JID {
	d.mu.Lock()
	defer d.mu.Unlock()
	devs := d.users[user.Bare().String()]
	out := make([]jid.JID, 0, len(devs))
	for dev := range devs {
		j, err := jid.Parse(dev)
		if err == nil {
			out = append(out, j)
		}
	}
	return out
}
