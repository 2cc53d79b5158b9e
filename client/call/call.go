// Package call places and answers end-to-end encrypted ClinkMe calls
// between two devices: WebRTC media (github.com/pion/webrtc) protected by
// DTLS-SRTP with keys unique to each call, signalled over XMPP with Jingle
// (XEP-0166, XEP-0167, XEP-0176, XEP-0320, XEP-0338, XEP-0339) directly
// between the two devices' full JIDs. docs/calls.md specifies the profile
// and shows every stanza.
//
// ICE tries a direct path first and falls back to the TURN relay that
// clinkd hands out over XEP-0215, with short-lived credentials fetched
// before every call. [Call.Diagnostics] says what the call screen shows:
// the security in use, whether the call is direct or relayed (and through
// which TURN server), and a plain verdict.
//
//	phone := call.NewPhone(dev.Client(), call.Options{Services: clinkdDomain}) // dev: a started *client.Device
//	c, err := phone.Call(ctx, bobsFullJID) // or: in, _ := phone.Incoming(ctx); c, err := in.Accept(ctx)
//	defer c.Hangup(context.Background())
//	c.WriteRTP(packet)
//	d, _ := c.Diagnostics()
//	fmt.Println(d.Verdict)
package call

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/logging"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/extensions/jingle"
)

// Options configures a Phone.
type Options struct {
	// Services is clinkd's domain: before each call the phone asks it for
	// STUN and TURN servers with fresh credentials (XEP-0215). Leave it
	// empty to use ICEServers only.
	Services jid.JID
	// ICEServers are used in addition to those from Services.
	ICEServers []webrtc.ICEServer
	// RelayOnly makes ICE use relayed candidates only (the
	// ICETransportPolicyRelay of WebRTC): the peer never learns this
	// device's addresses, at the cost of a relay hop.
	RelayOnly bool
	// Loopback gathers host candidates on 127.0.0.1 over UDP only, which
	// pion otherwise skips. For the lab and tests, where both devices and
	// coturn share one machine.
	Loopback bool
	// Configure, if set, adjusts pion's settings after the phone's own
	// (tests use it to watch the network).
	Configure func(*webrtc.SettingEngine)
	// Timeout bounds how long Call waits for the peer to answer and
	// Accept waits for media to connect (default 60s).
	Timeout time.Duration
	// Logger receives the phone's log; nil discards. Nothing secret is
	// logged: no ICE password, no TURN credential.
	Logger *slog.Logger
}

// Codec is the one codec of the profile: Opus, payload type 111.
var Codec = webrtc.RTPCodecParameters{
	RTPCodecCapability: webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1",
	},
	PayloadType: 111,
}

// encryptingProfiles are the SRTP protection profiles offered, strongest
// first. The NULL profiles (authentication without encryption) are never
// offered, whatever pion's defaults become.
var encryptingProfiles = []dtls.SRTPProtectionProfile{
	dtls.SRTP_AEAD_AES_256_GCM,
	dtls.SRTP_AEAD_AES_128_GCM,
	dtls.SRTP_AES128_CM_HMAC_SHA1_80,
}

// Errors.
var (
	ErrDeclined = errors.New("call: declined")
	ErrEnded    = errors.New("call: ended")
	ErrClosed   = errors.New("call: phone closed")
)

// A Phone places and answers calls for one logged-in device.
type Phone struct {
	dev  *client.Client
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	sessions map[sessionKey]*Call
	closed   bool
	incoming chan *Incoming
}

// sessionKey scopes a Jingle sid to the peer's full JID: only that device
// can drive the session.
type sessionKey struct {
	peer string
	sid  string
}

