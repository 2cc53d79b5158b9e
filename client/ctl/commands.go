package ctl

import (
	"context"
	"crypto/tls"
	"encoding/base64"
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
)

func subFlags(name string, e env) *flag.FlagSet {
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

func fingerprint(fp [32]byte) string { return fmt.Sprintf("SHA256:%x", fp) }

func tlsVersion(v uint16) string { return tls.VersionName(v) }

func (e env) login(ctx context.Context, p *profile, args []string) error {
	if err := parse(subFlags("login", e), args, 0); err != nil {
		return err
	}
	d, created, err := p.device(ctx, true)
	if err != nil {
		return err
	}
	defer d.Client().Close()
	res, err := d.Keys().LookupKeys(ctx, p.jid.String())
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(e.stdout, "created this device's key store at %s\n", p.keystorePath())
	}
	fmt.Fprintf(e.stdout, "logged in as %s over %s\n", d.Client().JID(), tlsVersion(d.Client().TLSState().Version))
	if len(res) == 1 && res[0].Key != nil {
		fmt.Fprintf(e.stdout, "key %s published, log index %d (proof verified)\n", fingerprint(res[0].Key.Fingerprint), res[0].Key.Index)
	}
	return nil
}

func (e env) keys(ctx context.Context, p *profile, args []string) error {
	if len(args) == 0 {
		return usageError{"keys needs publish, show or verify"}
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "publish", "show":
		if err := parse(subFlags("keys "+sub, e), rest, 0); err != nil {
			return err
		}
		d, _, err := p.device(ctx, false) // Start publishes
		if err != nil {
			return err
		}
		defer d.Client().Close()
		res, err := d.Keys().LookupKeys(ctx, p.jid.String())
		if err != nil {
			return err
		}
		if len(res) != 1 || res[0].Key == nil {
			return errors.New("the directory has no key for this account")
		}
		k := res[0].Key
		fmt.Fprintf(e.stdout, "%s %s log index %d since %s (proof verified)\n", k.JID, fingerprint(k.Fingerprint), k.Index, k.Time.UTC().Format(time.RFC3339))
		if sub == "show" {
			hist, err := d.Keys().History(ctx)
			if err != nil {
				return err
			}
			for _, h := range hist {
				fmt.Fprintf(e.stdout, "  version %d: entry %d %s %s %s\n", h.Version, h.Index, h.Kind, fingerprint(h.Fingerprint), h.Time.UTC().Format(time.RFC3339))
			}
			fmt.Fprintf(e.stdout, "history complete: versions 1 to %d, each proven\n", len(hist))
			// Only this account's owner gets its VRF proof: with it,
			// anyone may check the whole history against the public log.
			fmt.Fprintf(e.stdout, "VRF proof (clinkd keys monitor --vrf-proof): %s\n", base64.StdEncoding.EncodeToString(res[0].VRFProof))
		}
		return nil
	case "verify":
		fl := subFlags("keys verify", e)
		if err := parse(fl, rest, 1); err != nil {
			return err
		}
		who, err := jid.Parse(fl.Arg(0))
		if err != nil {
			return usageError{fmt.Sprintf("%q is not a JID", fl.Arg(0))}
		}
		d, _, err := p.device(ctx, false)
		if err != nil {
			return err
		}
		defer d.Client().Close()
		res, err := d.Keys().LookupKeys(ctx, who.Bare().String())
		if err != nil {
			return err
		}
		if len(res) != 1 || res[0].Key == nil {
			return fmt.Errorf("%s has published no key", who.Bare())
		}
		k := res[0].Key
		cp, err := d.Keys().Checkpoint(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s %s log index %d, included in the signed checkpoint of size %d (proof verified)\n", k.JID, fingerprint(k.Fingerprint), k.Index, cp.Size)
		return nil
	}
	return usageError{fmt.Sprintf("unknown keys command %q", sub)}
}

func (e env) send(ctx context.Context, p *profile, args []string) error {
	fl := subFlags("send", e)
	to := fl.String("to", "", "recipient `JID`")
	secure := fl.Bool("secure", false, "seal with the per-contact key (ClinkMe Secure)")
	ttl := fl.Duration("ttl", 0, "validity `period` of a timed message, e.g. 5m")
	if err := parse(fl, args, -1); err != nil {
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
	d, _, err := p.device(ctx, false)
	if err != nil {
		return err
	}
	defer d.Client().Close()
	id, err := d.Send(ctx, rcpt, text, client.SendOptions{Secure: *secure, TTL: *ttl})
	if err != nil {
		return err
	}
	kind := "standard"
	if *secure {
		kind = "secure"
	}
	if *ttl > 0 {
		kind += fmt.Sprintf(", deleted everywhere in %v", *ttl)
	}
	fmt.Fprintf(e.stdout, "sent %s to %s (%s)\n", id, rcpt.Bare(), kind)
	// Wait for the first receipt briefly, so the user sees delivery.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	for {
		ev, err := d.NextEvent(wctx)
		if err != nil {
			return nil
		}
		if r, ok := ev.(*client.Receipt); ok && r.ID == id {
			fmt.Fprintf(e.stdout, "%s %s by %s\n", receiptWord(r.Kind), id, r.From)
			return nil
		}
	}
}

func receiptWord(k client.ReceiptKind) string {
	if k == client.Displayed {
		return "read"
	}
	return "delivered"
}

func (e env) listen(ctx context.Context, p *profile, args []string) error {
	fl := subFlags("listen", e)
	dur := fl.Duration("for", 0, "stop after `duration` (default: until interrupted)")
	count := fl.Int("count", 0, "stop after `n` messages")
	noAck := fl.Bool("no-ack", false, "do not send delivery receipts")
	if err := parse(fl, args, 0); err != nil {
		return err
	}
	d, _, err := p.device(ctx, false)
	if err != nil {
		return err
	}
	defer d.Client().Close()
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
			// A message that does not verify is shown, not fatal.
			fmt.Fprintf(e.stdout, "refused: %v\n", err)
			continue
		}
		switch ev := ev.(type) {
		case *client.Message:
			var tags []string
			if ev.Secure {
				tags = append(tags, "secure")
			}
			if !ev.Expires.IsZero() {
				tags = append(tags, "expires "+ev.Expires.UTC().Format(time.RFC3339))
			}
			if ev.Sent {
				tags = append(tags, "sent by another of your devices to "+ev.Peer.String())
			}
			fmt.Fprintf(e.stdout, "message %s from %s [%s]: %s\n", ev.ID, ev.From, strings.Join(tags, ", "), ev.Text)
			if !*noAck {
				if err := d.Acknowledge(ctx, ev, client.Delivered); err != nil {
					fmt.Fprintf(e.stderr, "receipt not sent: %v\n", err)
				}
			}
			n++
		case *client.Receipt:
			fmt.Fprintf(e.stdout, "%s %s by %s\n", receiptWord(ev.Kind), ev.ID, ev.From)
		case *client.Expiry:
			fmt.Fprintf(e.stdout, "expired %s (conversation with %s): deleted\n", ev.ID, ev.Peer)
		}
		if *count > 0 && n >= *count {
			return nil
		}
	}
}

