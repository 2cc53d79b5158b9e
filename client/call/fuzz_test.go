package call

import (
	"encoding/xml"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/sdp/v3"
	"github.com/pion/stun/v4"
	"github.com/pion/webrtc/v4"

	"github.com/clinkme/clinkd/extensions/extdisco"
	"github.com/clinkme/clinkd/extensions/jingle"
)

// realOffer is a description pion makes for a call, as the caller sends
// it: the natural seed for the mapping.
func realOffer(t testing.TB) string {
	t.Helper()
	pc, err := (&Phone{log: discardLogger()}).newPeerConnection(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	track, err := webrtc.NewTrackLocalStaticRTP(Codec.RTPCodecCapability, "audio", "seed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pc.AddTrack(track); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	return offer.SDP
}

// FuzzToSDP feeds Jingle session descriptions as a peer could send them
// to the mapping: whatever passes jingle.Validate must map to an SDP that
// pion parses, with exactly one media section per content and no other
// line, and that maps back to the same contents. Validated values cannot
// add SDP lines.
func FuzzToSDP(f *testing.F) {
	contents, group, err := toJingle(realOffer(f), true)
	if err != nil {
		f.Fatal(err)
	}
	seed, err := xml.Marshal(&jingle.Jingle{Action: jingle.ActionSessionInitiate, SID: "seed", Contents: contents, Group: group})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		var j jingle.Jingle
		if xml.Unmarshal(data, &j) != nil || j.Validate() != nil {
			return
		}
		if j.Action != jingle.ActionSessionInitiate && j.Action != jingle.ActionSessionAccept {
			return
		}
		initiator := j.Action == jingle.ActionSessionInitiate
		out, err := toSDP(j.SID, j.Contents, j.Group, initiator)
		if err != nil {
			t.Fatalf("toSDP(valid %s) = %v", j.Action, err)
		}
		var s sdp.SessionDescription
		if err := s.UnmarshalString(out); err != nil {
			t.Fatalf("pion cannot parse the SDP we wrote: %v\n%s", err, out)
		}
		if len(s.MediaDescriptions) != len(j.Contents) {
			t.Fatalf("%d media sections for %d contents:\n%s", len(s.MediaDescriptions), len(j.Contents), out)
		}
		back, backGroup, err := toJingle(out, initiator)
		if err != nil {
			t.Fatalf("toJingle(toSDP(x)) = %v\n%s", err, out)
		}
		if want := normalize(j.Contents); !reflect.DeepEqual(normalize(back), want) {
			g, _ := xml.Marshal(normalize(back))
			w, _ := xml.Marshal(want)
			t.Fatalf("round trip:\n got %s\nwant %s\n%s", g, w, out)
		}
		if !reflect.DeepEqual(backGroup, j.Group) {
			t.Fatalf("group round trip: %+v, want %+v", backGroup, j.Group)
		}
	})
}

// normalize drops what the SDP does not carry (candidates, the creator)
// and spells the rest one way.
func normalize(cs []jingle.Content) []jingle.Content {
	out := make([]jingle.Content, len(cs))
	for i, c := range cs {
		c.Creator = "initiator"
		if c.Senders == "" {
			c.Senders = "both"
		}
		d := *c.Description
		if len(d.PayloadTypes) == 0 {
			d.PayloadTypes = nil
		}
		for k := range d.PayloadTypes {
			if len(d.PayloadTypes[k].Parameters) == 0 {
				d.PayloadTypes[k].Parameters = nil
			}
		}
		if len(d.Sources) == 0 {
			d.Sources = nil
		}
		for k := range d.Sources {
			if len(d.Sources[k].Parameters) == 0 {
				d.Sources[k].Parameters = nil
			}
		}
		c.Description = &d
		t := *c.Transport
		t.Candidates = nil
		fp := *t.Fingerprint
		fp.Value = strings.ToUpper(fp.Value)
		t.Fingerprint = &fp
		c.Transport = &t
		out[i] = c
	}
	return out
}