// NewPhone makes dev answer Jingle requests. Close the phone before the
// device.
func NewPhone(dev *client.Client, opts Options) *Phone {
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	p := &Phone{
		dev:      dev,
		opts:     opts,
		log:      opts.Logger,
		sessions: make(map[sessionKey]*Call),
		// A few rings may wait for the user; more callers get busy.
		incoming: make(chan *Incoming, 4),
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	dev.HandleIQ(xml.Name{Space: jingle.NS, Local: "jingle"}, p.handleJingle)
	return p
}

// Close hangs up every call and refuses new ones.
func (p *Phone) Close() error {
	p.mu.Lock()
	p.closed = true
	calls := make([]*Call, 0, len(p.sessions))
	for _, c := range p.sessions {
		calls = append(calls, c)
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range calls {
		c.Hangup(ctx)
	}
	return nil
}

// iceServers returns the configured servers plus fresh ones from clinkd.
func (p *Phone) iceServers(ctx context.Context) ([]webrtc.ICEServer, error) {
	servers := append([]webrtc.ICEServer(nil), p.opts.ICEServers...)
	if p.opts.Services.Equal(jid.JID{}) {
		return servers, nil
	}
	svcs, err := p.dev.ExternalServices(ctx, p.opts.Services)
	if err != nil {
		return nil, fmt.Errorf("call: STUN and TURN servers from %s: %w", p.opts.Services, err)
	}
	fetched, err := ICEServers(svcs, time.Now())
	if err != nil {
		// Some entries were unusable; the others still help.
		p.log.Warn("call: XEP-0215 answer", "err", err)
	}
	return append(servers, fetched...), nil
}

// newPeerConnection makes the WebRTC side of a call.
func (p *Phone) newPeerConnection(servers []webrtc.ICEServer) (*webrtc.PeerConnection, error) {
	var se webrtc.SettingEngine
	se.SetSRTPProtectionProfiles(encryptingProfiles...)
	// Candidates carry IP addresses, never mDNS names: the peer could not
	// resolve them over XMPP, and ICE-UDP (XEP-0176) carries IPs.
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if p.opts.Loopback {
		se.SetIncludeLoopbackCandidate(true)
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
		se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	}
	se.LoggerFactory = pionLogs{p.log}
	if p.opts.Configure != nil {
		p.opts.Configure(&se)
	}
	var m webrtc.MediaEngine
	if err := m.RegisterCodec(Codec, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, fmt.Errorf("call: %w", err)
	}
	// RTCP sender and receiver reports only: nothing that needs an SDP
	// attribute the profile does not carry.
	var ir interceptor.Registry
	if err := webrtc.ConfigureRTCPReports(&ir); err != nil {
		return nil, fmt.Errorf("call: %w", err)
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(&m), webrtc.WithInterceptorRegistry(&ir))
	cfg := webrtc.Configuration{
		ICEServers:    servers,
		BundlePolicy:  webrtc.BundlePolicyMaxBundle,
		RTCPMuxPolicy: webrtc.RTCPMuxPolicyRequire,
	}
	if p.opts.RelayOnly {
		cfg.ICETransportPolicy = webrtc.ICETransportPolicyRelay
	}
	pc, err := api.NewPeerConnection(cfg)
	if err != nil {
		return nil, fmt.Errorf("call: %w", err)
	}
	return pc, nil
}

// Call calls peer (a full JID: one device) and returns once the call is
// connected: the peer accepted and ICE and DTLS completed. It fails with
// ErrDeclined if the peer declines, and when ctx ends or Options.Timeout
// passes first.
func (p *Phone) Call(ctx context.Context, peer jid.JID) (*Call, error) {
	if peer.Resourcepart() == "" {
		return nil, fmt.Errorf("call: %s is not a full JID: a call goes to one device", peer)
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	servers, err := p.iceServers(ctx)
	if err != nil {
		return nil, err
	}
	c := p.newCall(peer, newSID(), true)
	c.servers = servers
	if err := p.register(c); err != nil {
		return nil, err
	}
	if err := c.setup(); err != nil {
		c.end(err)
		return nil, err
	}
	go c.run()
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		c.end(err)
		return nil, fmt.Errorf("call: offer: %w", err)
	}
	if err := c.pc.SetLocalDescription(offer); err != nil {
		c.end(err)
		return nil, fmt.Errorf("call: offer: %w", err)
	}
	contents, group, err := toJingle(offer.SDP, true)
	if err != nil {
		c.end(err)
		return nil, err
	}
	c.localFingerprint = contents[0].Transport.Fingerprint.Value
	initiate := &jingle.Jingle{
		Action: jingle.ActionSessionInitiate, SID: c.sid, Initiator: p.dev.JID().String(),
		Contents: contents, Group: group,
	}
	if err := c.send(ctx, initiate); err != nil {
		c.end(err)
		return nil, err
	}
	c.signalled()
	p.log.Info("call: ringing", "peer", peer, "sid", c.sid)
	if err := c.waitConnected(ctx); err != nil {
		c.terminate(context.WithoutCancel(ctx), "connectivity-error", err)
		return nil, err
	}
	return c, nil
}

func newSID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (p *Phone) newCall(peer jid.JID, sid string, initiator bool) *Call {
	return &Call{
		p:         p,
		peer:      peer,
		sid:       sid,
		initiator: initiator,
		events:    make(chan *jingle.Jingle, 2*jingle.MaxCandidates),
		cands:     make(chan jingle.Candidate, 2*jingle.MaxCandidates),
		ready:     make(chan struct{}),
		connected: make(chan struct{}),
		done:      make(chan struct{}),
		tracks:    make(chan *webrtc.TrackRemote, 1),
	}
}

func (p *Phone) register(c *Call) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.sessions[sessionKey{c.peer.String(), c.sid}] = c
	return nil
}

func (p *Phone) forget(c *Call) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.sessions, sessionKey{c.peer.String(), c.sid})
}

