package dispatch_test

import (
	"context"
	"encoding/xml"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/extensions/envelopexml"
)

// features records what the router hands to each feature. It stands in
// for expiry and receipts in these tests of pure routing logic; the
// features are tested end to end against the real servers in their own
// packages.
type features struct {
	mu        sync.Mutex
	calls     []string
	timedHeld map[string]bool // receipt ids the Timed feature claims
}

func (f *features) add(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *features) HandleTimed(_ context.Context, e *dispatch.Envelope) error {
	f.add("timed " + e.Body.ID + " " + e.Sender.String() + "->" + e.Recipient.String())
	return nil
}

func (f *features) HandleCopy(_ context.Context, c *dispatch.Copy) error {
	f.add("copy " + c.Body.ID + " " + c.Owner.String() + " by " + c.By.String())
	return nil
}

func (f *features) HandleTimedReceipt(_ context.Context, r *dispatch.Receipt) (bool, error) {
	if !f.timedHeld[r.ID] {
		return false, nil
	}
	f.add("timed-receipt " + string(r.Kind) + " " + r.ID)
	return true, nil
}

func (f *features) HandleOrdinary(_ context.Context, e *dispatch.Envelope) error {
	f.add("ordinary " + e.Body.ID + " " + e.Sender.String() + "->" + e.Recipient.String())
	return nil
}

func (f *features) HandleReceipt(_ context.Context, r *dispatch.Receipt) error {
	f.add("receipt " + string(r.Kind) + " " + r.ID + " " + r.Reader.String() + "->" + r.Owner.String())
	return nil
}

func (f *features) DeviceOnline(_ context.Context, user, device jid.JID) {
	f.add("online " + device.String())
}

