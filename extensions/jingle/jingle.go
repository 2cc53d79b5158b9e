// Package jingle implements the payloads of XEP-0166: Jingle, with the
// parts ClinkMe calls use: XEP-0167 RTP sessions, XEP-0176 ICE-UDP
// transport, XEP-0320 DTLS-SRTP fingerprints, XEP-0338 BUNDLE grouping and
// XEP-0339 sources. docs/calls.md specifies the profile (which actions and
// elements a ClinkMe device sends and accepts) with example stanzas.
//
// Only the wire types and their structural validation live here; the device
// SDK (package github.com/clinkme/clinkd/client/call) maps them to and from
// WebRTC session descriptions. [Jingle.Validate] is strict about character
// sets, because the SDK writes these values into SDP lines: a value that
// passes it can hold no line break, space or SDP separator.
package jingle

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Namespaces.
const (
	NS         = "urn:xmpp:jingle:1"                    // XEP-0166
	NSErrors   = "urn:xmpp:jingle:errors:1"             // XEP-0166 error conditions
	NSRTP      = "urn:xmpp:jingle:apps:rtp:1"           // XEP-0167
	NSRTPInfo  = "urn:xmpp:jingle:apps:rtp:info:1"      // XEP-0167 session-info
	NSICEUDP   = "urn:xmpp:jingle:transports:ice-udp:1" // XEP-0176
	NSDTLS     = "urn:xmpp:jingle:apps:dtls:0"          // XEP-0320
	NSGrouping = "urn:xmpp:jingle:apps:grouping:0"      // XEP-0338
	NSSSMA     = "urn:xmpp:jingle:apps:rtp:ssma:0"      // XEP-0339
)

// Actions a ClinkMe device sends and accepts (XEP-0166 §7.2).
const (
	ActionSessionInitiate  = "session-initiate"
	ActionSessionAccept    = "session-accept"
	ActionSessionTerminate = "session-terminate"
	ActionSessionInfo      = "session-info"
	ActionTransportInfo    = "transport-info"
)

// Bounds on what one jingle element may carry. A call has one audio
// content; the bounds leave room for video and for every candidate a
// multi-homed device gathers, and keep a stanza far below the servers'
// limits.
const (
	MaxContents     = 4
	MaxPayloadTypes = 32
	MaxParameters   = 16
	MaxSources      = 16
	MaxCandidates   = 64
	MaxSIDLen       = 128
	MaxNameLen      = 64
	MaxValueLen     = 256
)

// ErrInvalid is wrapped by every error of Validate.
var ErrInvalid = errors.New("jingle: invalid")

// Jingle is the <jingle/> element of XEP-0166.
type Jingle struct {
	XMLName   xml.Name  `xml:"urn:xmpp:jingle:1 jingle"`
	Action    string    `xml:"action,attr"`
	Initiator string    `xml:"initiator,attr,omitempty"`
	Responder string    `xml:"responder,attr,omitempty"`
	SID       string    `xml:"sid,attr"`
	Contents  []Content `xml:"urn:xmpp:jingle:1 content"`
	Group     *Group    `xml:"urn:xmpp:jingle:apps:grouping:0 group,omitempty"`
	Reason    *Reason   `xml:"urn:xmpp:jingle:1 reason,omitempty"`
	// Ringing is the XEP-0167 session-info the callee's device sends while
	// it rings.
	Ringing *Empty `xml:"urn:xmpp:jingle:apps:rtp:info:1 ringing,omitempty"`
}

// Empty is an element without attributes or children.
type Empty struct{}

// Content is one content: an application (Description) over a transport.
type Content struct {
	Creator     string       `xml:"creator,attr"` // initiator or responder
	Name        string       `xml:"name,attr"`    // unique in the session; the SDP mid
	Senders     string       `xml:"senders,attr,omitempty"`
	Description *Description `xml:"urn:xmpp:jingle:apps:rtp:1 description,omitempty"`
	Transport   *Transport   `xml:"urn:xmpp:jingle:transports:ice-udp:1 transport,omitempty"`
}

