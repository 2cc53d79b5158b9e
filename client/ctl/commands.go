package ctl

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/call"
	"github.com/clinkme/clinkd/client/devsync"
	"github.com/clinkme/clinkd/client/keystore"
)

func subFlags(name string, e *env) *flag.FlagSet {
	fl := flag.NewFlagSet("clinkctl "+name, flag.ContinueOnError)
	fl.SetOutput(e.stderr)
	return fl
}

func parse(fl *flag.FlagSet, args []string, nargs int) error {
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if nargs >= 0 && fl.NArg() != nargs {
		return usageError{fmt.Sprintf("%s takes %d argument(s), got %d", fl.Name(), nargs, fl.NArg())}
	}
	return nil
}

// parseText parses flags that come before a free text: a flag after the
// text is an error (the flag package would take it as more text), unless
// "--" ended the flags.
func parseText(fl *flag.FlagSet, args []string) error {
	if err := parse(fl, args, -1); err != nil {
		return err
	}
	rest := fl.Args()
	if i := len(args) - len(rest) - 1; i >= 0 && args[i] == "--" {
		return nil
	}
	for _, a := range rest {
		if len(a) > 1 && strings.HasPrefix(a, "-") {
			return usageError{fmt.Sprintf("%s: flag %s after the text: flags go before the text (put -- before a text that starts with -)", fl.Name(), a)}
		}
	}
	return nil
}

func fingerprint(fp [32]byte) string { return fmt.Sprintf("SHA256:%x", fp) }

func tlsVersion(v uint16) string { return tls.VersionName(v) }

// emit writes v as one line of JSON on stdout (--json).
func (e *env) emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(e.stderr, "clinkctl: error: json: %v\n", err)
		return
	}
	e.stdout.Write(append(b, '\n'))
}

// say prints a line for people, or with --json the object v.
func (e *env) say(v any, format string, args ...any) {
	if e.json {
		e.emit(v)
		return
	}
	fmt.Fprintf(e.stdout, format, args...)
}

// errorJSON is how --json reports an error: its message, and what a
// script can act on.
func errorJSON(err error) map[string]any {
	out := map[string]any{"event": "error", "error": err.Error()}
	var re *client.RefusedError
	var de *client.DropError
	var kc *client.KeyChangeError
	var ue *client.UnconfirmedError
	switch {
	case errors.As(err, &re):
		out["refused"] = refusedJSON(re)
	case errors.As(err, &kc):
		out["key_changed"] = kc.Changes
	case errors.As(err, &ue):
		out["unconfirmed"] = ue.ID
	case errors.As(err, &de):
		out["dropped"] = de.ID
	}
	if errors.Is(err, client.ErrOwnKeyReset) {
		out["own_key"] = "reset"
	}
	if errors.Is(err, client.ErrOwnKeyReplaced) {
		out["own_key"] = "replaced"
	}
	return out
}

func refusedJSON(re *client.RefusedError) map[string]any {
	r := map[string]any{"id": re.ID, "to": re.To.String(), "condition": re.Condition, "type": re.Type, "text": re.Text}
	if re.MinValidity > 0 {
		r["min_validity_seconds"] = int64(re.MinValidity / time.Second)
	}
	if re.MaxValidity > 0 {
		r["max_validity_seconds"] = int64(re.MaxValidity / time.Second)
	}
	return r
}

func (e *env) login(ctx context.Context, p *profile, args []string) error {
	if err := parse(subFlags("login", e), args, 0); err != nil {
		return err
	}
	d, created, err := p.device(ctx, true, true)
	if err != nil {
		return err
	}
	defer d.Close()
	own, err := d.CheckKey(ctx)
	if err != nil {
		return err
	}
	if created {
		e.say(map[string]any{"event": "created", "keystore": p.keystorePath()}, "created this device's key store at %s\n", p.keystorePath())
	}
	c := d.Client()
	e.say(map[string]any{"event": "logged_in", "jid": c.JID().String(), "tls": tlsVersion(c.TLSState().Version)},
		"logged in as %s over %s\n", c.JID(), tlsVersion(c.TLSState().Version))
	if own.Key != nil {
		e.say(map[string]any{"event": "key", "fingerprint": fingerprint(own.Key.Fingerprint), "index": own.Key.Index},
			"key %s published, log index %d (proof verified)\n", fingerprint(own.Key.Fingerprint), own.Key.Index)
	}
	return nil
}

