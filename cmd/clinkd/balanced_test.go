package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/extensions/envelopexml"
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
	// A stopping A hands its slot and state to B (scale-in).
	text = strings.Replace(text, "  handoff_socket: "+p.a.socket, "  handoff_socket: "+p.a.socket+"\n  scale_in_socket: "+p.bSocket, 1)
	if err := os.WriteFile(p.a.config, []byte(text), 0o600); err != nil {
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

// balancedScene is what both tests start from: alice, a user of
// instance B, online; bob, a user of instance A, online; carol, a user of
// instance A, offline, with a timed message from alice (2 minutes) held
// for her at A.
type balancedScene struct {
	aj, bj, cj, cp string
	a, b           *client.Client
	alice, bob     envelope.Identity
	toCarol        *envelopexml.Envelope
	tag            string
}

func (p *balancedPair) scene(t *testing.T) balancedScene {
	t.Helper()
	var sc balancedScene
	var c *client.Client
	sc.aj, _, sc.a = p.userOf(t, p.adminB)
	sc.bj, _, sc.b = p.userOf(t, p.adminA)
	sc.cj, sc.cp, c = p.userOf(t, p.adminA)
	c.Close()
	sc.alice, sc.bob = clinkdtest.Identity(t, "alice", sc.aj), clinkdtest.Identity(t, "bob", sc.bj)
	carol := clinkdtest.Identity(t, "carol", sc.cj)
	sc.tag = strconv.FormatInt(time.Now().UnixNano(), 36)
	sc.toCarol = sealTimed(t, sc.alice, carol, sc.cj, "held-"+sc.tag, "for carol "+sc.tag, 2*time.Minute)
	if err := sc.a.SendEnvelope(ctxFor(t, time.Minute), p.a.comp, jid.MustParse(sc.cj), sc.toCarol); err != nil {
		t.Fatal(err)
	}
	waitMetricAtLeast(t, p.adminA, "clinkd_expiry_held_messages", 1)
	return sc
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
	sc := p.scene(t)
	comp, a, b, alice, bob, tag := p.a.comp, sc.a, sc.b, sc.alice, sc.bob, sc.tag
	ctx := ctxFor(t, 3*time.Minute)

	second := startServe(t, p.a.config, "--takeover")
	second.line(t, regexp.MustCompile(`msg="takeover: state taken"`))
	exited(t, p.first, "the instance restarted")
	serving(t, second)

	toBob := sealTimed(t, alice, bob, sc.bj, "after-"+tag, "for bob "+tag, time.Minute)
	if err := a.SendEnvelope(ctx, comp, jid.MustParse(sc.bj), toBob); err != nil {
		t.Fatal(err)
	}
	next(t, b, "a message sent after the restart", envelopeWithID(toBob.ID))
	c := clinkdtest.Login(t, p.srv, sc.cj, sc.cp)
	announce(t, c, comp, sc.cj)
	next(t, c, "the message held across the restart", envelopeWithID(sc.toCarol.ID))
}

// TestScaleIn stops one of two balanced clinkd instances for good
// (SIGTERM, as systemctl stop does) with expiry.scale_in_socket naming the
// other: ejabberd keeps the stopped instance's slot, so the other takes it
// with a second link and takes its state. A device of that slot that
// stayed connected keeps receiving without announcing itself again, a
// message held for an offline user of that slot is delivered when the
// user comes back, and the stopped instance exits 0. Then the instance
// that now holds two slots is restarted by a handoff: its successor takes
// both, and the users of both slots keep receiving. Before, the stopped
// instance's messages were lost and its users unserved until an instance
// linked into its slot again.
func TestScaleIn(t *testing.T) {
	t.Parallel()
	p := newBalancedPair(t)
	sc := p.scene(t)
	comp, a, b, alice, bob, tag := p.a.comp, sc.a, sc.b, sc.alice, sc.bob, sc.tag
	ctx := ctxFor(t, 3*time.Minute)

	if err := p.first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	took := p.other.line(t, regexp.MustCompile(`msg="scale-in: took a stopping sibling's slots and state" links=(\d+) messages=(\d+)`))
	if took[1] != "2" || took[2] == "0" {
		t.Errorf("the sibling holds %s links and took %s messages; want 2 links and carol's message", took[1], took[2])
	}
	p.first.line(t, regexp.MustCompile(`msg="handoff: state handed over; exiting"`))
	exited(t, p.first, "the instance scaled in")
	if n := metric(t, p.adminB, "clinkd_links_up"); n != 2 {
		t.Errorf("the sibling has %v links up, want 2", n)
	}

	// Bob's device stayed connected: it still receives, from B now.
	toBob := sealTimed(t, alice, bob, sc.bj, "after-"+tag, "for bob "+tag, 2*time.Minute)
	if err := a.SendEnvelope(ctx, comp, jid.MustParse(sc.bj), toBob); err != nil {
		t.Fatal(err)
	}
	next(t, b, "a message sent after the scale-in", envelopeWithID(toBob.ID))

	// B, holding both slots, is restarted: its successor takes both.
	third := startServe(t, p.bConfig, "--takeover")
	third.line(t, regexp.MustCompile(`msg="takeover: state taken"`))
	exited(t, p.other, "the instance restarted")
	toBob2 := sealTimed(t, alice, bob, sc.bj, "later-"+tag, "for bob "+tag, 2*time.Minute)
	if err := a.SendEnvelope(ctx, comp, jid.MustParse(sc.bj), toBob2); err != nil {
		t.Fatal(err)
	}
	next(t, b, "a message sent after the restart of the instance holding both slots", envelopeWithID(toBob2.ID))
	c := clinkdtest.Login(t, p.srv, sc.cj, sc.cp)
	announce(t, c, comp, sc.cj)
	next(t, c, "the message held across the scale-in and the restart", envelopeWithID(sc.toCarol.ID))
	// Alice, in the other slot, is served too: a message to her arrives.
	toAlice := sealTimed(t, bob, alice, sc.aj, "back-"+tag, "for alice "+tag, 2*time.Minute)
	if err := b.SendEnvelope(ctx, comp, jid.MustParse(sc.aj), toAlice); err != nil {
		t.Fatal(err)
	}
	next(t, a, "a message to the other slot's user", envelopeWithID(toAlice.ID))
	for _, c := range []*serveChild{p.first, p.other, third} {
		for _, l := range strings.Split(c.all(), "\n") {
			if strings.Contains(l, "scale-in") || strings.Contains(l, "handoff") || strings.Contains(l, "takeover") {
				t.Log(l)
			}
		}
	}
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

// TestScaleInWithoutSibling: a clinkd configured to hand over to a
// sibling on stop, whose sibling is not there, says so, stops, and exits
// non-zero: the handover it was asked for did not happen, and what it
// held is lost. A stop is not reported as the scale-in it was not.
func TestScaleInWithoutSibling(t *testing.T) {
	t.Parallel()
	p := newBalancedPair(t)
	// B stops first (it has no scale_in_socket: a plain stop, status 0).
	if err := p.other.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited(t, p.other, "the instance with no scale-in configured")
	if err := p.first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.first.line(t, regexp.MustCompile(`msg="scale-in: stopping without handing over; the timed messages held here are lost" err="no clinkd serves on expiry.scale_in_socket"`))
	select {
	case <-p.first.done:
		if p.first.err == nil {
			t.Errorf("clinkd exited 0 after a scale-in that did not happen:\n%s", p.first.all())
		}
	case <-time.After(time.Minute):
		t.Fatal("clinkd did not stop within a minute of SIGTERM")
	}
}
