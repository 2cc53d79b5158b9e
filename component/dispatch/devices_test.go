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
