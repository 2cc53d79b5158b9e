package expiry

// The handoff protocol moves what a clinkd holds in memory (timed
// messages, their receipts, the users seen, the registry of online
// devices) to the clinkd that takes over from it, over a local stream
// socket, memory to memory. docs/expiry.md ("Restart and upgrade") is its
// specification; this file is its only implementation.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/component/dispatch"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/expiryxml"
	"github.com/clinkme/clinkd/extensions/markers"
	"github.com/clinkme/clinkd/extensions/receiptsxml"
)

// HandoffVersion is the version of the handoff protocol a clinkd speaks
// on an unbalanced link (Prosody, or ejabberd with one instance): the
// taker links first, then the giver gives its link up. A clinkd refuses a
// peer of another version: a change of any frame's layout is a new
// version.
const HandoffVersion = 1

// HandoffVersionBalanced is the version a clinkd speaks when ejabberd
// balances its domain among several instances (link.balanced): each link
// holds a fixed slot, which the taker can take only once the giver has
// given it up, so the giver releases its link first and says so
// (released), and the taker links after. Its hello carries a mode.
const HandoffVersionBalanced = 2

// Hello modes of version 2. The answering hello repeats the mode of the
// opening one.
const (
	helloTakeover byte = 0x00 // a new clinkd takes over from the one serving the socket
	helloOffer    byte = 0x01 // a stopping clinkd hands its links and state to a running sibling
)

// handoffMagic opens every hello, so that anything else that connects is
// told apart from a clinkd at once.
const handoffMagic = "clinkd-handoff"

// MaxHandoffFrame bounds one frame (its type and body): the largest is a
// held message, whose envelope is bounded by the link's stanza limit
// (link.max_stanza_bytes, 256 KiB by default).
const MaxHandoffFrame = 4 << 20

// Frame types.
const (
	frameHello    byte = 0x01   // both ways: magic, version, component domain
	frameLinked   byte = 0x02   // taker to giver: the taker holds the link
	frameReleased byte = 0x03   // giver to taker (version 2): the giver gave up its links
	frameMessage  byte = 0x10   // giver to taker: one held message
	frameReceipt  byte = 0x11   // giver to taker: one held receipt
	frameSeen     byte = 0x12   // giver to taker: one user seen
	frameDevice   byte = 0x13   // giver to taker: one online device
	frameEnd      byte = 0x1f   // giver to taker: counts of what was sent
	frameDone     byte = 0x20   // taker to giver: counts of what was taken
	frameRefusal  byte = 0x7f   // either way: why, and the connection ends
	flagSent      byte = 1 << 0 // message: a sent copy
	flagCopyOwed  byte = 1 << 1 // message: the copy for the sender's other devices is not sent yet
	flagUnsent    byte = 1 << 0 // receipt: not sent to the owner's online devices yet
	kindReceived  byte = 1
	kindDisplayed byte = 2
)

// ErrHandoffRefused is wrapped by the error a peer's refusal frame gives.
var ErrHandoffRefused = errors.New("expiry: handoff refused by the peer")

// ErrHandoffProtocol is wrapped by every error about a frame that does not
// follow the protocol: a stranger, another version, a truncated or
// malformed frame, a frame out of order.
var ErrHandoffProtocol = errors.New("expiry: handoff protocol violation")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrHandoffProtocol, fmt.Sprintf(format, args...))
}

// HandoffCounts says how much a handoff moved.
type HandoffCounts struct {
	Messages, Receipts, Seen, Devices int
}

// A HandoffConn is one end of a handoff connection (docs/expiry.md): the
// giver is the clinkd that holds the state, the taker the one that takes
// it over.
type HandoffConn struct {
	r        *bufio.Reader
	w        *bufio.Writer
	version  uint16
	mode     byte // the mode SendHello sends (version 2)
	peerMode byte // the mode of the peer's hello (version 2)
}

// handoffBuffer is the size of a connection's read and write buffers.
// Larger than 32 KiB so that each gets a span of its own, which the next
// heap scrub returns to the operating system whole once it is freed.
const handoffBuffer = 64 << 10

// NewHandoffConn wraps a connection (a Unix socket whose peer's
// credentials the caller checked).
func NewHandoffConn(rw io.ReadWriter) *HandoffConn {
	return &HandoffConn{r: bufio.NewReaderSize(rw, handoffBuffer), w: bufio.NewWriterSize(rw, handoffBuffer), version: HandoffVersion}
}