func (e env) sync(ctx context.Context, p *profile, args []string) error {
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
		if _, err := os.Stat(p.keystorePath()); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("this device already has a key store for %s (%s); it is never replaced", p.jid, p.keystorePath())
		}
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		defer ln.Close()
		fmt.Fprintf(e.stdout, "waiting on %s for the other device of %s\n", ln.Addr(), p.jid)
		got, err := devsync.Offer(ctx, ln, devsync.OfferConfig{
			DeviceID: id, Account: p.jid.String(),
			ShowCode: func(ctx context.Context, code string) error {
				fmt.Fprintf(e.stdout, "code: %s\ntype it on the other device\n", code)
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
		// O_EXCL: never replace a key store, even one made meanwhile.
		f, err := os.OpenFile(p.keystorePath(), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if _, err := f.Write(got.Payload); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "keys received from %s; this device can now read %s's messages\n", got.PeerDeviceID, p.jid)
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
		if _, _, err := p.openStore(false); err != nil {
			return err
		}
		payload, err := os.ReadFile(p.keystorePath())
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
			OnCodeAccepted: func() { fmt.Fprintln(e.stdout, "code accepted; keys sent") },
		})
		if err != nil {
			return err
		}
		return nil
	}
	return usageError{fmt.Sprintf("unknown sync command %q", args[0])}
}

func (e env) call(ctx context.Context, p *profile, args []string) error {
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
