package daemon_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/lab/labtest"
)

// floodCase is one kind of bad stanza and the answer it must get.
type floodCase struct {
	name string
	// stanza renders the stanza with the id; to is the component.
	stanza func(id, to string) string
	// want is the error condition of the reply, or "" for no reply at all.
	want string
}

var floodCases = []floodCase{
	{"unknown payload", func(id, to string) string {
		return fmt.Sprintf(`<iq type='get' id='%s' to='%s'><x xmlns='urn:example:nobody'/></iq>`, id, to)
	}, "service-unavailable"},
	{"malformed payload", func(id, to string) string {
		return fmt.Sprintf(`<iq type='get' id='%s' to='%s'><services xmlns='urn:xmpp:extdisco:2'><service type='turn' host='h' port='not-a-number'/></services></iq>`, id, to)
	}, "bad-request"},
	{"two payloads", func(id, to string) string {
		return fmt.Sprintf(`<iq type='get' id='%s' to='%s'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>`, id, to)
	}, "bad-request"},
	{"oversized", func(id, to string) string {
		return fmt.Sprintf(`<iq type='get' id='%s' to='%s'><ping xmlns='urn:xmpp:ping'><pad>%s</pad></ping></iq>`, id, to, strings.Repeat("x", 6000))
	}, "policy-violation"},
	{"message without handler", func(id, to string) string {
		return fmt.Sprintf(`<message id='%s' to='%s'><body>hello component</body></message>`, id, to)
	}, "service-unavailable"},
	{"error iq", func(id, to string) string {
		return fmt.Sprintf(`<iq type='error' id='%s' to='%s'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`, id, to)
	}, ""},
	{"unsolicited result", func(id, to string) string {
		return fmt.Sprintf(`<iq type='result' id='%s' to='%s'/>`, id, to)
	}, ""},
	{"error message", func(id, to string) string {
		return fmt.Sprintf(`<message type='error' id='%s' to='%s'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>`, id, to)
	}, ""},
	{"error presence", func(id, to string) string {
		return fmt.Sprintf(`<presence type='error' id='%s' to='%s'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`, id, to)
	}, ""},
}

// TestFlood sends thousands of malformed, unknown, oversized and
// error-typed stanzas through each real server: each gets the right error
// or none, clinkd keeps serving, and its goroutines do not grow.
//
// It runs alone, one server after the other: it counts the process's
// goroutines, and another test's clinkd starting meanwhile (about twenty
// goroutines) would be counted as a leak.
func TestFlood(t *testing.T) {
	const perCase = 400 // 3,600 stanzas per server
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				// One sender sends the whole flood at once; what is tested
				// here is each stanza's answer, so its queue holds all of
				// it (a sender over its queue gets resource-constraint,
				// which component's and the abuse tests prove).
				c.Link.QueueDepth = 4096
				c.Link.MaxStanzaBytes = 4096
				c.TURN.Services = []string{"turn:127.0.0.1:3478"}
				c.TURN.Secret = "0123456789abcdef0123"
			})
			dev := clinkdtest.NewDevice(t, srv)
			comp := d.Component().Domain().String()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()

			// Warm up, then count goroutines with the pool and the link
			// established.
			if err := dev.Ping(ctx, d.Component().Domain()); err != nil {
				t.Fatal(err)
			}
			before := runtime.NumGoroutine()

			want := make(map[string]string) // id -> condition ("" for none)
			for i := range perCase {
				for ci, fc := range floodCases {
					id := fmt.Sprintf("f%d-%d", ci, i)
					want[id] = fc.want
					if err := dev.SendRaw(ctx, xml.NewDecoder(strings.NewReader(fc.stanza(id, comp)))); err != nil {
						t.Fatalf("send %s: %v", fc.name, err)
					}
				}
			}
			// A ping after everything: its answer means every stanza before
			// it was handled (one sender's stanzas are handled in order).
			if err := dev.Ping(ctx, d.Component().Domain()); err != nil {
				t.Fatalf("clinkd stopped serving after the flood: %v", err)
			}
			got := map[string]string{}
			for {
				s, err := dev.Next(ctx, func(s *client.Stanza) bool { return floodID.MatchString(s.ID) })
				if err != nil {
					t.Fatal(err)
				}
				if s.Type != "error" {
					t.Fatalf("reply to %s has type %q, want error", s.ID, s.Type)
				}
				var e struct {
					Cond []struct{ XMLName xml.Name } `xml:",any"`
				}
				s.Decode(xml.Name{Space: "jabber:client", Local: "error"}, &e)
				cond := ""
				for _, c := range e.Cond {
					if c.XMLName.Space == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.XMLName.Local != "text" {
						cond = c.XMLName.Local
					}
				}
				if _, dup := got[s.ID]; dup {
					t.Fatalf("two replies to %s", s.ID)
				}
				got[s.ID] = cond
				if len(got) == countReplies(want) {
					break
				}
			}
			bad := 0
			for id, w := range want {
				if g, ok := got[id]; w == "" && ok {
					t.Errorf("%s (%s) was answered with %q; error-typed stanzas must get no reply", id, caseOf(id), g)
					bad++
				} else if w != "" && g != w {
					t.Errorf("%s (%s): reply %q, want %q", id, caseOf(id), g, w)
					bad++
				}
				if bad > 10 {
					t.Fatal("too many wrong replies")
				}
			}
			// Nothing more may arrive: a second ping drains the pipe.
			if err := dev.Ping(ctx, d.Component().Domain()); err != nil {
				t.Fatal(err)
			}
			sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer scancel()
			if s, err := dev.Next(sctx, func(s *client.Stanza) bool { return floodID.MatchString(s.ID) }); err == nil {
				t.Errorf("extra reply %s %s", s.ID, s.Type)
			}
			// Goroutines settle back: allow the client's and the HTTP
			// scrapes' own; what must not happen is one per stanza.
			var after int
			for range 50 {
				if after = runtime.NumGoroutine(); after <= before+10 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if after > before+10 {
				t.Errorf("goroutines: %d before the flood, %d after", before, after)
			}
			t.Logf("%s: %d stanzas, %d error replies, goroutines %d -> %d", srv.Kind, len(want), len(got), before, after)
		})
	}
}

// floodID matches the ids this test gives its stanzas (and no random id).
var floodID = regexp.MustCompile(`^f\d+-\d+$`)

func countReplies(want map[string]string) int {
	n := 0
	for _, w := range want {
		if w != "" {
			n++
		}
	}
	return n
}

func caseOf(id string) string {
	var ci, i int
	fmt.Sscanf(id, "f%d-%d", &ci, &i)
	return floodCases[ci].name
}