// SetBalanced makes the connection speak version 2
// (HandoffVersionBalanced), for a clinkd with link.balanced; call it
// before the hellos.
func (c *HandoffConn) SetBalanced() { c.version = HandoffVersionBalanced }

// SetOffer makes the connection speak version 2 with the hello mode
// offer: a stopping clinkd offers its links and state to a running
// sibling (scale-in, docs/expiry.md), which answers with the same mode.
func (c *HandoffConn) SetOffer() { c.version, c.mode = HandoffVersionBalanced, helloOffer }

// Offer reports whether the peer's hello was an offer (SetOffer).
func (c *HandoffConn) Offer() bool { return c.peerMode == helloOffer }

// frame reads one frame. A refusal frame gives an error wrapping
// ErrHandoffRefused with the peer's text.
func (c *HandoffConn) frame() (typ byte, body []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, protoErr("truncated frame header")
		}
		return 0, nil, fmt.Errorf("expiry: handoff: read: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxHandoffFrame {
		return 0, nil, protoErr("frame of %d bytes (1 to %d)", n, MaxHandoffFrame)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(c.r, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, protoErr("truncated frame: %d bytes announced", n)
		}
		return 0, nil, fmt.Errorf("expiry: handoff: read: %w", err)
	}
	typ, body = buf[0], buf[1:]
	if typ == frameRefusal {
		d := wireDecoder{b: body}
		text := d.str()
		if d.err != nil || len(d.b) != 0 {
			return 0, nil, protoErr("malformed refusal")
		}
		return 0, nil, fmt.Errorf("%w: %s", ErrHandoffRefused, text)
	}
	return typ, body, nil
}

// expect reads one frame of type want.
func (c *HandoffConn) expect(want byte) ([]byte, error) {
	typ, body, err := c.frame()
	if err != nil {
		return nil, err
	}
	if typ != want {
		clear(body)
		return nil, protoErr("frame type %#x where %#x was due", typ, want)
	}
	return body, nil
}

// send writes one frame and, with flush, sends it.
func (c *HandoffConn) send(typ byte, body []byte, flush bool) error {
	if len(body)+1 > MaxHandoffFrame {
		return fmt.Errorf("expiry: handoff: a frame of %d bytes is over the limit", len(body)+1)
	}
	var hdr [5]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(body)+1))
	hdr[4] = typ
	c.w.Write(hdr[:])
	c.w.Write(body)
	if flush {
		if err := c.w.Flush(); err != nil {
			return fmt.Errorf("expiry: handoff: write: %w", err)
		}
	}
	return nil
}

// SendHello opens the handoff (the taker) or accepts it (the giver): the
// protocol's magic and version, and the component domain this clinkd
// serves.
func (c *HandoffConn) SendHello(domain string) error {
	var e wireEncoder
	e.raw([]byte(handoffMagic))
	e.u16(c.version)
	e.str(domain)
	if c.version == HandoffVersionBalanced {
		e.u8(c.mode)
	}
	return c.send(frameHello, e.b, true)
}

// ReceiveHello reads the peer's hello and checks it: the magic, this
// protocol version, a known mode (version 2; Offer reports it) and the
// component domain want. Anything else is an error wrapping
// ErrHandoffProtocol. Whether the mode fits the caller's role is the
// caller's to check.
func (c *HandoffConn) ReceiveHello(want string) error {
	body, err := c.expect(frameHello)
	if err != nil {
		return err
	}
	if len(body) < len(handoffMagic) || string(body[:len(handoffMagic)]) != handoffMagic {
		return protoErr("not a clinkd handoff hello")
	}
	d := wireDecoder{b: body[len(handoffMagic):]}
	version := d.u16()
	if version != c.version {
		why := ""
		switch {
		case c.version == HandoffVersionBalanced && version == HandoffVersion:
			why = " (this clinkd has link.balanced and the peer does not)"
		case c.version == HandoffVersion && version == HandoffVersionBalanced:
			why = " (the peer has link.balanced and this clinkd does not)"
		}
		return protoErr("handoff protocol version %d; this clinkd speaks %d%s", version, c.version, why)
	}
	domain := d.str()
	mode := helloTakeover
	if version == HandoffVersionBalanced {
		mode = d.u8()
	}
	switch {
	case d.err != nil || len(d.b) != 0:
		return protoErr("malformed hello")
	case mode != helloTakeover && mode != helloOffer:
		return protoErr("hello mode %#x", mode)
	case domain != want:
		return protoErr("the peer serves component %q, this clinkd %q", domain, want)
	}
	c.peerMode = mode
	return nil
}

