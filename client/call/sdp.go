package call

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"

	"github.com/clinkme/clinkd/extensions/jingle"
)

// This file maps WebRTC session descriptions (SDP, as pion makes and reads
// them) to Jingle contents and back, following the profile in
// docs/calls.md: RTP descriptions (XEP-0167) with payload types, their
// fmtp parameters, rtcp-mux and sources (XEP-0339); ICE-UDP transports
// (XEP-0176) with ufrag, pwd and the DTLS fingerprint (XEP-0320); BUNDLE
// (XEP-0338). Candidates never travel inside a description: they trickle
// as transport-info, in both directions.
//
// toSDP writes only values that jingle.Validate has checked against strict
// character sets, so what a peer sends cannot add SDP lines.

// errSDP is wrapped by every mapping error.
var errSDP = errors.New("call: session description")

// toJingle maps a local SDP (offer or answer) to Jingle contents. creator
// is the creator of the contents ("initiator" for the caller's offer; the
// answer keeps the names and creators of the offer, so also "initiator").
// initiator tells whether the SDP's author is the session's initiator, for
// the senders attribute.
func toJingle(raw string, initiator bool) ([]jingle.Content, *jingle.Group, error) {
	var s sdp.SessionDescription
	if err := s.UnmarshalString(raw); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errSDP, err)
	}
	var contents []jingle.Content
	for _, m := range s.MediaDescriptions {
		if m.MediaName.Media != "audio" && m.MediaName.Media != "video" {
			continue
		}
		mid, _ := m.Attribute("mid")
		c := jingle.Content{
			Creator: "initiator",
			Name:    mid,
			Senders: senders(m, initiator),
			Description: &jingle.Description{
				Media: m.MediaName.Media,
			},
			Transport: &jingle.Transport{},
		}
		if _, ok := m.Attribute("rtcp-mux"); ok {
			c.Description.RTCPMux = &jingle.Empty{}
		}
		for _, f := range m.MediaName.Formats {
			pt, err := payloadType(m, f)
			if err != nil {
				return nil, nil, err
			}
			c.Description.PayloadTypes = append(c.Description.PayloadTypes, pt)
		}
		c.Description.Sources = sources(m)
		t := c.Transport
		t.Ufrag = attribute(&s, m, "ice-ufrag")
		t.Pwd = attribute(&s, m, "ice-pwd")
		fp := attribute(&s, m, "fingerprint")
		hash, value, _ := strings.Cut(fp, " ")
		t.Fingerprint = &jingle.Fingerprint{Hash: strings.ToLower(hash), Setup: attribute(&s, m, "setup"), Value: value}
		contents = append(contents, c)
	}
	var group *jingle.Group
	if g, ok := s.Attribute("group"); ok {
		fields := strings.Fields(g)
		if len(fields) > 1 && fields[0] == "BUNDLE" {
			group = &jingle.Group{Semantics: "BUNDLE"}
			for _, name := range fields[1:] {
				group.Contents = append(group.Contents, jingle.GroupContent{Name: name})
			}
		}
	}
	// What we send must pass the checks the peer applies.
	probe := jingle.Jingle{Action: jingle.ActionSessionInitiate, SID: "check", Contents: contents, Group: group}
	if err := probe.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: local description does not fit the profile: %w", errSDP, err)
	}
	return contents, group, nil
}

// attribute returns a media-level attribute, else the session-level one.
func attribute(s *sdp.SessionDescription, m *sdp.MediaDescription, key string) string {
	if v, ok := m.Attribute(key); ok {
		return v
	}
	v, _ := s.Attribute(key)
	return v
}

func senders(m *sdp.MediaDescription, initiator bool) string {
	me, peer := "initiator", "responder"
	if !initiator {
		me, peer = peer, me
	}
	for _, a := range m.Attributes {
		switch a.Key {
		case "sendonly":
			return me
		case "recvonly":
			return peer
		case "inactive":
			return "none"
		}
	}
	return "both"
}

