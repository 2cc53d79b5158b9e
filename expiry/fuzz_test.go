package expiry_test

import (
	"context"
	"encoding/xml"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/expiry"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
)

// recorder stands in for the link and the device registry in unit tests
// of pure logic; everything that crosses a process is tested against the
// real servers in the e2e tests.
type recorder struct {
	mu   sync.Mutex
	sent int
}

func (r *recorder) SendMessage(ctx context.Context, m stanza.Message, payload ...any) error {
	r.mu.Lock()
	r.sent++
	r.mu.Unlock()
	return nil
}
func (r *recorder) Online(jid.JID) []jid.JID {
	return []jid.JID{jid.MustParse("bob@example.org/phone"), jid.MustParse("alice@example.org/laptop")}
}

func (r *recorder) Key(device jid.JID) string { return device.String() }

func (r *recorder) Resolve(_ jid.JID, key string) (jid.JID, bool) {
	j, err := jid.Parse(key)
	return j, err == nil
}

// linkAndDevices is what stands in for the component link and the device
// registry in newRouter.
type linkAndDevices interface {
	expiry.Sender
	expiry.Devices
}

// Access rules for newRouter: clinkd's default rate per sender, or none
// for a test that sends thousands of messages from one sender.
var (
	defaultAccess = dispatch.Access{Local: "example.org"}
	unlimited     = dispatch.Access{Local: "example.org", PerMinute: -1}
)

// newRouter returns the relay behind an envelope router, as clinkd wires
// them, at clink.example.org for users of example.org: l is the link and
// says which devices are online.
func newRouter(t testing.TB, cfg expiry.Config, l linkAndDevices, access dispatch.Access) (*expiry.Relay, *dispatch.Router) {
	t.Helper()
	cfg.Component, cfg.Send, cfg.Devices, cfg.Entitlements = jid.MustParse("clink.example.org"), l, l, expiry.NoEntitlementCheck{}
	r, err := expiry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	router, err := dispatch.New(dispatch.Config{
		Component: cfg.Component, Devices: dispatch.NewDevices(dispatch.DevicesConfig{}),
		Timed: r, Ordinary: dispatch.Unavailable{Text: "off"}, Watchers: []dispatch.Watcher{r},
		Access: access,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, router
}

// FuzzHandleMessage feeds arbitrary stanzas from a device (and copies from
// clinkd's own domain) to the relay, through the envelope router: no input may panic, hold more than the
// quotas allow, or hold anything that was refused.
func FuzzHandleMessage(f *testing.F) {
	for _, s := range []string{
		`<message type='headline' from='alice@example.org/laptop' to='bob\40example.org@clink.example.org'><envelope xmlns='urn:clinkme:envelope:0' kind='standard'/><no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`,
		`<message from='alice@example.org/laptop' to='bob\40example.org@clink.example.org'><body>hi</body></message>`,
		`<message type='headline' from='bob\40example.org@clink.example.org' to='alice\40example.org@clink.example.org'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/laptop'/></message>`,
		`<message type='error' from='bob@example.org/phone' to='alice\40example.org@clink.example.org'/>`,
	} {
		f.Add(s)
	}
	// A valid timed message, so the fuzzer starts from what passes.
	now := time.Unix(1_800_000_000, 0).UTC()
	alice := clinkdtest.Identity(f, "alice", "alice@example.org")
	bob := clinkdtest.Identity(f, "bob", "bob@example.org")
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}},
		envelope.Header{ID: "m1", Time: now, Expires: now.Add(time.Minute)}, envelope.Content{Kind: envelope.KindText, Text: "hi"})
	if err != nil {
		f.Fatal(err)
	}
	raw, err := xml.Marshal(env)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(`<message type='headline' from='alice@example.org/laptop' to='bob\40example.org@clink.example.org'>` + string(raw) +
		`<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`)
	f.Add(`<message type='headline' from='bob\40example.org@clink.example.org' to='alice\40example.org@clink.example.org'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/laptop'/>` + string(raw) + `</message>`)
	f.Fuzz(func(t *testing.T, in string) {
		s, err := component.ParseStanza(in, 256<<10)
		if err != nil || s.Kind != component.KindMessage {
			return
		}
		rec := &recorder{}
		r, router := newRouter(t, expiry.Config{Limits: expiry.Limits{PerUserMessages: 2, TotalBytes: 1 << 20}, Now: func() time.Time { return time.Unix(1_800_000_000, 0) }}, rec, defaultAccess)
		err = router.HandleMessage(context.Background(), s)
		n, bytes := r.Held()
		if err != nil && n != 0 {
			t.Fatalf("refused (%v) but holds %d", err, n)
		}
		if n > 2 || bytes > 1<<20 {
			t.Fatalf("holds %d messages, %d bytes: over quota", n, bytes)
		}
		if strings.Contains(in, "<body") && n != 0 {
			t.Fatalf("held a message with a plaintext body")
		}
	})
}

