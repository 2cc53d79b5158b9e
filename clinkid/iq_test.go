package clinkid_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/clinkid"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/clinkidxml"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestEntitlementsIQ asks clinkd for entitlements over XMPP from a real
// server whose users are not all ClinkID accounts (internal auth): the
// component advertises the namespace, answers item-not-found for a user
// without an account, bad-request for a set, the account's entitlements
// once it has one, and resource-constraint past the rate limit.
func TestEntitlementsIQ(t *testing.T) {
	t.Parallel()
	srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: lab.Prosody})
	d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Database = daemon.DatabaseConfig{URL: labtest.NewDatabase(t), Migrate: true}
		c.ClinkID = daemon.ClinkIDConfig{Enabled: true, Argon2MemoryKiB: 256, Argon2Iterations: 1, Argon2Parallelism: 1}
	})
	user, pass := labtest.NewUser(t, srv)
	dev := clinkdtest.Login(t, srv, user, pass)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	comp := d.Component().Domain()

	info, err := dev.DiscoInfo(ctx, comp)
	if err != nil {
		t.Fatal(err)
	}
	var feats []string
	for _, f := range info.Features {
		feats = append(feats, f.Var)
	}
	if !slices.Contains(feats, clinkidxml.NS) {
		t.Errorf("disco#info features = %v, want %s", feats, clinkidxml.NS)
	}

	cond := func(err error) stanza.Condition {
		var se stanza.Error
		if errors.As(err, &se) {
			return se.Condition
		}
		return ""
	}
	if _, err := dev.Entitlements(ctx, comp); cond(err) != stanza.ItemNotFound {
		t.Errorf("Entitlements without a ClinkID account = %v, want item-not-found", err)
	}
	if err := dev.IQ(ctx, stanza.SetIQ, comp, clinkidxml.Entitlements{}, nil); cond(err) != stanza.BadRequest {
		t.Errorf("entitlements IQ set = %v, want bad-request", err)
	}

	local, _, _ := strings.Cut(user, "@")
	svc := d.ClinkID()
	if _, err := svc.CreateAccount(ctx, local, "a password of "+local, ""); err != nil {
		t.Fatal(err)
	}
	if ents, err := dev.Entitlements(ctx, comp); err != nil || len(ents) != 0 {
		t.Errorf("Entitlements of a new account = %v, %v, want none", ents, err)
	}
	if err := svc.Grant(ctx, local, clinkid.EntitlementSecure, "test"); err != nil {
		t.Fatal(err)
	}
	if ents, err := dev.Entitlements(ctx, comp); err != nil || !slices.Equal(ents, []string{"secure"}) {
		t.Errorf("Entitlements after a grant = %v, %v, want [secure]", ents, err)
	}
	if ok, err := svc.HasEntitlement(ctx, user, clinkid.EntitlementSecure); !ok || err != nil {
		t.Errorf("HasEntitlement(%s) = %v, %v, want true", user, ok, err)
	}
	// 30 a minute with bursts of 10: the asks so far and these run past
	// it.
	var limited bool
	for range 12 {
		if _, err := dev.Entitlements(ctx, comp); cond(err) == stanza.ResourceConstraint {
			limited = true
			break
		}
	}
	if !limited {
		t.Error("no resource-constraint after a burst of entitlement requests")
	}
}
