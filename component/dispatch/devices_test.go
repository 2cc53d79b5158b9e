package dispatch_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
)

// TestDevicesHandoff: the registry one clinkd exports is imported by the
// next, except what the next one learnt meanwhile (a device that went is
// not brought back, a newer announcement is kept), within MaxPerUser.
func TestDevicesHandoff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	presence := func(r *dispatch.Router, text string) {
		t.Helper()
		s, err := component.ParseStanza(text, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.HandlePresence(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	announce := func(r *dispatch.Router, dev string) {
		presence(r, `<presence from='`+dev+`' to='`+aliceAddr+`'/>`)
	}
	names := func(devs *dispatch.Devices) string {
		var s []string
		for _, d := range devs.Online(jid.MustParse("alice@example.org")) {
			s = append(s, d.Resourcepart())
		}
		slices.Sort(s)
		return strings.Join(s, ",")
	}

	old, oldDevs, _ := newRouter(t)
	announce(old, "alice@example.org/phone")
	announce(old, "alice@example.org/laptop")
	recs := oldDevs.Export()
	if len(recs) != 2 {
		t.Fatalf("Export = %v, want 2 devices", recs)
	}

	next, nextDevs, _ := newRouter(t)
	nextDevs.ExpectImport()
	// Meanwhile the laptop leaves (the server tells the new clinkd).
	presence(next, `<presence type='unavailable' from='alice@example.org/laptop' to='`+aliceAddr+`'/>`)
	// A record of another user's device is not taken.
	bad := dispatch.DeviceRecord{User: jid.MustParse("alice@example.org"), Device: jid.MustParse("mallory@example.org/x"), Announced: time.Now()}
	if n := nextDevs.Import(append(recs, bad)); n != 1 || names(nextDevs) != "phone" {
		t.Errorf("Import = %d, devices %q; want 1 and phone (the laptop left meanwhile)", n, names(nextDevs))
	}

	// Without ExpectImport nothing is held back; MaxPerUser (2) still
	// bounds, and devices known here win over imported ones.
	_, third, _ := newRouter(t)
	if n := third.Import(recs); n != 2 || names(third) != "laptop,phone" {
		t.Errorf("Import = %d, devices %q; want 2", n, names(third))
	}
	full, fullDevs, _ := newRouter(t)
	announce(full, "alice@example.org/tablet")
	announce(full, "alice@example.org/watch")
	if n := fullDevs.Import(recs); n != 0 || names(fullDevs) != "tablet,watch" {
		t.Errorf("Import into a full registry = %d, devices %q; want 0 and the newer tablet,watch", n, names(fullDevs))
	}
}

// TestDeviceIDs: a device that announces a stable id is one device
// however many resources it comes back with: a new resource with the same
// id replaces the old, Key names it by id, Resolve finds its current
// resource, the id travels in a handoff, and an imported record does not
// push out the same device known here by a newer resource. A malformed id
// is refused.
func TestDeviceIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	alice := jid.MustParse("alice@example.org")
	announce := func(r *dispatch.Router, dev, id string) error {
		t.Helper()
		payload := ""
		if id != "" {
			payload = `<device xmlns='urn:clinkme:expiry:0' id='` + id + `'/>`
		}
		s, err := component.ParseStanza(`<presence from='`+dev+`' to='`+aliceAddr+`'>`+payload+`</presence>`, 4096)
		if err != nil {
			t.Fatal(err)
		}
		return r.HandlePresence(ctx, s)
	}
	r, devs, _ := newRouter(t)
	for _, a := range []struct{ dev, id string }{
		{"alice@example.org/r1", "phone"},
		{"alice@example.org/r2", "phone"}, // the phone again, new session
		{"alice@example.org/laptop", ""},
	} {
		if err := announce(r, a.dev, a.id); err != nil {
			t.Fatal(err)
		}
	}
	var online []string
	for _, d := range devs.Online(alice) {
		online = append(online, d.Resourcepart())
	}
	slices.Sort(online)
	if strings.Join(online, ",") != "laptop,r2" {
		t.Errorf("online = %v, want laptop and r2 (r1 was the same device)", online)
	}
	for dev, want := range map[string]string{
		"alice@example.org/r2":     "#phone",
		"alice@example.org/laptop": "alice@example.org/laptop",
		"alice@example.org/r1":     "alice@example.org/r1", // gone: by its JID
	} {
		if got := devs.Key(jid.MustParse(dev)); got != want {
			t.Errorf("Key(%s) = %q, want %q", dev, got, want)
		}
	}
	if j, ok := devs.Resolve(alice, "#phone"); !ok || j.Resourcepart() != "r2" {
		t.Errorf("Resolve(#phone) = %v, %v; want r2", j, ok)
	}
	if _, ok := devs.Resolve(alice, "#tablet"); ok {
		t.Error("Resolve found a device id nobody announced")
	}

	// A handoff carries the ids; the taker's newer resource of the same
	// device wins over the imported one.
	recs := devs.Export()
	next, nextDevs, _ := newRouter(t)
	nextDevs.ExpectImport()
	if err := announce(next, "alice@example.org/r3", "phone"); err != nil {
		t.Fatal(err)
	}
	if n := nextDevs.Import(recs); n != 1 {
		t.Errorf("Import = %d, want 1 (the laptop; the phone is known here as r3)", n)
	}
	if j, ok := nextDevs.Resolve(alice, "#phone"); !ok || j.Resourcepart() != "r3" {
		t.Errorf("after the handoff Resolve(#phone) = %v, %v; want r3", j, ok)
	}

	for _, id := range []string{"has space", strings.Repeat("x", 65), ""} {
		err := announce(r, "alice@example.org/r9", id)
		if id == "" {
			continue // no <device/>: an announcement without an id
		}
		if err == nil || !strings.Contains(err.Error(), "id") {
			t.Errorf("announcement with id %q = %v, want bad-request", id, err)
		}
	}
}