func (e *env) keys(ctx context.Context, p *profile, args []string) error {
	if len(args) == 0 {
		return usageError{"keys needs publish, show, verify, safety, accept or status"}
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "publish", "show":
		fl := subFlags("keys "+sub, e)
		again := false
		if sub == "publish" {
			fl.BoolVar(&again, "again", false, "publish this device's key again after an operator reset")
		}
		if err := parse(fl, rest, 0); err != nil {
			return err
		}
		d, _, err := p.device(ctx, false, false)
		if err != nil {
			return err
		}
		defer d.Close()
		var k *client.VerifiedKey
		switch {
		case again:
			k, err = d.PublishKeyAgain(ctx)
		case sub == "publish":
			k, err = d.PublishKey(ctx)
		default:
			var own client.OwnKey
			own, err = d.CheckKey(ctx)
			if err == nil && own.Status != client.KeyBound {
				err = &client.OwnKeyError{Own: own}
				if own.Status == client.KeyNotPublished {
					err = errors.New("this device's key is not published: run 'clinkctl login'")
				}
			}
			k = own.Key
		}
		if err != nil {
			return err
		}
		e.say(map[string]any{"event": "key", "jid": k.JID, "fingerprint": fingerprint(k.Fingerprint), "index": k.Index, "since": k.Time.UTC()},
			"%s %s log index %d since %s (proof verified)\n", k.JID, fingerprint(k.Fingerprint), k.Index, k.Time.UTC().Format(time.RFC3339))
		if sub == "show" {
			hist, err := d.Directory().History(ctx)
			if err != nil {
				return err
			}
			for _, h := range hist {
				e.say(map[string]any{"event": "history", "version": h.Version, "index": h.Index, "kind": h.Kind, "fingerprint": fingerprint(h.Fingerprint), "time": h.Time.UTC()},
					"  version %d: entry %d %s %s %s\n", h.Version, h.Index, h.Kind, fingerprint(h.Fingerprint), h.Time.UTC().Format(time.RFC3339))
			}
			res, err := d.Directory().LookupKeys(ctx, p.jid.String())
			if err != nil {
				return err
			}
			e.say(map[string]any{"event": "history_complete", "versions": len(hist)}, "history complete: versions 1 to %d, each proven\n", len(hist))
			// Only this account's owner gets its VRF proof: with it,
			// anyone may check the whole history against the public log.
			proof := base64.StdEncoding.EncodeToString(res[0].VRFProof)
			e.say(map[string]any{"event": "vrf_proof", "proof": proof}, "VRF proof (clinkd keys monitor --vrf-proof): %s\n", proof)
		}
		return nil
	case "status":
		return e.keysStatus(ctx, p, rest)
	case "accept", "safety":
		return e.keysTrust(ctx, p, sub, rest)
	case "verify":
		fl := subFlags("keys verify", e)
		if len(rest) == 2 {
			return e.keysTrust(ctx, p, "verify", rest)
		}
		if err := parse(fl, rest, 1); err != nil {
			return err
		}
		who, err := jid.Parse(fl.Arg(0))
		if err != nil {
			return usageError{fmt.Sprintf("%q is not a JID", fl.Arg(0))}
		}
		d, _, err := p.device(ctx, false, true)
		if err != nil {
			return err
		}
		defer d.Close()
		res, err := d.Directory().LookupKeys(ctx, who.Bare().String())
		if err != nil {
			return err
		}
		if len(res) != 1 || res[0].Key == nil {
			return fmt.Errorf("%s has published no key", who.Bare())
		}
		k := res[0].Key
		cp, err := d.Directory().Checkpoint(ctx)
		if err != nil {
			return err
		}
		e.say(map[string]any{"event": "key", "jid": k.JID, "fingerprint": fingerprint(k.Fingerprint), "index": k.Index, "checkpoint_size": cp.Size},
			"%s %s log index %d, included in the signed checkpoint of size %d (proof verified)\n", k.JID, fingerprint(k.Fingerprint), k.Index, cp.Size)
		if c, ok := d.Contact(k.JID); ok {
			e.sayContact(c)
		}
		return nil
	}
	return usageError{fmt.Sprintf("unknown keys command %q", sub)}
}