// Description is an XEP-0167 RTP description.
type Description struct {
	Media        string        `xml:"media,attr"` // audio or video
	PayloadTypes []PayloadType `xml:"urn:xmpp:jingle:apps:rtp:1 payload-type"`
	Sources      []Source      `xml:"urn:xmpp:jingle:apps:rtp:ssma:0 source"`
	RTCPMux      *Empty        `xml:"urn:xmpp:jingle:apps:rtp:1 rtcp-mux,omitempty"`
}

// PayloadType is one codec the sender can receive.
type PayloadType struct {
	ID         int         `xml:"id,attr"` // 0-127
	Name       string      `xml:"name,attr"`
	ClockRate  int         `xml:"clockrate,attr,omitempty"`
	Channels   int         `xml:"channels,attr,omitempty"`
	Parameters []Parameter `xml:"urn:xmpp:jingle:apps:rtp:1 parameter"`
}

// Parameter is a codec parameter (an SDP fmtp name=value).
type Parameter struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

// Source is an XEP-0339 RTP source: the SSRC the sender will use and its
// SDP attributes (cname, msid).
type Source struct {
	SSRC       uint32          `xml:"ssrc,attr"`
	Parameters []SSMAParameter `xml:"urn:xmpp:jingle:apps:rtp:ssma:0 parameter"`
}

// SSMAParameter is a source's attribute.
type SSMAParameter struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr,omitempty"`
}

// Transport is an XEP-0176 ICE-UDP transport with its XEP-0320
// fingerprint.
type Transport struct {
	Ufrag       string       `xml:"ufrag,attr,omitempty"`
	Pwd         string       `xml:"pwd,attr,omitempty"`
	Fingerprint *Fingerprint `xml:"urn:xmpp:jingle:apps:dtls:0 fingerprint,omitempty"`
	Candidates  []Candidate  `xml:"urn:xmpp:jingle:transports:ice-udp:1 candidate"`
}

// Fingerprint is the hash of the sender's DTLS certificate and its DTLS
// role (XEP-0320).
type Fingerprint struct {
	Hash  string `xml:"hash,attr"`  // sha-256, sha-384 or sha-512
	Setup string `xml:"setup,attr"` // actpass, active or passive
	Value string `xml:",chardata"`  // upper-case hex bytes separated by colons
}

// Candidate is an XEP-0176 ICE candidate.
type Candidate struct {
	Component  int    `xml:"component,attr"`
	Foundation string `xml:"foundation,attr"`
	Generation int    `xml:"generation,attr"`
	ID         string `xml:"id,attr"`
	IP         string `xml:"ip,attr"`
	Network    int    `xml:"network,attr"`
	Port       int    `xml:"port,attr"`
	Priority   uint32 `xml:"priority,attr"`
	Protocol   string `xml:"protocol,attr"` // udp
	Type       string `xml:"type,attr"`     // host, srflx, prflx or relay
	RelAddr    string `xml:"rel-addr,attr,omitempty"`
	RelPort    int    `xml:"rel-port,attr,omitempty"`
}

// Group is an XEP-0338 group of contents (BUNDLE: one transport for all).
type Group struct {
	Semantics string         `xml:"semantics,attr"`
	Contents  []GroupContent `xml:"urn:xmpp:jingle:apps:grouping:0 content"`
}

// GroupContent names a content of a group.
type GroupContent struct {
	Name string `xml:"name,attr"`
}

// Reason says why a session ends (XEP-0166 §7.4).
type Reason struct {
	Condition ReasonCondition `xml:",any"`
	Text      string          `xml:"urn:xmpp:jingle:1 text,omitempty"`
}

// ReasonCondition is the element naming the reason, e.g. <success/>.
type ReasonCondition struct {
	XMLName xml.Name
}