func payloadType(m *sdp.MediaDescription, format string) (jingle.PayloadType, error) {
	id, err := strconv.Atoi(format)
	if err != nil {
		return jingle.PayloadType{}, fmt.Errorf("%w: format %q", errSDP, format)
	}
	pt := jingle.PayloadType{ID: id}
	for _, a := range m.Attributes {
		key, val, _ := strings.Cut(a.Value, " ")
		if key != format {
			continue
		}
		switch a.Key {
		case "rtpmap": // opus/48000/2
			parts := strings.Split(val, "/")
			pt.Name = parts[0]
			if len(parts) > 1 {
				pt.ClockRate, _ = strconv.Atoi(parts[1])
			}
			if len(parts) > 2 {
				pt.Channels, _ = strconv.Atoi(parts[2])
			}
		case "fmtp": // minptime=10;useinbandfec=1
			for p := range strings.SplitSeq(val, ";") {
				name, value, ok := strings.Cut(strings.TrimSpace(p), "=")
				if ok {
					pt.Parameters = append(pt.Parameters, jingle.Parameter{Name: name, Value: value})
				}
			}
		}
	}
	return pt, nil
}

func sources(m *sdp.MediaDescription) []jingle.Source {
	var out []jingle.Source
	index := map[uint32]int{}
	for _, a := range m.Attributes {
		if a.Key != "ssrc" {
			continue
		}
		id, rest, _ := strings.Cut(a.Value, " ")
		n, err := strconv.ParseUint(id, 10, 32)
		if err != nil || n == 0 {
			continue
		}
		i, ok := index[uint32(n)]
		if !ok {
			i = len(out)
			index[uint32(n)] = i
			out = append(out, jingle.Source{SSRC: uint32(n)})
		}
		name, value, _ := strings.Cut(rest, ":")
		if name == "cname" || name == "msid" {
			out[i].Parameters = append(out[i].Parameters, jingle.SSMAParameter{Name: name, Value: value})
		}
	}
	return out
}

// toSDP maps validated Jingle contents to an SDP of type typ for pion.
// initiator tells whether the contents' author is the session initiator.
// sid seeds the SDP session id, which pion uses to tell renegotiations
// apart.
func toSDP(sid string, contents []jingle.Content, group *jingle.Group, initiator bool) (string, error) {
	if len(contents) == 0 {
		return "", fmt.Errorf("%w: no content", errSDP)
	}
	h := sha256.Sum256([]byte(sid))
	s := sdp.SessionDescription{
		Origin: sdp.Origin{
			Username:       "-",
			SessionID:      binary.BigEndian.Uint64(h[:8]) >> 2, // fits in 62 bits, as RFC 3264 asks
			SessionVersion: 1,
			NetworkType:    "IN",
			AddressType:    "IP4",
			UnicastAddress: "0.0.0.0",
		},
		SessionName:      "-",
		TimeDescriptions: []sdp.TimeDescription{{}},
	}
	if group != nil {
		names := []string{"BUNDLE"}
		for _, gc := range group.Contents {
			names = append(names, gc.Name)
		}
		s.Attributes = append(s.Attributes, sdp.NewAttribute("group", strings.Join(names, " ")))
	}
	for _, c := range contents {
		d, t := c.Description, c.Transport
		if d == nil || t == nil || t.Fingerprint == nil {
			return "", fmt.Errorf("%w: content %q lacks a description or transport", errSDP, c.Name)
		}
		m := &sdp.MediaDescription{
			MediaName: sdp.MediaName{
				Media:  d.Media,
				Port:   sdp.RangedPort{Value: 9},
				Protos: []string{"UDP", "TLS", "RTP", "SAVPF"},
			},
			ConnectionInformation: &sdp.ConnectionInformation{
				NetworkType: "IN", AddressType: "IP4", Address: &sdp.Address{Address: "0.0.0.0"},
			},
		}
		m.WithValueAttribute("mid", c.Name)
		m.WithValueAttribute("ice-ufrag", t.Ufrag)
		m.WithValueAttribute("ice-pwd", t.Pwd)
		m.WithValueAttribute("fingerprint", t.Fingerprint.Hash+" "+strings.ToUpper(t.Fingerprint.Value))
		m.WithValueAttribute("setup", t.Fingerprint.Setup)
		if d.RTCPMux != nil {
			m.WithPropertyAttribute("rtcp-mux")
		}
		for _, pt := range d.PayloadTypes {
			id := strconv.Itoa(pt.ID)
			m.MediaName.Formats = append(m.MediaName.Formats, id)
			rtpmap := pt.Name + "/" + strconv.Itoa(pt.ClockRate)
			if pt.Channels > 0 {
				rtpmap += "/" + strconv.Itoa(pt.Channels)
			}
			m.WithValueAttribute("rtpmap", id+" "+rtpmap)
			if len(pt.Parameters) > 0 {
				params := make([]string, len(pt.Parameters))
				for i, p := range pt.Parameters {
					params[i] = p.Name + "=" + p.Value
				}
				m.WithValueAttribute("fmtp", id+" "+strings.Join(params, ";"))
			}
		}
		for _, src := range d.Sources {
			for _, p := range src.Parameters {
				m.WithValueAttribute("ssrc", strconv.FormatUint(uint64(src.SSRC), 10)+" "+p.Name+":"+p.Value)
			}
		}
		m.WithPropertyAttribute(direction(c.Senders, initiator))
		s.MediaDescriptions = append(s.MediaDescriptions, m)
	}
	out, err := s.Marshal()
	if err != nil {
		return "", fmt.Errorf("%w: %w", errSDP, err)
	}
	return string(out), nil
}