func (e *env) send(ctx context.Context, p *profile, args []string) error {
	fl := subFlags("send", e)
	to := fl.String("to", "", "recipient `JID`")
	enhanced := fl.Bool("enhanced", false, "seal with the per-contact key (an enhanced envelope)")
	fl.BoolVar(enhanced, "secure", false, "deprecated name of --enhanced")
	ttl := fl.Duration("ttl", 0, "validity `period` of a timed message, e.g. 5m")
	wait := fl.Duration("receipt", 3*time.Second, "wait up to `duration` for a delivery receipt after clinkd accepted the message (0: do not wait)")
	if err := parseText(fl, args); err != nil {
		return err
	}
	text := strings.Join(fl.Args(), " ")
	if *to == "" || text == "" {
		return usageError{"send needs --to JID and a text"}
	}
	rcpt, err := jid.Parse(*to)
	if err != nil || rcpt.Localpart() == "" {
		return usageError{fmt.Sprintf("--to %q is not a user JID", *to)}
	}
	if *ttl < 0 {
		return usageError{"--ttl must be positive"}
	}
	d, _, err := p.device(ctx, false, true)
	if err != nil {
		return err
	}
	defer d.Close()
	id, err := d.Send(ctx, rcpt, text, client.SendOptions{Enhanced: *enhanced, TTL: *ttl})
	if err != nil {
		return err
	}
	kind := "standard"
	if *enhanced {
		kind = "enhanced"
	}
	out := map[string]any{"event": "accepted", "id": id, "to": rcpt.Bare().String(), "kind": kind}
	detail := kind
	if *ttl > 0 {
		detail += fmt.Sprintf(", deleted everywhere in %v", *ttl)
		out["ttl_seconds"] = int64(*ttl / time.Second)
	}
	e.say(out, "sent %s to %s (%s): accepted by clinkd\n", id, rcpt.Bare(), detail)
	e.newContacts(d)
	if *wait <= 0 {
		return nil
	}
	// Wait for the first receipt briefly, so the user sees delivery.
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	for {
		ev, err := d.NextEvent(wctx)
		if err != nil {
			return nil
		}
		switch ev := ev.(type) {
		case *client.Receipt:
			if ev.ID == id {
				e.say(receiptJSON(ev), "%s %s by %s\n", receiptWord(ev.Kind), id, ev.From)
				return nil
			}
		case *client.RefusedError:
			if ev.ID == id {
				return ev
			}
		}
	}
}

func receiptWord(k client.ReceiptKind) string {
	if k == client.Displayed {
		return "read"
	}
	return "delivered"
}

func receiptJSON(r *client.Receipt) map[string]any {
	out := map[string]any{"event": "receipt", "id": r.ID, "from": r.From.String(), "kind": r.Kind.String(), "catch_up": r.CatchUp}
	if !r.Time.IsZero() {
		out["time"] = r.Time.UTC()
	}
	return out
}

func messageJSON(m *client.Message) map[string]any {
	out := map[string]any{"event": "message", "id": m.ID, "from": m.From.String(), "peer": m.Peer.String(),
		"text": m.Text, "enhanced": m.Enhanced, "time": m.Time.UTC(), "outgoing": m.Outgoing}
	if !m.Expires.IsZero() {
		out["expires"] = m.Expires.UTC()
	}
	if m.Outgoing {
		out["device"] = m.Device.String()
	}
	return out
}