// TestSeedsReachTheRelay makes sure the fuzz seeds exercise the accepting
// path, not only refusals: the valid seed is held and delivered.
func TestSeedsReachTheRelay(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	alice := clinkdtest.Identity(t, "alice", "alice@example.org")
	bob := clinkdtest.Identity(t, "bob", "bob@example.org")
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}},
		envelope.Header{ID: "m1", Time: now, Expires: now.Add(time.Minute)}, envelope.Content{Kind: envelope.KindText, Text: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := xml.Marshal(env)
	s, err := component.ParseStanza(`<message type='headline' from='alice@example.org/laptop' to='bob\40example.org@clink.example.org'>`+string(raw)+
		`<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	r, router := newRouter(t, expiry.Config{Now: func() time.Time { return now }}, rec, defaultAccess)
	if err := router.HandleMessage(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	// Held: the message and alice's copy (the recorder has a device of
	// every user online here, so the copy is not sent through the server).
	if n, _ := r.Held(); n != 2 || rec.sent == 0 {
		t.Fatalf("held %d, sent %d; want 2 held (the message and its copy) and deliveries", n, rec.sent)
	}
}

// receiptRecorder records the receipts the relay forwards.
type receiptRecorder struct {
	recorder
	mu        sync.Mutex
	forwarded []string // "to id"
}

func (r *receiptRecorder) SendMessage(ctx context.Context, m stanza.Message, payload ...any) error {
	for _, p := range payload {
		if rc, ok := p.(receiptsxml.Received); ok {
			r.mu.Lock()
			r.forwarded = append(r.forwarded, m.To.String()+" "+rc.ID)
			r.mu.Unlock()
		}
	}
	return r.recorder.SendMessage(ctx, m, payload...)
}

// TestReceiptBeforeCopy: bob's receipt for a timed message from alice is
// the timed message's even when it reaches clinkd before alice's copy has
// come back through the server (seen on Prosody: the receipt went to the
// ordinary tracker, which had no row for it, and was dropped).
func TestReceiptBeforeCopy(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0).UTC()
	alice := clinkdtest.Identity(t, "alice", "alice@example.org")
	bob := clinkdtest.Identity(t, "bob", "bob@example.org")
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}},
		envelope.Header{ID: "m1", Time: now, Expires: now.Add(time.Minute)}, envelope.Content{Kind: envelope.KindText, Text: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := xml.Marshal(env)
	rec := &receiptRecorder{}
	cfg := expiry.Config{Now: func() time.Time { return now }}
	cfg.Component, cfg.Send, cfg.Devices, cfg.Entitlements = jid.MustParse("clink.example.org"), rec, rec, expiry.NoEntitlementCheck{}
	r, err := expiry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	router, err := dispatch.New(dispatch.Config{
		Component: cfg.Component, Devices: dispatch.NewDevices(dispatch.DevicesConfig{}),
		Timed: r, Ordinary: dispatch.Unavailable{Text: "off"}, Access: dispatch.Access{Local: "example.org"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{
		`<message type='headline' from='alice@example.org/laptop' to='bob\40example.org@clink.example.org'>` + string(raw) +
			`<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`,
		`<message from='bob@example.org/phone' to='alice\40example.org@clink.example.org'><received xmlns='urn:xmpp:receipts' id='m1'/></message>`,
	} {
		s, err := component.ParseStanza(text, 256<<10)
		if err != nil {
			t.Fatal(err)
		}
		if err := router.HandleMessage(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.forwarded) == 0 {
		t.Fatal("the receipt that overtook the copy was not forwarded to alice's devices")
	}
}