// Incoming waits for the next call to this device. Calls the caller gave
// up on while they waited are skipped.
func (p *Phone) Incoming(ctx context.Context) (*Incoming, error) {
	for {
		select {
		case in := <-p.incoming:
			if in.call.Err() != nil {
				continue
			}
			return in, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-p.dev.Done():
			return nil, client.ErrClosed
		}
	}
}

// ringTimeout ends an incoming call nobody accepted or declined within
// Options.Timeout, so a caller that vanished leaves no session behind.
func (c *Call) ringTimeout() {
	t := time.NewTimer(c.p.opts.Timeout)
	defer t.Stop()
	select {
	case <-t.C:
		if !c.accepted.Load() {
			c.terminate(context.Background(), "timeout", fmt.Errorf("%w: not answered", ErrEnded))
		}
	case <-c.done:
	}
}

// An Incoming call rings until it is accepted or declined, or the caller
// gives up. Nothing about this device (no address) reaches the caller
// before Accept.
type Incoming struct {
	Peer  jid.JID // the calling device
	SID   string  // the Jingle session id
	Media []string
	call  *Call
	offer *jingle.Jingle
}

// Accept answers the call and returns once media is connected.
func (in *Incoming) Accept(ctx context.Context) (*Call, error) {
	c, p := in.call, in.call.p
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	select {
	case <-c.done:
		return nil, c.err()
	default:
	}
	if !c.accepted.CompareAndSwap(false, true) {
		return nil, errors.New("call: already answered")
	}
	servers, err := p.iceServers(ctx)
	if err != nil {
		c.terminate(ctx, "failed-transport", err)
		return nil, err
	}
	c.servers = servers
	if err := c.setup(); err != nil {
		c.terminate(ctx, "failed-application", err)
		return nil, err
	}
	offerSDP, err := toSDP(c.sid, in.offer.Contents, in.offer.Group, true)
	if err != nil {
		c.terminate(ctx, "failed-application", err)
		return nil, err
	}
	if err := c.setRemote(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offerSDP}, in.offer.Contents); err != nil {
		c.terminate(ctx, "incompatible-parameters", err)
		return nil, err
	}
	answer, err := c.pc.CreateAnswer(nil)
	if err == nil {
		err = c.pc.SetLocalDescription(answer)
	}
	if err != nil {
		c.terminate(ctx, "failed-application", err)
		return nil, fmt.Errorf("call: answer: %w", err)
	}
	contents, group, err := toJingle(answer.SDP, false)
	if err != nil {
		c.terminate(ctx, "failed-application", err)
		return nil, err
	}
	// The answer keeps the offer's content names and creators.
	c.localFingerprint = contents[0].Transport.Fingerprint.Value
	accept := &jingle.Jingle{
		Action: jingle.ActionSessionAccept, SID: c.sid, Initiator: c.peer.String(),
		Responder: p.dev.JID().String(), Contents: contents, Group: group,
	}
	if err := c.send(ctx, accept); err != nil {
		c.end(err)
		return nil, err
	}
	c.signalled()
	if err := c.waitConnected(ctx); err != nil {
		c.terminate(context.WithoutCancel(ctx), "connectivity-error", err)
		return nil, err
	}
	return c, nil
}