func (e *env) listen(ctx context.Context, p *profile, args []string) error {
	fl := subFlags("listen", e)
	dur := fl.Duration("for", 0, "stop after `duration` (default: until interrupted)")
	count := fl.Int("count", 0, "stop after `n` messages")
	noAck := fl.Bool("no-ack", false, "do not send delivery receipts")
	if err := parse(fl, args, 0); err != nil {
		return err
	}
	d, _, err := p.device(ctx, false, true)
	if err != nil {
		return err
	}
	defer d.Close()
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	fmt.Fprintf(e.stderr, "listening as %s\n", d.Client().JID())
	n := 0
	for {
		ev, err := d.NextEvent(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err // the session ended for good (ErrClosed)
		}
		switch ev := ev.(type) {
		case *client.Message:
			e.showMessage(ctx, d, ev, !*noAck)
			n++
		case *client.KeyChanged:
			e.say(map[string]any{"event": "key_changed", "jid": ev.Change.JID, "old": fingerprint(ev.Change.Old), "new": newFingerprint(ev.Change)},
				"key changed for %s: %s -> %s; compare safety codes with them (clinkctl keys safety %s), then accept the new key (clinkctl keys accept %s)\n", ev.Change.JID, fingerprint(ev.Change.Old), newFingerprint(ev.Change), ev.Change.JID, ev.Change.JID)
			if ev.Message != nil {
				e.showMessage(ctx, d, ev.Message, !*noAck)
				n++
			}
		case *client.Receipt:
			e.say(receiptJSON(ev), "%s %s by %s\n", receiptWord(ev.Kind), ev.ID, ev.From)
		case *client.Alarm:
			e.sayAlarm(ev)
		case *client.NewContact:
			e.sayNewContact(ev)
		case *client.Expiry:
			src := "clinkd"
			if ev.Local {
				src = "this device's clock"
			}
			e.say(map[string]any{"event": "expired", "id": ev.ID, "peer": ev.Peer.String(), "local": ev.Local},
				"expired %s (conversation with %s, by %s): deleted\n", ev.ID, ev.Peer, src)
		case *client.DropError:
			e.say(map[string]any{"event": "dropped", "id": ev.ID, "from": ev.From, "peer": ev.Peer.String(), "reason": ev.Reason, "error": ev.Error()},
				"refused: %v\n", ev)
		case *client.RefusedError:
			e.say(map[string]any{"event": "refused", "refused": refusedJSON(ev)}, "clinkd refused %s to %s: %s: %s\n", ev.ID, ev.To, ev.Condition, ev.Text)
		case *client.Connection:
			out := map[string]any{"event": "connection", "up": ev.Up, "resumed": ev.Resumed, "final": ev.Final}
			if ev.Err != nil {
				out["error"] = ev.Err.Error()
			}
			switch {
			case ev.Up && ev.Resumed:
				e.say(out, "reconnected: stream resumed, nothing lost\n")
			case ev.Up:
				e.say(out, "reconnected: new session\n")
			case !ev.Final:
				e.say(out, "connection lost (%v); reconnecting\n", ev.Err)
			}
		case *client.InboxOverflow:
			e.say(map[string]any{"event": "overflow", "dropped": ev.Dropped}, "%d received stanzas dropped unread: the inbox was full\n", ev.Dropped)
		}
		if *count > 0 && n >= *count {
			return nil
		}
	}
}

func newFingerprint(c client.KeyChange) string {
	if c.New == nil {
		return "none (binding ended)"
	}
	return fingerprint(*c.New)
}

func (e *env) showMessage(ctx context.Context, d *client.Device, m *client.Message, ack bool) {
	var tags []string
	if m.Enhanced {
		tags = append(tags, "enhanced")
	}
	if !m.Expires.IsZero() {
		tags = append(tags, "expires "+m.Expires.UTC().Format(time.RFC3339))
	}
	if m.Outgoing {
		tags = append(tags, "sent by another of your devices to "+m.Peer.String())
	}
	e.say(messageJSON(m), "message %s from %s [%s]: %s\n", m.ID, m.From, strings.Join(tags, ", "), m.Text)
	if ack {
		if err := d.Acknowledge(ctx, m, client.Delivered); err != nil {
			fmt.Fprintf(e.stderr, "receipt not sent: %v\n", err)
		}
	}
}