// SendLinked tells the giver that the taker holds the link now.
func (c *HandoffConn) SendLinked() error { return c.send(frameLinked, nil, true) }

// ReceiveLinked waits for the taker to hold the link.
func (c *HandoffConn) ReceiveLinked() error {
	body, err := c.expect(frameLinked)
	if err == nil && len(body) != 0 {
		return protoErr("linked frame with a body")
	}
	return err
}

// SendReleased tells the taker that the giver has given up its links
// (version 2), links of them: the taker makes as many.
func (c *HandoffConn) SendReleased(links int) error {
	if c.version != HandoffVersionBalanced {
		return fmt.Errorf("expiry: handoff: released is a frame of version %d", HandoffVersionBalanced)
	}
	var e wireEncoder
	e.u16(uint16(links))
	return c.send(frameReleased, e.b, true)
}

// ReceiveReleased waits for the giver to give up its links (version 2)
// and returns how many it held.
func (c *HandoffConn) ReceiveReleased() (links int, err error) {
	body, err := c.expect(frameReleased)
	if err != nil {
		return 0, err
	}
	d := wireDecoder{b: body}
	links = int(d.u16())
	if d.err != nil || len(d.b) != 0 || links < 1 {
		return 0, protoErr("malformed released frame")
	}
	return links, nil
}

// SendRefusal tells the peer why the handoff ends here. The text goes to
// the peer's log: it must carry no secret.
func (c *HandoffConn) SendRefusal(text string) error {
	var e wireEncoder
	e.str(text)
	return c.send(frameRefusal, e.b, true)
}

// SendDone tells the giver what the taker took.
func (c *HandoffConn) SendDone(n HandoffCounts) error {
	return c.send(frameDone, encodeCounts(n), true)
}

// ReceiveDone waits for what the taker took.
func (c *HandoffConn) ReceiveDone() (HandoffCounts, error) {
	body, err := c.expect(frameDone)
	if err != nil {
		return HandoffCounts{}, err
	}
	return decodeCounts(body)
}

func encodeCounts(n HandoffCounts) []byte {
	var e wireEncoder
	for _, v := range []int{n.Messages, n.Receipts, n.Seen, n.Devices} {
		e.u32(uint32(v))
	}
	return e.b
}

func decodeCounts(body []byte) (HandoffCounts, error) {
	d := wireDecoder{b: body}
	n := HandoffCounts{Messages: int(d.u32()), Receipts: int(d.u32()), Seen: int(d.u32()), Devices: int(d.u32())}
	if d.err != nil || len(d.b) != 0 {
		return HandoffCounts{}, protoErr("malformed counts")
	}
	return n, nil
}

// SendState sends everything the relay holds and the registry's devices,
// then the counts, and returns them. The caller has stopped everything
// that changes them: the link and Run.
func (c *HandoffConn) SendState(r *Relay, devices *dispatch.Devices) (HandoffCounts, error) {
	msgs, rcs, seen := r.export()
	var n HandoffCounts
	var e wireEncoder
	for _, h := range msgs {
		e.reset()
		e.str(h.owner.name)
		e.str(h.peer.name)
		e.str(h.id)
		var flags byte
		by := h.by()
		if h.sent {
			flags |= flagSent
		} else if h.copyBy().Resourcepart() != "" {
			flags |= flagCopyOwed
			by = h.copyBy()
		}
		e.u8(flags)
		e.str(by.String())
		e.i64(h.expiry)
		e.bytes32(h.raw)
		e.u16(uint16(len(h.devices)))
		for _, d := range h.devices {
			e.str(d)
		}
		err := c.send(frameMessage, e.b, false)
		clear(e.b)
		if err != nil {
			return n, err
		}
		n.Messages++
	}
	for _, p := range rcs {
		e.reset()
		e.str(p.owner.String())
		e.str(p.reader.String())
		e.u8(p.kind)
		if p.unsent {
			e.u8(flagUnsent)
		} else {
			e.u8(0)
		}
		e.str(p.id)
		e.i64(p.expires.UnixNano())
		e.str(p.device)
		if err := c.send(frameReceipt, e.b, false); err != nil {
			return n, err
		}
		n.Receipts++
	}
	for _, u := range seen {
		e.reset()
		e.str(u)
		if err := c.send(frameSeen, e.b, false); err != nil {
			return n, err
		}
		n.Seen++
	}
	for _, d := range devices.Export() {
		e.reset()
		e.str(d.User.String())
		e.str(d.Device.String())
		e.i64(d.Announced.UnixNano())
		e.str(d.ID)
		if err := c.send(frameDevice, e.b, false); err != nil {
			return n, err
		}
		n.Devices++
	}
	return n, c.send(frameEnd, encodeCounts(n), true)
}

