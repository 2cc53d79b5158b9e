package dispatch

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/extensions/expiryxml"
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
	users map[string]map[string]deviceEntry // bare user -> full device JID -> its entry
	// touched, while not nil, records the devices that announced
	// themselves or went since ExpectImport: Import leaves those as they
	// are.
	touched map[string]struct{}
}

// deviceEntry is what the registry knows of one online device.
type deviceEntry struct {
	// device is the device's full JID, as parsed when it was recorded:
	// Online, on every delivery, hands it out without parsing it again.
	device jid.JID
	at     time.Time // when it last announced itself
	id     string    // the stable id it announced (expiryxml.Device), or ""
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
		users:      make(map[string]map[string]deviceEntry),
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

func (d *Devices) add(user, device jid.JID, id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.touch(device)
	d.addLocked(user.String(), device.String(), deviceEntry{device: device, at: time.Now(), id: id})
}

// addLocked records device of user, pushing out the user's oldest device
// past maxPerUser. A device with an id replaces any other resource that
// announced the same id: the same device, connected again (the server's
// unavailable presence for the old session may come minutes later).
func (d *Devices) addLocked(u, device string, e deviceEntry) {
	devs := d.users[u]
	if devs == nil {
		devs = make(map[string]deviceEntry)
		d.users[u] = devs
	}
	if e.id != "" {
		for other, oe := range devs {
			if oe.id == e.id && other != device {
				delete(devs, other)
				d.online.Dec()
			}
		}
	}
	if _, ok := devs[device]; !ok {
		if len(devs) >= d.maxPerUser {
			oldest, oldestAt := "", time.Time{}
			for dev, oe := range devs {
				if oldest == "" || oe.at.Before(oldestAt) {
					oldest, oldestAt = dev, oe.at
				}
			}
			delete(devs, oldest)
			d.online.Dec()
		}
		d.online.Inc()
	}
	devs[device] = e
}

// Key is what a feature records of a device it delivered to, so that it
// delivers each thing once per device: "#" and the device's stable id
// when it announced one (it keeps it across reconnections and new
// resources), else its full JID.
func (d *Devices) Key(device jid.JID) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.users[device.Bare().String()][device.String()]; ok && e.id != "" {
		return "#" + e.id
	}
	return device.String()
}

// ID returns the stable id device announced, or "".
func (d *Devices) ID(device jid.JID) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.users[device.Bare().String()][device.String()].id
}

// Resolve returns where a key (Key) of one of user's devices reaches that
// device now: the full JID itself, or the online resource that announced
// the id; false when a device known by its id is not online.
func (d *Devices) Resolve(user jid.JID, key string) (jid.JID, bool) {
	id, byID := strings.CutPrefix(key, "#")
	if !byID {
		j, err := jid.Parse(key)
		return j, err == nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for dev, e := range d.users[user.Bare().String()] {
		if e.id == id {
			j, err := jid.Parse(dev)
			return j, err == nil
		}
	}
	return jid.JID{}, false
}

// gone forgets a device: it said goodbye, or a delivery to it bounced.
func (d *Devices) gone(device jid.JID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.touch(device)
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
	for _, e := range devs {
		out = append(out, e.device)
	}
	return out
}

// maxTouched bounds what ExpectImport records: a handoff takes seconds,
// in which far fewer devices come and go; past the bound Import may bring
// back a device that went meanwhile, which only costs a delivery the
// server drops.
const maxTouched = 1 << 18

func (d *Devices) touch(device jid.JID) {
	if d.touched != nil && len(d.touched) < maxTouched {
		d.touched[device.String()] = struct{}{}
	}
}

// A DeviceRecord is one device of the registry, as Export gives it and
// Import takes it.
type DeviceRecord struct {
	User      jid.JID   // bare JID
	Device    jid.JID   // full JID, of User
	Announced time.Time // when it last announced itself
	ID        string    // the stable id it announced, or ""
}

// Export returns every device in the registry, for a planned restart that
// hands the registry to the next clinkd (docs/expiry.md, "Restart and
// upgrade"): devices that stay connected then keep receiving without
// announcing themselves again.
func (d *Devices) Export() []DeviceRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []DeviceRecord
	for _, devs := range d.users {
		for _, e := range devs {
			out = append(out, DeviceRecord{User: e.device.Bare(), Device: e.device, Announced: e.at, ID: e.id})
		}
	}
	return out
}

// ExpectImport starts recording the devices that announce themselves or
// go from now on, until Import: what this registry learns after the
// clinkd that exports stopped reading is newer than what it exports.
func (d *Devices) ExpectImport() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.touched = make(map[string]struct{})
}

// Import adds the records of another clinkd's registry, within
// MaxPerUser, and reports how many it added. A device that announced
// itself or went since ExpectImport is left as it is: a device that left
// meanwhile is not brought back. A record whose device is not of its user
// is skipped. Recording stops.
func (d *Devices) Import(recs []DeviceRecord) (added int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range recs {
		dev := r.Device.String()
		if _, newer := d.touched[dev]; newer || r.Device.Resourcepart() == "" || !r.Device.Bare().Equal(r.User) {
			continue
		}
		devs := d.users[r.User.String()]
		if _, have := devs[dev]; have || len(devs) >= d.maxPerUser {
			continue // the devices known here are newer
		}
		if r.ID != "" && (expiryxml.CheckDeviceID(r.ID) != nil || hasID(devs, r.ID)) {
			continue // a malformed id, or the device is known here by a newer resource
		}
		d.addLocked(r.User.String(), dev, deviceEntry{device: r.Device, at: r.Announced, id: r.ID})
		added++
	}
	d.touched = nil
	return added
}

func hasID(devs map[string]deviceEntry, id string) bool {
	for _, e := range devs {
		if e.id == id {
			return true
		}
	}
	return false
}