func (e *env) sync(ctx context.Context, p *profile, args []string) error {
	if len(args) == 0 {
		return usageError{"sync needs offer or accept"}
	}
	id, err := p.deviceID()
	if err != nil {
		return err
	}
	switch args[0] {
	case "offer":
		fl := subFlags("sync offer", e)
		listen := fl.String("listen", "0.0.0.0:7457", "`address` to listen on (the local network only)")
		yes := fl.Bool("yes", false, "do not ask for confirmation (scripts)")
		if err := parse(fl, args[1:], 0); err != nil {
			return err
		}
		if err := p.need(false, false, false, true); err != nil {
			return err
		}
		if _, err := os.Stat(p.keystorePath()); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("this device already has a key store for %s (%s); it is never replaced", p.jid, p.keystorePath())
		}
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		defer ln.Close()
		e.say(map[string]any{"event": "waiting", "addr": ln.Addr().String()}, "waiting on %s for the other device of %s\n", ln.Addr(), p.jid)
		got, err := devsync.Offer(ctx, ln, devsync.OfferConfig{
			DeviceID: id, Account: p.jid.String(),
			ShowCode: func(ctx context.Context, code string) error {
				if e.json {
					e.emit(map[string]any{"event": "code", "code": code})
				} else {
					fmt.Fprintf(e.stdout, "code: %s\ntype it on the other device\n", code)
				}
				return nil
			},
			Confirm: func(ctx context.Context) error {
				if *yes {
					return nil
				}
				ans, err := e.prompt("did the other device say the code was accepted? [y/N] ")
				if err != nil || !strings.EqualFold(ans, "y") && !strings.EqualFold(ans, "yes") {
					return errors.New("not confirmed")
				}
				return nil
			},
		})
		if err != nil {
			return err
		}
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return err
		}
		// The whole key store (identity, contact keys, pins), sealed
		// again here; never replacing one, even one made meanwhile.
		if _, err := keystore.Import(p.keystorePath(), got.Payload, []byte(p.passphrase), keystore.DesktopParams()); err != nil {
			return err
		}
		e.say(map[string]any{"event": "synced", "from": got.PeerDeviceID}, "keys received from %s; this device can now read %s's messages\n", got.PeerDeviceID, p.jid)
		return nil
	case "accept":
		fl := subFlags("sync accept", e)
		to := fl.String("to", "", "`address` the offering device shows")
		code := fl.String("code", "", "the code the offering device shows (default: asked)")
		if err := parse(fl, args[1:], 0); err != nil {
			return err
		}
		if *to == "" {
			return usageError{"sync accept needs --to ADDR"}
		}
		// Opening the store checks the passphrase: only the owner sends.
		store, _, err := p.openStore(false)
		if err != nil {
			return err
		}
		if err := p.importPins(store); err != nil {
			return err
		}
		payload, err := store.Export([]byte(p.passphrase), keystore.DesktopParams())
		if err != nil {
			return err
		}
		err = devsync.Accept(ctx, *to, func(ctx context.Context) (string, error) {
			if *code != "" {
				return *code, nil
			}
			return e.prompt("code shown on the other device: ")
		}, devsync.AcceptConfig{
			DeviceID: id, Account: p.jid.String(), Payload: payload,
			OnCodeAccepted: func() { e.say(map[string]any{"event": "code_accepted"}, "code accepted; keys sent\n") },
		})
		if err != nil {
			return err
		}
		return nil
	}
	return usageError{fmt.Sprintf("unknown sync command %q", args[0])}
}

func (e *env) call(ctx context.Context, p *profile, args []string) error {
	fl := subFlags("call", e)
	to := fl.String("to", "", "the device to call, a full `JID` (default: wait for a call and answer it)")
	relayOnly := fl.Bool("relay-only", false, "use only relayed candidates (through coturn)")
	loopback := fl.Bool("loopback", p.lab, "gather host candidates on 127.0.0.1 (the lab; default on with --lab)")
	wait := fl.Duration("for", 2*time.Minute, "give up after `duration`")
	if err := parse(fl, args, 0); err != nil {
		return err
	}
	var peer jid.JID
	if *to != "" {
		j, err := jid.Parse(*to)
		if err != nil || j.Resourcepart() == "" {
			return usageError{fmt.Sprintf("--to %q: a call goes to one device, a full JID (user@domain/resource)", *to)}
		}
		peer = j
	}
	if err := p.need(true, true, false, false); err != nil {
		return err
	}
	c, err := client.Dial(ctx, client.Config{Addr: p.server, JID: p.jid, Password: p.password, TLS: p.tls})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	_, err = call.Run(ctx, c, call.RunConfig{Peer: peer, Options: call.Options{
		Services: p.component, RelayOnly: *relayOnly, Loopback: *loopback,
	}}, e.stdout)
	return err
}