// ReceiveState reads what a giver sends up to its end frame and takes it
// into the relay and the registry. It returns what it took: messages over
// this relay's quotas (a successor configured with smaller ones) are
// dropped, zeroed, and not counted. It checks every frame (a JID that
// does not parse, a copy from a device of someone else, a count that does
// not match is a protocol violation) and takes nothing unless the whole
// state arrived: a giver that dies halfway leaves the relay as it was.
func (c *HandoffConn) ReceiveState(r *Relay, devices *dispatch.Devices) (HandoffCounts, error) {
	var (
		msgs []*held
		rcs  []exportedReceipt
		seen []string
		devs []dispatch.DeviceRecord
	)
	drop := func() {
		for _, h := range msgs {
			clear(h.raw)
		}
	}
	jids := make(map[string]jid.JID)
	for {
		typ, body, err := c.frame()
		if errors.Is(err, io.EOF) {
			err = protoErr("the state ended before its end frame")
		}
		if err != nil {
			drop()
			return HandoffCounts{}, err
		}
		switch typ {
		case frameMessage:
			h, err := decodeMessage(body, jids)
			clear(body)
			if err != nil {
				drop()
				return HandoffCounts{}, err
			}
			msgs = append(msgs, h)
		case frameReceipt:
			p, err := decodeReceipt(body, jids)
			if err != nil {
				drop()
				return HandoffCounts{}, err
			}
			rcs = append(rcs, p)
		case frameSeen:
			d := wireDecoder{b: body, jids: jids}
			u := d.bare()
			if d.err != nil || len(d.b) != 0 {
				drop()
				return HandoffCounts{}, protoErr("malformed seen user")
			}
			seen = append(seen, u.String())
		case frameDevice:
			d := wireDecoder{b: body, jids: jids}
			rec := dispatch.DeviceRecord{User: d.bare(), Device: d.full(), Announced: time.Unix(0, d.i64()), ID: d.str()}
			switch {
			case d.err != nil:
			case !rec.Device.Bare().Equal(rec.User):
				d.err = errors.New("a device of another user")
			case rec.ID != "" && expiryxml.CheckDeviceID(rec.ID) != nil:
				d.err = errors.New("a malformed device id")
			}
			if d.err != nil || len(d.b) != 0 {
				drop()
				return HandoffCounts{}, protoErr("malformed device: %v", d.err)
			}
			devs = append(devs, rec)
		case frameEnd:
			want, err := decodeCounts(body)
			if err == nil && want != (HandoffCounts{Messages: len(msgs), Receipts: len(rcs), Seen: len(seen), Devices: len(devs)}) {
				err = protoErr("the end frame counts %+v, the frames before it %d messages, %d receipts, %d users, %d devices", want, len(msgs), len(rcs), len(seen), len(devs))
			}
			if err != nil {
				drop()
				return HandoffCounts{}, err
			}
			n := r.importState(msgs, rcs, seen)
			n.Devices = devices.Import(devs)
			return n, nil
		default:
			clear(body)
			drop()
			return HandoffCounts{}, protoErr("frame type %#x in the state", typ)
		}
	}
}

// exportedReceipt is a held receipt as it travels.
type exportedReceipt struct {
	owner, reader jid.JID
	kind          byte
	id            string
	expires       time.Time
	unsent        bool
	device        string // the reader's device's stable id, or ""
}

// exportedMessage is a held message as it travels.
type exportedMessage struct {
	*held
	devices []string // who got it
}

