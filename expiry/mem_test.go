package expiry_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/component"
	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/expiry"
)

// BenchmarkHeldMemory measures what holding a timed message costs in
// memory beyond its envelope, at 100,000 held messages (10,000 users,
// ten each): the heap after holding them, minus the heap before, minus the
// envelope bytes themselves, per message. The baseline is the envelope
// bytes, measured in the same run.
//
//	go test -run '^$' -bench HeldMemory -benchtime 1x ./expiry/
func BenchmarkHeldMemory(b *testing.B) {
	const users, perUser = 10_000, 10
	now := time.Unix(1_800_000_000, 0).UTC()
	alice := clinkdtest.Identity(b, "alice", "alice@example.org")
	bob := clinkdtest.Identity(b, "bob", "bob@example.org")
	env, err := envelope.SealStandard(alice, []envelope.Recipient{{JID: "bob@example.org", Key: bob.PublicKey()}},
		envelope.Header{ID: "ID-PLACEHOLDER", Time: now, Expires: now.Add(time.Hour)},
		envelope.Content{Kind: envelope.KindText, Text: strings.Repeat("a typical short message ", 4)})
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := xml.Marshal(env)
	// One stanza per (user, message); the relay does not check signatures,
	// so only the id and the recipient change.
	var stanzas []*component.Stanza
	for u := range users {
		for m := range perUser {
			to := fmt.Sprintf("u%d@example.org", u)
			text := strings.ReplaceAll(string(raw), "ID-PLACEHOLDER", fmt.Sprintf("m%d", m))
			text = strings.Replace(text, `jid="bob@example.org"`, `jid="`+to+`"`, 1)
			s, err := component.ParseStanza(`<message type='headline' from='alice@example.org/laptop' to='`+strings.Replace(to, "@", `\40`, 1)+
				`@clink.example.org'>`+text+`<no-store xmlns='urn:xmpp:hints'/><no-permanent-store xmlns='urn:xmpp:hints'/></message>`, 256<<10)
			if err != nil {
				b.Fatal(err)
			}
			stanzas = append(stanzas, s)
		}
	}
	b.ResetTimer()
	for range b.N {
		rec := silent{}
		comp := jid.MustParse("clink.example.org")
		r, err := expiry.New(expiry.Config{Component: comp, Send: rec, Devices: rec, Entitlements: expiry.NoEntitlementCheck{},
			Limits: expiry.Limits{PerUserMessages: perUser, PerSenderMessages: 1 << 30, PerSenderBytes: 1 << 40, PerPairMessages: perUser, TotalBytes: 1 << 34},
			Now:    func() time.Time { return now }})
		if err != nil {
			b.Fatal(err)
		}
		router, err := dispatch.New(dispatch.Config{Component: comp, Devices: dispatch.NewDevices(dispatch.DevicesConfig{}),
			Timed: r, Ordinary: dispatch.Unavailable{Text: "off"}, Access: dispatch.Access{Local: "example.org", PerMinute: -1}})
		if err != nil {
			b.Fatal(err)
		}
		before := heap()
		for _, s := range stanzas {
			if err := router.HandleMessage(context.Background(), s); err != nil {
				b.Fatal(err)
			}
		}
		after := heap()
		n, payload := r.Held()
		// Held counts the sender's copies too, but those go through the
		// server and are never made here (silent drops them).
		if n != users*perUser {
			b.Fatalf("held %d, want %d", n, users*perUser)
		}
		overhead := float64(int64(after-before)-payload) / float64(n)
		b.ReportMetric(float64(payload)/float64(n), "envelope-B/msg")
		b.ReportMetric(overhead, "overhead-B/msg")
		b.ReportMetric(overhead/(float64(payload)/float64(n)), "overhead/envelope")
		runtime.KeepAlive(r)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// silent is a link and registry with no devices online and nothing sent.
type silent struct{}

func (silent) SendMessage(context.Context, stanza.Message, ...any) error { return nil }
func (silent) Online(jid.JID) []jid.JID                                  { return nil }
func (silent) Key(d jid.JID) string                                      { return d.String() }
func (silent) Resolve(jid.JID, string) (jid.JID, bool)                   { return jid.JID{}, false }