// ring tells the caller this device is ringing (XEP-0167 session-info).
func (c *Call) ring() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.send(ctx, &jingle.Jingle{Action: jingle.ActionSessionInfo, SID: c.sid, Ringing: &jingle.Empty{}}); err != nil {
		c.p.log.Debug("call: ringing", "sid", c.sid, "err", err)
	}
}

// Decline refuses the call.
func (in *Incoming) Decline(ctx context.Context) error {
	in.call.accepted.Store(true)
	return in.call.terminate(ctx, "decline", ErrDeclined)
}

// A Call is one call with one peer device.
type Call struct {
	p         *Phone
	peer      jid.JID
	sid       string
	initiator bool
	servers   []webrtc.ICEServer

	pc     *webrtc.PeerConnection
	local  *webrtc.TrackLocalStaticRTP
	tracks chan *webrtc.TrackRemote

	localFingerprint string
	// remote is set once the peer's description is applied; candidates
	// that arrive earlier wait in pending.
	mu                sync.Mutex
	remoteSet         bool
	pending           []jingle.Candidate
	remoteFingerprint string
	remoteUfrag       string

	events    chan *jingle.Jingle   // from the read loop, in order
	cands     chan jingle.Candidate // gathered, waiting to trickle
	ready     chan struct{}         // closed once our description is acknowledged
	readyOnce sync.Once
	connected chan struct{}
	connOnce  sync.Once
	done      chan struct{}
	doneOnce  sync.Once
	endErr    error
	sendMu    sync.Mutex // one Jingle IQ at a time, in order
	// closeMu keeps GetStats and Close of the peer connection apart:
	// pion's Close clears what GetStats reads without its lock (found by
	// the race detector in devicetest/ctltest when the peer hung up during
	// clinkctl call's diagnostics).
	closeMu sync.Mutex

	terminating atomic.Bool
	accepted    atomic.Bool // an incoming call was answered
}

// Peer is the other device.
func (c *Call) Peer() jid.JID { return c.peer }

// SID is the Jingle session id.
func (c *Call) SID() string { return c.sid }

// Done is closed when the call has ended.
func (c *Call) Done() <-chan struct{} { return c.done }

// Err says why the call ended (nil while it lasts).
func (c *Call) Err() error {
	select {
	case <-c.done:
		return c.err()
	default:
		return nil
	}
}

func (c *Call) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endErr
}

// WriteRTP sends one RTP packet (Opus, payload type 111) to the peer;
// the DTLS-SRTP session encrypts and authenticates it.
func (c *Call) WriteRTP(pkt *rtp.Packet) error { return c.local.WriteRTP(pkt) }

