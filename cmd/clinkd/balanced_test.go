package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// balancedPair is two clinkd instances on one ejabberd that balances the
// component's domain between them by bare destination (docs/operators.md,
// "Several clinkd instances"): the same database, secret and component,
// each with link.balanced and a handoff socket of its own.
type balancedPair struct {
	srv          *lab.XMPPServer
	a            handoffSetup // instance A's config and socket
	bConfig      string       // instance B's config
	bSocket      string
	adminA       string
	adminB       string
	first, other *serveChild
}

func newBalancedPair(t *testing.T) *balancedPair {
	t.Helper()
	srv := labtest.NewXMPP(t, lab.XMPPOptions{Kind: lab.Ejabberd, Balancing: 2})
	p := &balancedPair{srv: srv, a: newHandoffSetup(t, srv)}
	text := strings.Replace(readConfig(t, p.a.config), "link:\n", "link:\n  balanced: true\n", 1)
	if err := os.WriteFile(p.a.config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	p.bSocket = filepath.Join(run, "handoff.sock")
	p.bConfig = filepath.Join(filepath.Dir(p.a.config), "clinkd-b.yaml")
	if err := os.WriteFile(p.bConfig, []byte(strings.Replace(text, p.a.socket, p.bSocket, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.first = startServe(t, p.a.config, "--takeover")
	p.adminA = serving(t, p.first)
	p.other = startServe(t, p.bConfig, "--takeover")
	p.adminB = serving(t, p.other)
	return p
}

// userOf signs users up and announces each until one is owned by the
// instance whose admin address is admin, and returns it with its device.
func (p *balancedPair) userOf(t *testing.T, admin string) (user, pass string, dev *client.Client) {
	t.Helper()
	for range 40 {
		u, pw := labtest.NewUser(t, p.srv)
		d := clinkdtest.Login(t, p.srv, u, pw)
		before := metric(t, admin, "clinkd_devices_online")
		announce(t, d, p.a.comp, u)
		if metric(t, admin, "clinkd_devices_online") > before {
			return u, pw, d
		}
		d.Close()
	}
	t.Fatal("40 users, none owned by the instance: is ejabberd balancing?")
	return "", "", nil
}

// TestBalancedRestart restarts one of two balanced clinkd instances by a
// handoff (clinkd serve --takeover, as systemd does): ejabberd gives each
// link a fixed slot, so the successor's link gets no slot while both
// instances hold theirs, and once the old link is gone the slot stays
// empty and ejabberd drops what it routes there. With link.balanced the
// old instance gives its slot up first and the successor links into it:
// a message held for an offline user of that slot is delivered when the
// user comes back, and new messages reach the slot's users.
func TestBalancedRestart(t *testing.T) {
	t.Parallel()
	p := newBalancedPair(t)
	comp := p.a.comp
	aj, _, a := p.userOf(t, p.adminB)
	bj, _, b := p.userOf(t, p.adminA)
	cj, cp, c := p.userOf(t, p.adminA)
	c.Close()
	alice := clinkdtest.Identity(t, "alice", aj)
	bob, carol := clinkdtest.Identity(t, "bob", bj), clinkdtest.Identity(t, "carol", cj)

	ctx := ctxFor(t, 3*time.Minute)
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	toCarol := sealTimed(t, alice, carol, cj, "held-"+tag, "for carol "+tag, time.Minute)
	if err := a.SendEnvelope(ctx, comp, jid.MustParse(cj), toCarol); err != nil {
		t.Fatal(err)
	}
	waitMetricAtLeast(t, p.adminA, "clinkd_expiry_held_messages", 1)

	second := startServe(t, p.a.config, "--takeover")
	second.line(t, regexp.MustCompile(`msg="takeover: state taken"`))
	exited(t, p.first, "the instance restarted")
	serving(t, second)

	toBob := sealTimed(t, alice, bob, bj, "after-"+tag, "for bob "+tag, time.Minute)
	if err := a.SendEnvelope(ctx, comp, jid.MustParse(bj), toBob); err != nil {
		t.Fatal(err)
	}
	next(t, b, "a message sent after the restart", envelopeWithID(toBob.ID))
	c = clinkdtest.Login(t, p.srv, cj, cp)
	announce(t, c, comp, cj)
	next(t, c, "the message held across the restart", envelopeWithID(toCarol.ID))
}

// waitMetricAtLeast waits until an unlabelled metric is at least want.
func waitMetricAtLeast(t *testing.T, admin, name string, want float64) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); metric(t, admin, name) < want; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want at least %v", name, metric(t, admin, name), want)
		}
	}
}