// direction is the SDP direction attribute for senders, seen by the
// author of the description.
func direction(senders string, initiator bool) string {
	me := "initiator"
	if !initiator {
		me = "responder"
	}
	switch senders {
	case "", "both":
		return "sendrecv"
	case "none":
		return "inactive"
	case me:
		return "sendonly"
	default:
		return "recvonly"
	}
}

// fromICECandidate maps a gathered candidate to XEP-0176. ok is false for
// what ICE-UDP cannot carry (TCP candidates, mDNS host names).
func fromICECandidate(c webrtc.ICECandidate, id string) (jingle.Candidate, bool) {
	if c.Protocol != webrtc.ICEProtocolUDP {
		return jingle.Candidate{}, false
	}
	if _, err := netip.ParseAddr(c.Address); err != nil {
		return jingle.Candidate{}, false
	}
	jc := jingle.Candidate{
		Component:  int(c.Component),
		Foundation: c.Foundation,
		ID:         id,
		IP:         c.Address,
		Port:       int(c.Port),
		Priority:   c.Priority,
		Protocol:   "udp",
		Type:       c.Typ.String(),
	}
	if c.Typ != webrtc.ICECandidateTypeHost && c.RelatedAddress != "" {
		if _, err := netip.ParseAddr(c.RelatedAddress); err == nil {
			jc.RelAddr, jc.RelPort = c.RelatedAddress, int(c.RelatedPort)
		}
	}
	if jc.Component == 0 {
		jc.Component = 1
	}
	return jc, jc.Validate() == nil
}

// candidateLine writes a validated XEP-0176 candidate as the SDP
// candidate attribute value RFC 8839 defines.
func candidateLine(c jingle.Candidate) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "candidate:%s %d udp %d %s %d typ %s", c.Foundation, c.Component, c.Priority, c.IP, c.Port, c.Type)
	if c.RelAddr != "" {
		fmt.Fprintf(&b, " raddr %s rport %d", c.RelAddr, c.RelPort)
	}
	fmt.Fprintf(&b, " generation %d", c.Generation)
	return b.String(), nil
}
