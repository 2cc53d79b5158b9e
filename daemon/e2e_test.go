package daemon_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/ping"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestDiscoAndPing: a real user on each real server asks the component
// for its identity and features and pings it.
func TestDiscoAndPing(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d := clinkdtest.Start(t, srv, nil)
			dev := clinkdtest.NewDevice(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			comp := d.Component().Domain()
			info, err := dev.DiscoInfo(ctx, comp)
			if err != nil {
				t.Fatalf("disco#info: %v", err)
			}
			if len(info.Identity) != 1 || info.Identity[0].Category != "component" || info.Identity[0].Name != "clinkd" {
				t.Errorf("identities = %+v, want one component/generic named clinkd", info.Identity)
			}
			var feats []string
			for _, f := range info.Features {
				feats = append(feats, f.Var)
			}
			for _, want := range []string{disco.NSInfo, disco.NSItems, ping.NS} {
				if !slices.Contains(feats, want) {
					t.Errorf("features = %v, missing %s", feats, want)
				}
			}
			if err := dev.Ping(ctx, comp); err != nil {
				t.Errorf("ping: %v", err)
			}
		})
	}
}