func decodeMessage(body []byte, jids map[string]jid.JID) (*held, error) {
	d := wireDecoder{b: body, jids: jids}
	h := &held{owner: newParty(d.bare()), peer: newParty(d.bare()), id: d.id()}
	flags := d.u8()
	byText := d.str()
	h.expiry = d.i64()
	raw := d.bytes32()
	count := int(d.u16())
	for range count {
		h.markDelivered(d.deviceKey(h.owner.jid))
	}
	if d.err == nil {
		switch {
		case flags&^(flagSent|flagCopyOwed) != 0 || flags == flagSent|flagCopyOwed:
			d.err = fmt.Errorf("flags %#x", flags)
		case len(raw) == 0:
			d.err = errors.New("no envelope")
		case flags&(flagSent|flagCopyOwed) != 0:
			// A sent copy names the owner's device that sent it; a copy
			// owed, the peer's (the sender's) device.
			by, ok := d.parse(byText)
			author := h.owner.jid
			if flags&flagCopyOwed != 0 {
				author = h.peer.jid
			}
			if !ok || by.Resourcepart() == "" || !by.Bare().Equal(author) {
				d.err = fmt.Errorf("sending device %q", byText)
			}
			h.sent, h.device = flags&flagSent != 0, &by
		case byText != "":
			d.err = errors.New("a sending device on a message without a copy")
		}
	}
	if d.err != nil || len(d.b) != 0 {
		return nil, protoErr("malformed message: %v", d.err)
	}
	h.raw = append([]byte(nil), raw...)
	return h, nil
}

func decodeReceipt(body []byte, jids map[string]jid.JID) (exportedReceipt, error) {
	d := wireDecoder{b: body, jids: jids}
	p := exportedReceipt{owner: d.bare(), reader: d.bare(), kind: d.u8()}
	flags := d.u8()
	p.id, p.expires, p.unsent = d.id(), time.Unix(0, d.i64()), flags&flagUnsent != 0
	p.device = d.str()
	switch {
	case d.err != nil:
	case p.device != "" && expiryxml.CheckDeviceID(p.device) != nil:
		d.err = errors.New("a malformed device id")
	case p.kind != kindReceived && p.kind != kindDisplayed:
		d.err = fmt.Errorf("kind %d", p.kind)
	case flags&^flagUnsent != 0:
		d.err = fmt.Errorf("flags %#x", flags)
	}
	if d.err != nil || len(d.b) != 0 {
		return exportedReceipt{}, protoErr("malformed receipt: %v", d.err)
	}
	return p, nil
}

// wireEncoder appends the protocol's fields: integers big-endian, strings
// and byte strings after their length (2 and 4 bytes).
type wireEncoder struct{ b []byte }

func (e *wireEncoder) reset()       { e.b = e.b[:0] }
func (e *wireEncoder) raw(b []byte) { e.b = append(e.b, b...) }
func (e *wireEncoder) u8(v byte)    { e.b = append(e.b, v) }
func (e *wireEncoder) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *wireEncoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *wireEncoder) i64(v int64)  { e.b = binary.BigEndian.AppendUint64(e.b, uint64(v)) }
func (e *wireEncoder) str(s string) {
	e.u16(uint16(min(len(s), 0xffff)))
	e.b = append(e.b, s[:min(len(s), 0xffff)]...)
}
func (e *wireEncoder) bytes32(b []byte) {
	e.u32(uint32(len(b)))
	e.b = append(e.b, b...)
}

// wireDecoder reads what wireEncoder writes; the first error sticks and later
// reads return zero values.
type wireDecoder struct {
	b   []byte
	err error
	// jids, if not nil, remembers the JIDs parsed so far: a state names
	// each user and device many times, and parsing one (PRECIS) costs
	// more than the rest of a frame.
	jids map[string]jid.JID
}