// NewReason returns a reason with the condition cond (e.g. "success").
func NewReason(cond, text string) *Reason {
	return &Reason{Condition: ReasonCondition{XMLName: xml.Name{Space: NS, Local: cond}}, Text: text}
}

// Reasons XEP-0166 defines.
var reasons = []string{
	"alternative-session", "busy", "cancel", "connectivity-error", "decline", "expired",
	"failed-application", "failed-transport", "general-error", "gone", "incompatible-parameters",
	"media-error", "security-error", "success", "timeout", "unsupported-applications",
	"unsupported-transports",
}

// Validate checks the element's structure: a known action, the fields that
// action needs, counts within the bounds, and every value within a strict
// character set (see the package comment). It does not check that the
// session makes sense; the SDK does.
func (j *Jingle) Validate() error {
	if err := j.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func (j *Jingle) validate() error {
	if j.SID == "" || len(j.SID) > MaxSIDLen || !isToken(j.SID) {
		return errors.New("sid must be 1-128 letters, digits or -._~+/")
	}
	if len(j.Initiator) > 3071 || len(j.Responder) > 3071 {
		return errors.New("initiator or responder too long")
	}
	if len(j.Contents) > MaxContents {
		return fmt.Errorf("%d contents, at most %d", len(j.Contents), MaxContents)
	}
	names := map[string]bool{}
	for i := range j.Contents {
		c := &j.Contents[i]
		if err := c.validate(); err != nil {
			return fmt.Errorf("content %d: %w", i, err)
		}
		if names[c.Name] {
			return fmt.Errorf("content name %q twice", c.Name)
		}
		names[c.Name] = true
	}
	if g := j.Group; g != nil {
		if g.Semantics != "BUNDLE" {
			return fmt.Errorf("group semantics %q, only BUNDLE", g.Semantics)
		}
		if len(g.Contents) == 0 || len(g.Contents) > MaxContents {
			return errors.New("a group names 1 to 4 contents")
		}
		for _, gc := range g.Contents {
			if !names[gc.Name] {
				return fmt.Errorf("group names content %q, which is not in the session", gc.Name)
			}
		}
	}
	if r := j.Reason; r != nil {
		if r.Condition.XMLName.Space != NS || !contains(reasons, r.Condition.XMLName.Local) {
			return fmt.Errorf("unknown reason {%s}%s", r.Condition.XMLName.Space, r.Condition.XMLName.Local)
		}
		if len(r.Text) > 1024 {
			return errors.New("reason text too long")
		}
	}
	switch j.Action {
	case ActionSessionInitiate, ActionSessionAccept:
		if len(j.Contents) == 0 {
			return fmt.Errorf("%s without content", j.Action)
		}
		for _, c := range j.Contents {
			if c.Description == nil || c.Transport == nil || c.Transport.Fingerprint == nil ||
				c.Transport.Ufrag == "" || c.Transport.Pwd == "" {
				return fmt.Errorf("%s: content %q needs a description and a transport with ufrag, pwd and fingerprint", j.Action, c.Name)
			}
		}
	case ActionTransportInfo:
		if len(j.Contents) == 0 {
			return errors.New("transport-info without content")
		}
		for _, c := range j.Contents {
			if c.Transport == nil || c.Description != nil {
				return fmt.Errorf("transport-info: content %q must carry a transport only", c.Name)
			}
		}
	case ActionSessionTerminate, ActionSessionInfo:
		if len(j.Contents) != 0 {
			return fmt.Errorf("%s carries no content", j.Action)
		}
	default:
		return fmt.Errorf("unknown action %q", j.Action)
	}
	return nil
}

func (c *Content) validate() error {
	if c.Creator != "initiator" && c.Creator != "responder" {
		return fmt.Errorf("creator %q, want initiator or responder", c.Creator)
	}
	if c.Name == "" || len(c.Name) > MaxNameLen || !isToken(c.Name) {
		return errors.New("name must be 1-64 letters, digits or -._~+/")
	}
	switch c.Senders {
	case "", "both", "initiator", "responder", "none":
	default:
		return fmt.Errorf("senders %q", c.Senders)
	}
	if d := c.Description; d != nil {
		if err := d.validate(); err != nil {
			return err
		}
	}
	if t := c.Transport; t != nil {
		if err := t.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (d *Description) validate() error {
	if d.Media != "audio" && d.Media != "video" {
		return fmt.Errorf("media %q, want audio or video", d.Media)
	}
	if len(d.PayloadTypes) == 0 || len(d.PayloadTypes) > MaxPayloadTypes {
		return fmt.Errorf("%d payload types, want 1 to %d", len(d.PayloadTypes), MaxPayloadTypes)
	}
	ids := map[int]bool{}
	for _, pt := range d.PayloadTypes {
		if pt.ID < 0 || pt.ID > 127 || ids[pt.ID] {
			return fmt.Errorf("payload type id %d: want 0-127, once", pt.ID)
		}
		ids[pt.ID] = true
		if pt.Name == "" || len(pt.Name) > MaxNameLen || !isToken(pt.Name) {
			return fmt.Errorf("payload type %d: bad name", pt.ID)
		}
		if pt.ClockRate < 0 || pt.ClockRate > 1_000_000 || pt.Channels < 0 || pt.Channels > 16 {
			return fmt.Errorf("payload type %d: clockrate or channels out of range", pt.ID)
		}
		if len(pt.Parameters) > MaxParameters {
			return fmt.Errorf("payload type %d: more than %d parameters", pt.ID, MaxParameters)
		}
		for _, p := range pt.Parameters {
			if p.Name == "" || len(p.Name) > MaxNameLen || !isToken(p.Name) ||
				p.Value == "" || len(p.Value) > MaxValueLen || !isToken(p.Value) {
				return fmt.Errorf("payload type %d: bad parameter", pt.ID)
			}
		}
	}
	if len(d.Sources) > MaxSources {
		return fmt.Errorf("more than %d sources", MaxSources)
	}
	ssrcs := map[uint32]bool{}
	for _, s := range d.Sources {
		if s.SSRC == 0 || ssrcs[s.SSRC] {
			return errors.New("a source needs an ssrc, once")
		}
		ssrcs[s.SSRC] = true
		if len(s.Parameters) > MaxParameters {
			return fmt.Errorf("source %d: more than %d parameters", s.SSRC, MaxParameters)
		}
		cnames := 0
		for _, p := range s.Parameters {
			if p.Name == "cname" {
				cnames++
			}
			if p.Name != "cname" && p.Name != "msid" {
				return fmt.Errorf("source %d: parameter %q, want cname or msid", s.SSRC, p.Name)
			}
			// msid is "stream-id track-id": one space is its separator.
			parts := strings.Split(p.Value, " ")
			if len(p.Value) > MaxValueLen || len(parts) > 2 || (p.Name == "cname" && len(parts) != 1) {
				return fmt.Errorf("source %d: bad %s", s.SSRC, p.Name)
			}
			for _, part := range parts {
				if part == "" || !isToken(part) {
					return fmt.Errorf("source %d: bad %s", s.SSRC, p.Name)
				}
			}
		}
		// RFC 5576 §6.1: every source has exactly one CNAME.
		if cnames != 1 {
			return fmt.Errorf("source %d: %d cname parameters, want 1", s.SSRC, cnames)
		}
	}
	return nil
}

func (t *Transport) validate() error {
	// RFC 8839 §5.4: ice-char is ALPHA / DIGIT / "+" / "/"; the ufrag has
	// 4 to 256 of them, the password 22 to 256.
	if t.Ufrag != "" && (len(t.Ufrag) < 4 || len(t.Ufrag) > 256 || !isICEChars(t.Ufrag)) {
		return errors.New("ufrag must be 4-256 ICE characters")
	}
	if t.Pwd != "" && (len(t.Pwd) < 22 || len(t.Pwd) > 256 || !isICEChars(t.Pwd)) {
		return errors.New("pwd must be 22-256 ICE characters")
	}
	if (t.Ufrag == "") != (t.Pwd == "") {
		return errors.New("ufrag and pwd go together")
	}
	if f := t.Fingerprint; f != nil {
		if err := f.validate(); err != nil {
			return err
		}
	}
	if len(t.Candidates) > MaxCandidates {
		return fmt.Errorf("more than %d candidates", MaxCandidates)
	}
	for i := range t.Candidates {
		if err := t.Candidates[i].Validate(); err != nil {
			return fmt.Errorf("candidate %d: %w", i, err)
		}
	}
	return nil
}

// hashLen is the digest length of each fingerprint hash XEP-0320 allows us.
var hashLen = map[string]int{"sha-256": 32, "sha-384": 48, "sha-512": 64}

func (f *Fingerprint) validate() error {
	n, ok := hashLen[f.Hash]
	if !ok {
		return fmt.Errorf("fingerprint hash %q, want sha-256, sha-384 or sha-512", f.Hash)
	}
	switch f.Setup {
	case "actpass", "active", "passive":
	default:
		return fmt.Errorf("fingerprint setup %q, want actpass, active or passive", f.Setup)
	}
	v := f.Value
	if len(v) != 3*n-1 {
		return errors.New("fingerprint value has the wrong length for its hash")
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if i%3 == 2 {
			if c != ':' {
				return errors.New("fingerprint value: bytes must be separated by colons")
			}
		} else if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F' || 'a' <= c && c <= 'f') {
			return errors.New("fingerprint value: not hexadecimal")
		}
	}
	return nil
}

// Validate checks one candidate: the values RFC 8445 and XEP-0176 allow,
// with IP addresses as literals (no host names: resolving them would leak
// that the call exists to a DNS server).
func (c *Candidate) Validate() error {
	if c.Component < 1 || c.Component > 256 {
		return errors.New("component must be 1-256")
	}
	if c.Foundation == "" || len(c.Foundation) > 32 || !isICEChars(c.Foundation) {
		return errors.New("foundation must be 1-32 ICE characters")
	}
	if c.Generation < 0 || c.Generation > 255 || c.Network < 0 || c.Network > 255 {
		return errors.New("generation or network out of range")
	}
	if len(c.ID) > MaxNameLen || (c.ID != "" && !isToken(c.ID)) {
		return errors.New("bad id")
	}
	if _, err := netip.ParseAddr(c.IP); err != nil || strings.Contains(c.IP, "%") {
		return errors.New("ip must be an IP address literal")
	}
	if c.Port < 1 || c.Port > 65535 {
		return errors.New("port must be 1-65535")
	}
	if c.Priority == 0 {
		return errors.New("priority must be positive")
	}
	if c.Protocol != "udp" {
		return fmt.Errorf("protocol %q: ICE-UDP carries udp only", c.Protocol)
	}
	switch c.Type {
	case "host":
		if c.RelAddr != "" || c.RelPort != 0 {
			return errors.New("a host candidate has no related address")
		}
	case "srflx", "prflx", "relay":
		if c.RelAddr != "" {
			if _, err := netip.ParseAddr(c.RelAddr); err != nil || strings.Contains(c.RelAddr, "%") {
				return errors.New("rel-addr must be an IP address literal")
			}
		}
		if c.RelPort < 0 || c.RelPort > 65535 || c.RelAddr == "" && c.RelPort != 0 {
			return errors.New("rel-port out of range or without rel-addr")
		}
	default:
		return fmt.Errorf("type %q, want host, srflx, prflx or relay", c.Type)
	}
	return nil
}

// isICEChars reports whether s is made of RFC 8839 ice-chars.
func isICEChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// isToken reports whether s is made of letters, digits and -._~+/ only:
// no space, no control character, nothing SDP or XML treat specially.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