// FuzzCandidateLine feeds XEP-0176 candidates as a peer could send them:
// whatever passes Validate must become an SDP candidate line that pion's
// own parser reads back with the same values.
func FuzzCandidateLine(f *testing.F) {
	f.Add(1, "1", 0, "127.0.0.1", 40000, uint32(2130706431), "udp", "host", "", 0)
	f.Add(1, "3cf2", 0, "203.0.113.7", 50001, uint32(16777215), "udp", "relay", "198.51.100.2", 40001)
	f.Add(1, "ab+/", 1, "2001:db8::1", 9, uint32(1686052607), "udp", "srflx", "10.0.0.2", 5000)
	f.Add(1, "x", 0, "1.2.3.4\nx", 1, uint32(1), "udp", "host", "", 0)
	f.Fuzz(func(t *testing.T, component int, foundation string, generation int, ip string, port int, priority uint32, protocol, typ, relAddr string, relPort int) {
		c := jingle.Candidate{
			Component: component, Foundation: foundation, Generation: generation, ID: "f", IP: ip,
			Port: port, Priority: priority, Protocol: protocol, Type: typ, RelAddr: relAddr, RelPort: relPort,
		}
		if c.Validate() != nil {
			return
		}
		line, err := candidateLine(c)
		if err != nil {
			t.Fatalf("candidateLine(valid) = %v", err)
		}
		if strings.ContainsAny(line, "\r\n") {
			t.Fatalf("line break in %q", line)
		}
		got, err := ice.UnmarshalCandidate(line)
		if err != nil {
			t.Fatalf("pion cannot read %q: %v", line, err)
		}
		if got.Foundation() != c.Foundation || int(got.Component()) != c.Component || got.Priority() != c.Priority ||
			got.Port() != c.Port || got.Type().String() != c.Type || !sameIP(got.Address(), c.IP) {
			t.Fatalf("pion read %q as %s", line, got)
		}
		if c.RelAddr != "" {
			if rel := got.RelatedAddress(); rel == nil || !sameIP(rel.Address, c.RelAddr) || rel.Port != c.RelPort {
				t.Fatalf("pion read %q with related address %v", line, got.RelatedAddress())
			}
		}
	})
}

func sameIP(a, b string) bool {
	x, y := net.ParseIP(a), net.ParseIP(b)
	return x != nil && x.Equal(y)
}

// FuzzICEServers feeds XEP-0215 services as a server could send them:
// every ICE server made of them is a URI pion parses back to the same
// scheme, host, port and transport, with credentials for TURN.
func FuzzICEServers(f *testing.F) {
	f.Add("turn", "127.0.0.1", 3478, "udp", "1795636800:alice@example.org", "pw", int64(1795636800))
	f.Add("turns", "turn.example.org", 5349, "tcp", "u", "p", int64(0))
	f.Add("stun", "2001:db8::1", 0, "", "", "", int64(0))
	f.Add("turn", "h?transport=tcp&x", 1, "udp", "u", "p", int64(0))
	f.Fuzz(func(t *testing.T, typ, host string, port int, transport, user, pass string, expires int64) {
		svc := extdisco.Service{Type: typ, Host: host, Port: port, Transport: transport, Username: user, Password: pass}
		if expires != 0 {
			e := time.Unix(expires, 0)
			svc.Expires = &e
		}
		servers, err := ICEServers([]extdisco.Service{svc}, time.Unix(1700000000, 0))
		if err != nil {
			if len(servers) != 0 {
				t.Fatalf("ICEServers returned %v with error %v", servers, err)
			}
			return
		}
		if len(servers) != 1 || len(servers[0].URLs) != 1 {
			t.Fatalf("ICEServers = %+v", servers)
		}
		u, err := stun.ParseURI(servers[0].URLs[0])
		if err != nil {
			t.Fatalf("pion cannot parse %q: %v", servers[0].URLs[0], err)
		}
		wantPort := port
		if wantPort == 0 {
			wantPort = map[string]int{"stun": 3478, "turn": 3478, "turns": 5349}[typ]
		}
		if u.Scheme.String() != typ || !sameHost(u.Host, host) || u.Port != wantPort {
			t.Fatalf("%q parsed as %s %s %d, want %s %s %d", servers[0].URLs[0], u.Scheme, u.Host, u.Port, typ, host, wantPort)
		}
		if typ != "stun" && (servers[0].Username != user || servers[0].Credential != pass || user == "" || pass == "") {
			t.Fatalf("credentials %q/%v, want %q/%q", servers[0].Username, servers[0].Credential, user, pass)
		}
		if typ == "turns" && u.Proto != stun.ProtoTypeTCP {
			t.Fatalf("turns over %s", u.Proto)
		}
		if typ == "turn" && transport != "" && u.Proto.String() != strings.ToLower(transport) {
			t.Fatalf("turn over %s, want %s", u.Proto, transport)
		}
	})
}

func sameHost(got, want string) bool {
	if sameIP(got, want) {
		return true
	}
	return got == want
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