// envelopeXML is a structurally valid envelope from alice to bob; the
// router checks form, author and recipient, never the signature.
func envelopeXML(t testing.TB, id string, expires time.Time) string {
	t.Helper()
	now := time.Unix(1_800_000_000, 0).UTC()
	e := envelopexml.Envelope{
		Kind: envelopexml.Standard, From: "alice@example.org", To: []string{"bob@example.org"}, ID: id, Time: now, Expires: expires,
		Keys:      []envelopexml.WrappedKey{{Fingerprint: make([]byte, 32), Key: make([]byte, 384)}},
		Nonce:     make([]byte, 12),
		Payload:   make([]byte, 32),
		Signature: make([]byte, 384),
	}
	if err := e.Validate(); err != nil {
		t.Fatalf("test envelope: %v", err)
	}
	b, err := xml.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const (
	bobAddr   = `bob\40example.org@clink.example.org`
	aliceAddr = `alice\40example.org@clink.example.org`
	hints     = `<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/>`
)

func newRouter(t testing.TB) (*dispatch.Router, *dispatch.Devices, *features) {
	t.Helper()
	f := &features{timedHeld: map[string]bool{"t1": true}}
	devs := dispatch.NewDevices(dispatch.DevicesConfig{MaxPerUser: 2})
	r, err := dispatch.New(dispatch.Config{
		Component: jid.MustParse("clink.example.org"), Devices: devs,
		Timed: f, Ordinary: f, Watchers: []dispatch.Watcher{f},
		Access: dispatch.Access{Local: "example.org"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, devs, f
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	expires := time.Unix(1_800_000_060, 0).UTC()
	tests := []struct {
		name   string
		stanza string
		want   string // the one feature call, "" for none
		cond   stanza.Condition
	}{
		{"timed envelope to Timed",
			`<message type='headline' from='alice@example.org/phone' to='` + bobAddr + `'>` + envelopeXML(t, "t1", expires) + hints + `</message>`,
			"timed t1 alice@example.org->bob@example.org", ""},
		{"ordinary envelope to Ordinary",
			`<message type='chat' from='alice@example.org/phone' to='` + bobAddr + `'>` + envelopeXML(t, "o1", time.Time{}) + `</message>`,
			"ordinary o1 alice@example.org->bob@example.org", ""},
		{"an envelope after a receipt request is still routed",
			`<message from='alice@example.org/phone' to='` + bobAddr + `'><request xmlns='urn:xmpp:receipts'/>` + envelopeXML(t, "o2", time.Time{}) + `</message>`,
			"ordinary o2 alice@example.org->bob@example.org", ""},
		{"copy from the component to Timed",
			`<message type='headline' from='` + bobAddr + `' to='` + aliceAddr + `'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/phone'/>` + envelopeXML(t, "t1", expires) + `</message>`,
			"copy t1 alice@example.org by alice@example.org/phone", ""},
		{"copy from a user is refused",
			`<message type='headline' from='mallory@example.org/x' to='` + aliceAddr + `'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/phone'/>` + envelopeXML(t, "t1", expires) + `</message>`,
			"", stanza.Forbidden},
		{"copy by another user's device is refused",
			`<message type='headline' from='` + bobAddr + `' to='` + aliceAddr + `'><copy xmlns='urn:clinkme:expiry:0' by='mallory@example.org/phone'/>` + envelopeXML(t, "t1", expires) + `</message>`,
			"", stanza.BadRequest},
		{"copy of an ordinary message is refused",
			`<message type='headline' from='` + bobAddr + `' to='` + aliceAddr + `'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/phone'/>` + envelopeXML(t, "o1", time.Time{}) + `</message>`,
			"", stanza.BadRequest},
		{"receipt of a timed message to Timed",
			`<message from='bob@example.org/pc' to='` + aliceAddr + `'><received xmlns='urn:xmpp:receipts' id='t1'/></message>`,
			"timed-receipt received t1", ""},
		{"receipt of another message to Ordinary",
			`<message from='bob@example.org/pc' to='` + aliceAddr + `'><received xmlns='urn:xmpp:receipts' id='o1'/></message>`,
			"receipt received o1 bob@example.org->alice@example.org", ""},
		{"read marker to Ordinary",
			`<message from='bob@example.org/pc' to='` + aliceAddr + `'><displayed xmlns='urn:xmpp:chat-markers:0' id='o1'/></message>`,
			"receipt displayed o1 bob@example.org->alice@example.org", ""},
		{"receipt without an id",
			`<message from='bob@example.org/pc' to='` + aliceAddr + `'><received xmlns='urn:xmpp:receipts'/></message>`,
			"", stanza.BadRequest},
		{"receipt to the component itself",
			`<message from='bob@example.org/pc' to='clink.example.org'><received xmlns='urn:xmpp:receipts' id='o1'/></message>`,
			"", stanza.BadRequest},
		{"a receipt request alone asks nothing",
			`<message from='bob@example.org/pc' to='` + aliceAddr + `'><request xmlns='urn:xmpp:receipts'/></message>`,
			"", ""},
		{"plaintext beside the envelope",
			`<message xmlns='jabber:component:accept' from='alice@example.org/phone' to='` + bobAddr + `'><body>hi</body>` + envelopeXML(t, "o1", time.Time{}) + `</message>`,
			"", stanza.NotAcceptable},
		{"envelope by someone else",
			`<message from='mallory@example.org/phone' to='` + bobAddr + `'>` + envelopeXML(t, "o1", time.Time{}) + `</message>`,
			"", stanza.NotAcceptable},
		{"envelope not addressed to the recipient",
			`<message from='alice@example.org/phone' to='carol\40example.org@clink.example.org'>` + envelopeXML(t, "o1", time.Time{}) + `</message>`,
			"", stanza.NotAcceptable},
		{"envelope to the component itself",
			`<message from='alice@example.org/phone' to='clink.example.org'>` + envelopeXML(t, "o1", time.Time{}) + `</message>`,
			"", stanza.BadRequest},
		{"malformed envelope",
			`<message from='alice@example.org/phone' to='` + bobAddr + `'><envelope xmlns='urn:clinkme:envelope:0' kind='standard'/></message>`,
			"", stanza.BadRequest},
		{"other payload in the envelope namespace",
			`<message from='alice@example.org/phone' to='` + bobAddr + `'><x xmlns='urn:clinkme:envelope:0'/></message>`,
			"", stanza.BadRequest},
		{"expiry payload without an envelope",
			`<message from='alice@example.org/phone' to='` + bobAddr + `'><timed xmlns='urn:clinkme:expiry:0' expires='2027-01-01T00:00:00Z'/></message>`,
			"", stanza.BadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, _, f := newRouter(t)
			s, err := component.ParseStanza(tt.stanza, 256<<10)
			if err != nil {
				t.Fatal(err)
			}
			err = r.HandleMessage(context.Background(), s)
			var se stanza.Error
			switch {
			case tt.cond == "" && err != nil:
				t.Fatalf("HandleMessage = %v, want nil", err)
			case tt.cond != "" && (!errors.As(err, &se) || se.Condition != tt.cond):
				t.Fatalf("HandleMessage = %v, want %s", err, tt.cond)
			}
			var want []string
			if tt.want != "" {
				want = []string{tt.want}
			}
			if strings.Join(f.calls, "|") != strings.Join(want, "|") {
				t.Errorf("features got %q, want %q", f.calls, want)
			}
		})
	}
}

func TestPresence(t *testing.T) {
	t.Parallel()
	r, devs, f := newRouter(t)
	ctx := context.Background()
	send := func(text string) error {
		t.Helper()
		s, err := component.ParseStanza(text, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if s.Kind == component.KindMessage {
			return r.HandleMessage(ctx, s)
		}
		return r.HandlePresence(ctx, s)
	}
	alice := jid.MustParse("alice@example.org")
	online := func() int { return len(devs.Online(alice)) }

	if err := send(`<presence from='alice@example.org/phone' to='` + aliceAddr + `'/>`); err != nil || online() != 1 {
		t.Fatalf("announce: %v, %d online", err, online())
	}
	if strings.Join(f.calls, "|") != "online alice@example.org/phone" {
		t.Errorf("watchers got %q", f.calls)
	}
	// A device announces itself only at its own user's address.
	err := send(`<presence from='mallory@example.org/x' to='` + aliceAddr + `'/>`)
	if se := (stanza.Error{}); !errors.As(err, &se) || se.Condition != stanza.Forbidden || online() != 1 {
		t.Errorf("foreign announcement: %v, %d online", err, online())
	}
	// The registry keeps at most MaxPerUser (2) devices, dropping the oldest.
	send(`<presence from='alice@example.org/laptop' to='` + aliceAddr + `'/>`)
	send(`<presence from='alice@example.org/tablet' to='` + aliceAddr + `'/>`)
	if online() != 2 {
		t.Errorf("%d online, want the bound 2", online())
	}
	// A bounce forgets the device; so does unavailable presence.
	send(`<message type='error' from='alice@example.org/tablet' to='` + bobAddr + `'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>`)
	send(`<presence type='unavailable' from='alice@example.org/laptop' to='` + aliceAddr + `'/>`)
	if online() != 0 {
		t.Errorf("%d online after a bounce and a goodbye, want 0", online())
	}
	// Subscriptions and probes are not announcements.
	send(`<presence type='subscribe' from='alice@example.org/phone' to='` + aliceAddr + `'/>`)
	if online() != 0 {
		t.Errorf("a subscription registered a device")
	}
}

func TestNewChecksConfig(t *testing.T) {
	t.Parallel()
	f := &features{}
	devs := dispatch.NewDevices(dispatch.DevicesConfig{})
	comp := jid.MustParse("clink.example.org")
	for _, cfg := range []dispatch.Config{
		{Devices: devs, Timed: f, Ordinary: f},
		{Component: comp, Timed: f, Ordinary: f},
		{Component: comp, Devices: devs, Ordinary: f},
		{Component: comp, Devices: devs, Timed: f},
	} {
		if _, err := dispatch.New(cfg); err == nil {
			t.Errorf("New(%+v) accepted an incomplete config", cfg)
		}
	}
}

// FuzzHandleMessage checks the router's one rule on any input: a stanza
// reaches at most one feature, and a refusal reaches none.
func FuzzHandleMessage(f *testing.F) {
	expires := time.Unix(1_800_000_060, 0).UTC()
	for _, s := range []string{
		`<message type='headline' from='alice@example.org/phone' to='` + bobAddr + `'>` + envelopeXML(f, "t1", expires) + hints + `</message>`,
		`<message type='chat' from='alice@example.org/phone' to='` + bobAddr + `'>` + envelopeXML(f, "o1", time.Time{}) + `</message>`,
		`<message type='headline' from='` + bobAddr + `' to='` + aliceAddr + `'><copy xmlns='urn:clinkme:expiry:0' by='alice@example.org/phone'/>` + envelopeXML(f, "t1", expires) + `</message>`,
		`<message from='bob@example.org/pc' to='` + aliceAddr + `'><received xmlns='urn:xmpp:receipts' id='t1'/></message>`,
		`<message from='bob@example.org/pc' to='` + aliceAddr + `'><displayed xmlns='urn:xmpp:chat-markers:0' id='o1'/></message>`,
		`<message type='error' from='alice@example.org/tablet' to='` + bobAddr + `'/>`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := component.ParseStanza(in, 256<<10)
		if err != nil || s.Kind != component.KindMessage {
			return
		}
		r, _, feats := newRouter(t)
		err = r.HandleMessage(context.Background(), s)
		if len(feats.calls) > 1 {
			t.Fatalf("one stanza reached %d features: %q", len(feats.calls), feats.calls)
		}
		if err != nil && len(feats.calls) != 0 {
			t.Fatalf("refused (%v) but handed on: %q", err, feats.calls)
		}
	})
}

// TestAccess: the router serves users of the local domain and of the
// federated domains its operator lists, as senders and as recipients, and
// bounds what one sender hands it.
func TestAccess(t *testing.T) {
	t.Parallel()
	env := func(from, to string) string {
		e := envelopeXML(t, "o1", time.Time{})
		e = strings.ReplaceAll(e, `from="alice@example.org"`, `from="`+from+`"`)
		return strings.ReplaceAll(e, `jid="bob@example.org"`, `jid="`+to+`"`)
	}
	msg := func(from, to string) string {
		addr := strings.Replace(to, "@", `\40`, 1) + "@clink.example.org"
		return `<message type='chat' from='` + from + `/d' to='` + addr + `'>` + env(from, to) + `</message>`
	}
	tests := []struct {
		name      string
		federated []string
		stanza    string
		cond      stanza.Condition
	}{
		{"local to local", nil, msg("alice@example.org", "bob@example.org"), ""},
		{"from a federated user", nil, msg("eve@remote.example", "bob@example.org"), stanza.Forbidden},
		{"to a federated user", nil, msg("alice@example.org", "ghost@remote.example"), stanza.Forbidden},
		{"from a listed domain", []string{"remote.example"}, msg("eve@remote.example", "bob@example.org"), ""},
		{"to a listed domain", []string{"remote.example"}, msg("alice@example.org", "carol@remote.example"), ""},
		{"receipt from a federated user", nil, `<message from='eve@remote.example/d' to='` + aliceAddr + `'><received xmlns='urn:xmpp:receipts' id='o1'/></message>`, stanza.Forbidden},
		{"announcement of a federated user", nil, `<presence from='eve@remote.example/d' to='eve\40remote.example@clink.example.org'/>`, stanza.Forbidden},
		{"announcement of a listed domain's user", []string{"remote.example"}, `<presence from='eve@remote.example/d' to='eve\40remote.example@clink.example.org'/>`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &features{}
			r, err := dispatch.New(dispatch.Config{
				Component: jid.MustParse("clink.example.org"), Devices: dispatch.NewDevices(dispatch.DevicesConfig{}),
				Timed: f, Ordinary: f, Access: dispatch.Access{Local: "example.org", Federated: tt.federated},
			})
			if err != nil {
				t.Fatal(err)
			}
			s, err := component.ParseStanza(tt.stanza, 256<<10)
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind == component.KindPresence {
				err = r.HandlePresence(context.Background(), s)
			} else {
				err = r.HandleMessage(context.Background(), s)
			}
			var se stanza.Error
			switch {
			case tt.cond == "" && err != nil:
				t.Fatalf("= %v, want accepted", err)
			case tt.cond != "" && (!errors.As(err, &se) || se.Condition != tt.cond):
				t.Fatalf("= %v, want %s", err, tt.cond)
			case tt.cond != "" && len(f.calls) != 0:
				t.Fatalf("refused, yet handed on: %q", f.calls)
			}
		})
	}
}

func TestSenderRate(t *testing.T) {
	t.Parallel()
	f := &features{}
	r, err := dispatch.New(dispatch.Config{
		Component: jid.MustParse("clink.example.org"), Devices: dispatch.NewDevices(dispatch.DevicesConfig{}),
		Timed: f, Ordinary: f, Access: dispatch.Access{Local: "example.org", PerMinute: 1, Burst: 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	send := func(from string) error {
		s, err := component.ParseStanza(`<message from='`+from+`/d' to='`+aliceAddr+`'><received xmlns='urn:xmpp:receipts' id='o1'/></message>`, 4096)
		if err != nil {
			t.Fatal(err)
		}
		return r.HandleMessage(context.Background(), s)
	}
	for i := range 3 {
		if err := send("bob@example.org"); err != nil {
			t.Fatalf("receipt %d within the burst: %v", i, err)
		}
	}
	err = send("bob@example.org")
	if se := (stanza.Error{}); !errors.As(err, &se) || se.Condition != stanza.ResourceConstraint || !strings.Contains(se.Text[""], "a minute") {
		t.Fatalf("fourth receipt = %v, want resource-constraint naming the limit", err)
	}
	if err := send("carol@example.org"); err != nil {
		t.Errorf("another sender is limited by bob's flood: %v", err)
	}
}