// RemoteTrack waits for the peer's audio track.
func (c *Call) RemoteTrack(ctx context.Context) (*webrtc.TrackRemote, error) {
	select {
	case t := <-c.tracks:
		c.tracks <- t // later callers get it too
		return t, nil
	case <-c.done:
		return nil, c.err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// setup makes the peer connection and its local track, and starts the
// loops that trickle candidates and apply the peer's messages.
func (c *Call) setup() error {
	pc, err := c.p.newPeerConnection(c.servers)
	if err != nil {
		return err
	}
	track, err := webrtc.NewTrackLocalStaticRTP(Codec.RTPCodecCapability, "audio", "clinkme-"+c.sid[:8])
	if err != nil {
		pc.Close()
		return fmt.Errorf("call: %w", err)
	}
	sender, err := pc.AddTrack(track)
	if err != nil {
		pc.Close()
		return fmt.Errorf("call: %w", err)
	}
	c.mu.Lock()
	c.pc, c.local = pc, track
	c.mu.Unlock()
	// RTCP from the peer must be read for the interceptors to run.
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := sender.Read(buf); err != nil {
				return
			}
		}
	}()
	pc.OnICECandidate(func(cand *webrtc.ICECandidate) {
		if cand == nil {
			return // gathering complete; XEP-0176 has no end-of-candidates
		}
		jc, ok := fromICECandidate(*cand, newSID()[:10])
		if !ok {
			return
		}
		select {
		case c.cands <- jc:
		default:
			c.p.log.Warn("call: too many local candidates; dropping one", "sid", c.sid)
		}
	})
	pc.OnTrack(func(t *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		select {
		case c.tracks <- t:
		default:
		}
	})
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		c.p.log.Info("call: connection", "sid", c.sid, "state", s.String())
		switch s {
		case webrtc.PeerConnectionStateConnected:
			c.connOnce.Do(func() { close(c.connected) })
		case webrtc.PeerConnectionStateFailed:
			go c.terminate(context.Background(), "connectivity-error", errors.New("call: ICE or DTLS failed"))
		case webrtc.PeerConnectionStateClosed:
			// The peer's DTLS close_notify closes the connection, often
			// before its session-terminate arrives.
			go c.end(fmt.Errorf("%w: media closed", ErrEnded))
		}
	})
	go c.trickle()
	return nil
}

// signalled lets candidates trickle: the peer has acknowledged our
// session-initiate or session-accept.
func (c *Call) signalled() { c.readyOnce.Do(func() { close(c.ready) }) }

// trickle sends gathered candidates as transport-info, in order, once the
// peer knows the session.
func (c *Call) trickle() {
	select {
	case <-c.ready:
	case <-c.done:
		return
	}
	for {
		var batch []jingle.Candidate
		select {
		case jc := <-c.cands:
			batch = append(batch, jc)
		case <-c.done:
			return
		}
		// Whatever else is already gathered goes in the same stanza.
	more:
		for len(batch) < jingle.MaxCandidates {
			select {
			case jc := <-c.cands:
				batch = append(batch, jc)
			default:
				break more
			}
		}
		ufrag, pwd := c.localCredentials()
		info := &jingle.Jingle{
			Action: jingle.ActionTransportInfo, SID: c.sid,
			Contents: []jingle.Content{{
				Creator: "initiator", Name: c.mid(),
				Transport: &jingle.Transport{Ufrag: ufrag, Pwd: pwd, Candidates: batch},
			}},
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := c.send(ctx, info)
		cancel()
		if err != nil {
			c.p.log.Warn("call: transport-info", "sid", c.sid, "err", err)
		}
	}
}

// localCredentials returns our ICE ufrag and pwd, which transport-info
// repeats so the peer can tell an ICE restart from a late candidate.
func (c *Call) localCredentials() (string, string) {
	d := c.pc.LocalDescription()
	if d == nil {
		return "", ""
	}
	contents, _, err := toJingle(d.SDP, c.initiator)
	if err != nil || len(contents) == 0 {
		return "", ""
	}
	return contents[0].Transport.Ufrag, contents[0].Transport.Pwd
}

func (c *Call) mid() string {
	for _, t := range c.pc.GetTransceivers() {
		if m := t.Mid(); m != "" {
			return m
		}
	}
	return "0"
}

// run applies what the peer sends, in order, until the call ends.
func (c *Call) run() {
	for {
		select {
		case j := <-c.events:
			if err := c.apply(j); err != nil {
				c.p.log.Warn("call: peer message", "sid", c.sid, "action", j.Action, "err", err)
				c.terminate(context.Background(), "failed-application", err)
				return
			}
		case <-c.done:
			return
		}
	}
}

func (c *Call) apply(j *jingle.Jingle) error {
	switch j.Action {
	case jingle.ActionSessionAccept:
		remote, err := toSDP(c.sid, j.Contents, j.Group, false)
		if err != nil {
			return err
		}
		return c.setRemote(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: remote}, j.Contents)
	case jingle.ActionTransportInfo:
		for _, ct := range j.Contents {
			for _, cand := range ct.Transport.Candidates {
				if err := c.addCandidate(ct.Name, ct.Transport.Ufrag, cand); err != nil {
					return err
				}
			}
		}
	case jingle.ActionSessionInfo:
		if j.Ringing != nil {
			c.p.log.Info("call: the peer is ringing", "sid", c.sid)
		}
	}
	return nil
}