func (d *wireDecoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.err = errors.New("truncated")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *wireDecoder) u8() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *wireDecoder) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *wireDecoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *wireDecoder) i64() int64 {
	if v := d.take(8); v != nil {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

func (d *wireDecoder) str() string { return string(d.take(int(d.u16()))) }

func (d *wireDecoder) bytes32() []byte { return d.take(int(d.u32())) }

// id reads a message id as envelopes bound it.
func (d *wireDecoder) id() string {
	s := d.str()
	if d.err != nil {
		return ""
	}
	if len(s) == 0 || len(s) > envelopexml.MaxIDLen {
		d.err = fmt.Errorf("message id of %d bytes", len(s))
		return ""
	}
	for i := range len(s) {
		if s[i] < 0x21 || s[i] > 0x7e {
			d.err = errors.New("message id with a byte outside 0x21..0x7E")
			return ""
		}
	}
	return s
}

// parse parses a JID the way the state wrote it: its canonical form.
func (d *wireDecoder) parse(s string) (jid.JID, bool) {
	if j, ok := d.jids[s]; ok {
		return j, true
	}
	j, err := jid.Parse(s)
	if err != nil || j.String() != s {
		return jid.JID{}, false
	}
	if d.jids != nil && len(d.jids) < maxJIDCache {
		d.jids[s] = j
	}
	return j, true
}

// maxJIDCache bounds the JIDs a taker remembers while it reads a state.
const maxJIDCache = 1 << 20

// bare reads a user's bare JID.
func (d *wireDecoder) bare() jid.JID {
	s := d.str()
	if d.err != nil {
		return jid.JID{}
	}
	j, ok := d.parse(s)
	if !ok || j.Localpart() == "" || j.Resourcepart() != "" {
		d.err = fmt.Errorf("user %q", s)
		return jid.JID{}
	}
	return j
}

// full reads a device's full JID.
func (d *wireDecoder) full() jid.JID {
	s := d.str()
	if d.err != nil {
		return jid.JID{}
	}
	j, ok := d.parse(s)
	if !ok || j.Localpart() == "" || j.Resourcepart() == "" {
		d.err = fmt.Errorf("device %q", s)
		return jid.JID{}
	}
	return j
}

// deviceKey reads a device that got a message: "#" and the stable id it
// announced, or its full JID, which must be one of owner's.
func (d *wireDecoder) deviceKey(owner jid.JID) string {
	s := d.str()
	if d.err != nil {
		return ""
	}
	if id, ok := strings.CutPrefix(s, "#"); ok {
		if expiryxml.CheckDeviceID(id) != nil {
			d.err = errors.New("a malformed device id")
		}
		return s
	}
	j, ok := d.parse(s)
	if !ok || j.Resourcepart() == "" || !j.Bare().Equal(owner) {
		d.err = fmt.Errorf("delivered to %q, not a device of its owner", s)
		return ""
	}
	return j.String()
}

// export snapshots what the relay holds, for SendState.
func (r *Relay) export() (msgs []exportedMessage, rcs []exportedReceipt, seen []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.queue {
		m := exportedMessage{held: h}
		for d := range h.delivered {
			m.devices = append(m.devices, d)
		}
		msgs = append(msgs, m)
	}
	for owner, list := range r.receipts {
		o, err := jid.Parse(owner)
		if err != nil {
			continue
		}
		for _, p := range list {
			e := exportedReceipt{owner: o, reader: p.reader, expires: p.expires, unsent: p.unsent, device: p.device}
			switch v := p.payload.(type) {
			case receiptsxml.Received:
				e.kind, e.id = kindReceived, v.ID
			case markers.Displayed:
				e.kind, e.id = kindDisplayed, v.ID
			default:
				continue
			}
			rcs = append(rcs, e)
		}
	}
	seen = append(seen, r.seen.order...)
	return msgs, rcs, seen
}

// importState holds what a giver sent, under this relay's quotas.
func (r *Relay) importState(msgs []*held, rcs []exportedReceipt, seen []string) HandoffCounts {
	var n HandoffCounts
	dropped := 0
	for _, h := range msgs {
		added, err := r.hold(h)
		if err != nil || !added {
			clear(h.raw)
			dropped++
			continue
		}
		n.Messages++
	}
	for _, p := range rcs {
		var payload any = receiptsxml.Received{ID: p.id}
		if p.kind == kindDisplayed {
			payload = markers.Displayed{ID: p.id}
		}
		r.holdReceipt(p.owner, &pendingReceipt{reader: p.reader, payload: payload, device: p.device, expires: p.expires, unsent: p.unsent})
		n.Receipts++
	}
	r.mu.Lock()
	for _, u := range seen {
		r.seen.add(u)
	}
	r.mu.Unlock()
	n.Seen = len(seen)
	if dropped > 0 {
		r.log.Warn("expiry: handoff: messages over this clinkd's quotas were dropped", "dropped", dropped)
	}
	return n
}
