package call

import (
	"context"
	"encoding/binary"
	"errors"

	"strings"
	"sync"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// ProbeMarker starts the payload of every probe packet. It is plaintext
// only inside the two devices: tests look for it on the wire and must not
// find it.
const ProbeMarker = "CLINKME-PROBE:"

// probeSize is the payload size of a probe packet, about a 20 ms Opus
// frame at 32 kbit/s.
const probeSize = 80

// ProbeResult counts the probe packets of one Probe.
type ProbeResult struct {
	Sent     int // packets written to the call
	Received int // distinct probe packets from the peer
}

// Probe checks that media flows both ways: it sends n synthetic audio
// packets (payload: ProbeMarker, a counter, padding), one per interval,
// and counts the peer's probe packets meanwhile. It returns when it has
// sent n and received n, when nothing more arrived for a second after its
// last packet, or when ctx ends. Both devices run it at once; one Probe
// at a time per call, since it reads the peer's track.
func (c *Call) Probe(ctx context.Context, n int, interval time.Duration) (ProbeResult, error) {
	var (
		mu       sync.Mutex
		res      ProbeResult
		seen     = map[uint64]bool{}
		track    *webrtc.TrackRemote
		stopped  bool
		received = make(chan struct{}, 1)
		readDone = make(chan struct{})
	)
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	// The peer's track shows up with its first packet, so the reader waits
	// for it while this side already sends.
	go func() {
		defer close(readDone)
		t, err := c.RemoteTrack(rctx)
		if err != nil {
			return
		}
		mu.Lock()
		if stopped {
			mu.Unlock()
			return
		}
		track = t
		mu.Unlock()
		for {
			pkt, _, err := t.ReadRTP()
			if err != nil {
				return
			}
			p := pkt.Payload
			if len(p) < len(ProbeMarker)+8 || !strings.HasPrefix(string(p), ProbeMarker) {
				continue
			}
			counter := binary.BigEndian.Uint64(p[len(ProbeMarker):])
			mu.Lock()
			if !seen[counter] {
				seen[counter] = true
				res.Received++
			}
			full := res.Received >= n
			mu.Unlock()
			select {
			case received <- struct{}{}:
			default:
			}
			if full {
				return
			}
		}
	}()

	tick := time.NewTicker(interval)
	defer tick.Stop()
	var sendErr error
	for i := 0; i < n && sendErr == nil; i++ {
		payload := make([]byte, probeSize)
		copy(payload, ProbeMarker)
		binary.BigEndian.PutUint64(payload[len(ProbeMarker):], uint64(i))
		sendErr = c.WriteRTP(&rtp.Packet{
			Header: rtp.Header{
				Version: 2, PayloadType: uint8(Codec.PayloadType),
				SequenceNumber: uint16(i), Timestamp: uint32(i) * 960,
			},
			Payload: payload,
		})
		if sendErr == nil {
			mu.Lock()
			res.Sent++
			mu.Unlock()
		}
		if i == n-1 || sendErr != nil {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			sendErr = ctx.Err()
		case <-c.done:
			sendErr = c.err()
		}
	}

	// Wait for the peer's last packets: until all arrived, a quiet second,
	// or the end.
	quiet := time.NewTimer(time.Second)
	defer quiet.Stop()
wait:
	for {
		select {
		case <-readDone:
			break wait
		case <-received:
			quiet.Reset(time.Second)
		case <-quiet.C:
			break wait
		case <-ctx.Done():
			break wait
		case <-c.done:
			break wait
		}
	}
	// Stop the reader, wherever it is.
	rcancel()
	mu.Lock()
	stopped = true
	if track != nil {
		track.SetReadDeadline(time.Now())
	}
	mu.Unlock()
	<-readDone
	if track != nil {
		track.SetReadDeadline(time.Time{})
	}
	mu.Lock()
	defer mu.Unlock()
	if sendErr != nil {
		return res, sendErr
	}
	if res.Received == 0 {
		return res, errors.New("call: no media from the peer")
	}
	return res, nil
}
