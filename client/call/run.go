package call

import (
	"context"
	"fmt"
	"io"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
)

// RunConfig is what `clinkctl call` passes to Run.
type RunConfig struct {
	// Peer is the device to call (a full JID). Empty: wait for a call and
	// answer it.
	Peer    jid.JID
	Options Options
	// Packets and Interval shape the probe audio (default 50 every 20ms).
	Packets  int
	Interval time.Duration
}

// Run places a call to cfg.Peer (or answers the next call when Peer is
// empty), checks that audio flows both ways, writes the call screen's
// diagnostics to w and hangs up. It is the logic behind `clinkctl call`.
func Run(ctx context.Context, dev *client.Client, cfg RunConfig, w io.Writer) (Diagnostics, error) {
	if cfg.Packets <= 0 {
		cfg.Packets = 50
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 20 * time.Millisecond
	}
	phone := NewPhone(dev, cfg.Options)
	defer phone.Close()
	var c *Call
	var err error
	if cfg.Peer.Equal(jid.JID{}) {
		fmt.Fprintf(w, "waiting for a call to %s ...\n", dev.JID())
		var in *Incoming
		if in, err = phone.Incoming(ctx); err != nil {
			return Diagnostics{}, err
		}
		fmt.Fprintf(w, "call from %s: answering\n", in.Peer)
		c, err = in.Accept(ctx)
	} else {
		fmt.Fprintf(w, "calling %s ...\n", cfg.Peer)
		c, err = phone.Call(ctx, cfg.Peer)
	}
	if err != nil {
		return Diagnostics{}, err
	}
	defer c.Hangup(context.WithoutCancel(ctx))
	// The route as it is now, in case the peer hangs up before the end of
	// the probe and there is nothing left to look at.
	start, err := c.Diagnostics()
	if err != nil {
		return start, err
	}
	probe, perr := c.Probe(ctx, cfg.Packets, cfg.Interval)
	d, err := c.Diagnostics()
	if err != nil {
		return d, err
	}
	if !d.Connected && start.Connected {
		fmt.Fprintln(w, "(the call ended before the probe did: figures from the start of the call)")
		d = start
	}
	Report(w, d, probe)
	if perr != nil {
		return d, perr
	}
	return d, nil
}

// Report writes diagnostics the way the call screen shows them.
func Report(w io.Writer, d Diagnostics, probe ProbeResult) {
	state := "connected"
	if !d.Connected {
		state = "not connected"
	}
	fmt.Fprintf(w, "call with %s: %s\n", d.Peer, state)
	fmt.Fprintf(w, "  media       DTLS-SRTP %s (%s, %s)\n", orNone(d.SRTPProfile), orNone(d.DTLSVersion), orNone(d.DTLSCipher))
	route := "direct"
	if d.Relayed {
		route = "relayed"
	}
	fmt.Fprintf(w, "  route       %s: %s", route, d.Local)
	if d.TURNServer != "" {
		fmt.Fprintf(w, " via %s", d.TURNServer)
	}
	fmt.Fprintf(w, " <-> %s\n", d.Remote)
	fmt.Fprintf(w, "  signalling  %s to the XMPP server\n", orNone(d.SignallingTLS))
	fmt.Fprintf(w, "  audio       sent %d probe packets, received %d\n", probe.Sent, probe.Received)
	if d.Code != "" {
		fmt.Fprintf(w, "  call code   %s (the same on both devices unless a fingerprint was replaced)\n", d.Code)
	}
	fmt.Fprintf(w, "verdict: %s\n", d.Verdict)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