// setRemote applies the peer's description, then the candidates that came
// before it.
func (c *Call) setRemote(d webrtc.SessionDescription, contents []jingle.Content) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.pc.SetRemoteDescription(d); err != nil {
		return fmt.Errorf("call: the peer's description: %w", err)
	}
	c.remoteSet = true
	c.remoteFingerprint = contents[0].Transport.Fingerprint.Value
	c.remoteUfrag = contents[0].Transport.Ufrag
	pending := c.pending
	c.pending = nil
	for _, cand := range pending {
		if err := c.addLocked(contents[0].Name, cand); err != nil {
			return err
		}
	}
	return nil
}

func (c *Call) addCandidate(mid, ufrag string, cand jingle.Candidate) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.remoteSet {
		if len(c.pending) >= jingle.MaxCandidates {
			return errors.New("call: too many candidates before the description")
		}
		c.pending = append(c.pending, cand)
		return nil
	}
	if ufrag != "" && ufrag != c.remoteUfrag {
		return nil // from another ICE generation: stale
	}
	return c.addLocked(mid, cand)
}

func (c *Call) addLocked(mid string, cand jingle.Candidate) error {
	line, err := candidateLine(cand)
	if err != nil {
		return err
	}
	if err := c.pc.AddICECandidate(webrtc.ICECandidateInit{Candidate: line, SDPMid: &mid}); err != nil {
		return fmt.Errorf("call: candidate: %w", err)
	}
	return nil
}

func (c *Call) waitConnected(ctx context.Context) error {
	select {
	case <-c.connected:
		return nil
	case <-c.done:
		return c.err()
	case <-ctx.Done():
		return fmt.Errorf("call: %s did not connect: %w", c.peer, ctx.Err())
	}
}

// send sends one Jingle request to the peer and waits for its
// acknowledgement.
func (c *Call) send(ctx context.Context, j *jingle.Jingle) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if err := c.p.dev.IQ(ctx, stanza.SetIQ, c.peer, j, nil); err != nil {
		return fmt.Errorf("call: %s to %s: %w", j.Action, c.peer, err)
	}
	return nil
}

// Hangup ends the call and tells the peer.
func (c *Call) Hangup(ctx context.Context) error {
	return c.terminate(ctx, "success", ErrEnded)
}

// terminate tells the peer the session is over (unless it already is)
// and ends it here.
func (c *Call) terminate(ctx context.Context, reason string, why error) error {
	select {
	case <-c.done:
		return nil
	default:
	}
	if !c.terminating.CompareAndSwap(false, true) {
		return nil // someone else is ending it
	}
	// Tell the peer first: closing the media sends a DTLS close_notify,
	// and a peer that sees it first forgets the session before our
	// session-terminate arrives.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := c.send(ctx, &jingle.Jingle{Action: jingle.ActionSessionTerminate, SID: c.sid, Reason: jingle.NewReason(reason, "")})
	c.end(why)
	if errors.Is(err, stanza.Error{Condition: stanza.ItemNotFound}) {
		return nil // the peer had ended it already
	}
	return err
}

// end ends the call here: the session is forgotten and the media stops.
func (c *Call) end(why error) {
	c.doneOnce.Do(func() {
		c.mu.Lock()
		c.endErr = why
		pc := c.pc
		c.mu.Unlock()
		c.p.forget(c)
		close(c.done)
		if pc != nil {
			c.closeMu.Lock()
			pc.Close()
			c.closeMu.Unlock()
		}
	})
}

// handleJingle checks a Jingle request on the device's read loop and hands
// it to its call. It must not block.
func (p *Phone) handleJingle(iq *client.Stanza) error {
	if iq.Type != string(stanza.SetIQ) {
		return stanza.Error{Type: stanza.Modify, Condition: stanza.BadRequest}
	}
	var j jingle.Jingle
	if err := iq.Decode(xml.Name{Space: jingle.NS, Local: "jingle"}, &j); err != nil {
		return stanza.Error{Type: stanza.Modify, Condition: stanza.BadRequest}
	}
	if err := j.Validate(); err != nil {
		p.log.Debug("call: invalid jingle", "from", iq.From, "err", err)
		return stanza.Error{Type: stanza.Modify, Condition: stanza.BadRequest}
	}
	key := sessionKey{iq.From.String(), j.SID}
	p.mu.Lock()
	c, known := p.sessions[key]
	closed := p.closed
	p.mu.Unlock()

	if j.Action == jingle.ActionSessionInitiate {
		if closed {
			return stanza.Error{Type: stanza.Cancel, Condition: stanza.ServiceUnavailable}
		}
		if known {
			return stanza.Error{Type: stanza.Cancel, Condition: stanza.Conflict}
		}
		if j.Initiator != "" && j.Initiator != iq.From.String() {
			return stanza.Error{Type: stanza.Modify, Condition: stanza.BadRequest}
		}
		c := p.newCall(iq.From, j.SID, false)
		in := &Incoming{Peer: iq.From, SID: j.SID, call: c, offer: &j}
		for _, ct := range j.Contents {
			in.Media = append(in.Media, ct.Description.Media)
		}
		if err := p.register(c); err != nil {
			return stanza.Error{Type: stanza.Cancel, Condition: stanza.ServiceUnavailable}
		}
		select {
		case p.incoming <- in:
		default:
			// Acknowledge, then say busy, as XEP-0166 §6.3 asks.
			go c.terminate(context.Background(), "busy", errors.New("call: busy"))
			return nil
		}
		// Candidates before the answer wait in the call.
		go c.run()
		go c.ring()
		go c.ringTimeout()
		return nil
	}
	if !known {
		return &client.IQError{
			Err: stanza.Error{Type: stanza.Cancel, Condition: stanza.ItemNotFound},
			App: xml.Name{Space: jingle.NSErrors, Local: "unknown-session"},
		}
	}
	switch j.Action {
	case jingle.ActionSessionTerminate:
		why := ErrEnded
		if r := j.Reason; r != nil && r.Condition.XMLName.Local == "decline" {
			why = ErrDeclined
		} else if r != nil && r.Condition.XMLName.Local != "success" {
			why = fmt.Errorf("%w by the peer: %s", ErrEnded, r.Condition.XMLName.Local)
		}
		go c.end(why)
		return nil
	case jingle.ActionSessionAccept:
		if !c.initiator {
			return outOfOrder()
		}
	}
	select {
	case c.events <- &j:
		return nil
	default:
		return stanza.Error{Type: stanza.Wait, Condition: stanza.ResourceConstraint}
	}
}

func outOfOrder() error {
	return &client.IQError{
		Err: stanza.Error{Type: stanza.Wait, Condition: stanza.UnexpectedRequest},
		App: xml.Name{Space: jingle.NSErrors, Local: "out-of-order"},
	}
}

// pionLogs routes pion's log into the phone's: its errors as warnings,
// its info and warnings as debug. Its debug and trace output is dropped:
// it dumps STUN messages, with ICE usernames in them.
type pionLogs struct{ log *slog.Logger }

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (pionLogger) Trace(string)                   {}
func (pionLogger) Tracef(string, ...any)          {}
func (pionLogger) Debug(string)                   {}
func (pionLogger) Debugf(string, ...any)          {}
func (l pionLogger) Info(msg string)              { l.log.Debug(msg) }
func (l pionLogger) Infof(f string, args ...any)  { l.log.Debug(fmt.Sprintf(f, args...)) }
func (l pionLogger) Warn(msg string)              { l.log.Debug(msg) }
func (l pionLogger) Warnf(f string, args ...any)  { l.log.Debug(fmt.Sprintf(f, args...)) }
func (l pionLogger) Error(msg string)             { l.log.Warn(msg) }
func (l pionLogger) Errorf(f string, args ...any) { l.log.Warn(fmt.Sprintf(f, args...)) }
