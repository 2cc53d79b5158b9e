package ctl

import (
	"context"
	"encoding/base64"
	"fmt"
	"sort"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
)

// keysTrust runs keys accept JID [CODE], keys safety JID and keys verify
// JID CODE: what the user decides about a contact's key (docs/trust.md).
func (e *env) keysTrust(ctx context.Context, p *profile, sub string, args []string) error {
	fl := subFlags("keys "+sub, e)
	want := 1
	if sub == "verify" {
		want = 2
	}
	if sub == "accept" && len(args) == 2 {
		want = 2
	}
	if err := parse(fl, args, want); err != nil {
		return err
	}
	who, err := jid.Parse(fl.Arg(0))
	if err != nil || who.Localpart() == "" {
		return usageError{fmt.Sprintf("%q is not a user JID", fl.Arg(0))}
	}
	bare := who.Bare().String()
	d, _, err := p.device(ctx, false, false)
	if err != nil {
		return err
	}
	defer d.Close()
	var c client.ContactTrust
	switch sub {
	case "safety":
		code, err := d.SafetyCode(bare)
		if err != nil {
			return err
		}
		e.say(map[string]any{"event": "safety_code", "jid": bare, "code": code},
			"safety code with %s: %s\ncompare it with theirs (clinkctl keys safety on their device), then: clinkctl keys verify %s CODE\n", bare, code, bare)
		return nil
	case "accept":
		c, err = d.AcceptKey(bare, fl.Arg(1))
	case "verify":
		c, err = d.VerifyContact(bare, fl.Arg(1))
	}
	if err != nil {
		return err
	}
	e.sayContact(c)
	return nil
}

// keysStatus prints the device's view of the key directory: the pinned
// checkpoint, the own binding, contacts and their trust, alarms.
func (e *env) keysStatus(ctx context.Context, p *profile, args []string) error {
	fl := subFlags("keys status", e)
	if err := parse(fl, args, 0); err != nil {
		return err
	}
	d, _, err := p.device(ctx, false, false)
	if err != nil {
		return err
	}
	defer d.Close()
	if cp, err := d.Directory().PinnedCheckpoint(); err == nil && cp != nil {
		e.say(map[string]any{"event": "pinned_checkpoint", "origin": cp.Origin, "size": cp.Size, "root": base64.StdEncoding.EncodeToString(cp.Hash[:])},
			"pinned checkpoint: %s, %d entries, root %s\n", cp.Origin, cp.Size, base64.StdEncoding.EncodeToString(cp.Hash[:]))
	} else {
		e.say(map[string]any{"event": "pinned_checkpoint"}, "pinned checkpoint: none yet\n")
	}
	// Cosigners: the witnesses' cosignatures of the pinned checkpoint are
	// the witness section's (docs/keydir.md); nothing is printed here yet.
	own, err := d.CheckKey(ctx)
	if err != nil {
		e.say(map[string]any{"event": "own_key", "error": err.Error()}, "own key: %v\n", err)
	} else {
		out := map[string]any{"event": "own_key", "status": own.Status.String()}
		line := "own key: " + own.Status.String()
		if own.Key != nil {
			out["fingerprint"], out["index"] = fingerprint(own.Key.Fingerprint), own.Key.Index
			line += fmt.Sprintf(", %s at log index %d", fingerprint(own.Key.Fingerprint), own.Key.Index)
		}
		e.say(out, "%s (proof verified)\n", line)
	}
	cs := d.Contacts()
	sort.Slice(cs, func(i, j int) bool { return cs[i].JID < cs[j].JID })
	for _, c := range cs {
		e.sayContact(c)
	}
	alarms := d.Alarms()
	for _, a := range alarms {
		e.say(map[string]any{"event": "alarm", "kind": a.Kind.String(), "jid": a.JID, "text": a.Text, "time": time.Unix(a.Time, 0).UTC()},
			"ALARM (%s, %s): %s\n", a.Kind, time.Unix(a.Time, 0).UTC().Format(time.RFC3339), a.Text)
	}
	if len(alarms) == 0 {
		e.say(map[string]any{"event": "alarms", "count": 0}, "alarms: none\n")
	}
	return nil
}

func (e *env) sayContact(c client.ContactTrust) {
	out := map[string]any{"event": "contact", "jid": c.JID, "state": c.State.String(), "fingerprint": fingerprint(c.Key)}
	if c.Change != nil {
		out["new"] = newFingerprint(*c.Change)
		out["change"] = c.Change.Explain()
		e.say(out, "%s: changed: %s; sending is refused until you accept it (clinkctl keys accept %s%s)\n", c.JID, c.Change.Explain(), c.JID, codeArg(c))
		return
	}
	e.say(out, "%s: %s, %s\n", c.JID, c.State, fingerprint(c.Key))
}

func codeArg(c client.ContactTrust) string {
	if c.Change != nil && c.Change.Verified {
		return " CODE, with the new safety code: clinkctl keys safety " + c.JID
	}
	return ""
}

func (e *env) sayNewContact(n *client.NewContact) {
	e.say(map[string]any{"event": "new_contact", "jid": n.JID, "fingerprint": fingerprint(n.Fingerprint), "index": n.Index, "state": "unverified"},
		"first contact with %s: key %s, log index %d; unverified: compare safety codes (clinkctl keys safety %s)\n", n.JID, fingerprint(n.Fingerprint), n.Index, n.JID)
}

func (e *env) sayAlarm(a *client.Alarm) {
	e.say(map[string]any{"event": "alarm", "kind": a.Kind.String(), "jid": a.JID, "text": a.Text, "evidence": []string{string(a.Evidence[0]), string(a.Evidence[1])}},
		"ALARM (%s): %s\n", a.Kind, a.Text)
}

// newContacts prints the first contacts a command made (queued events).
func (e *env) newContacts(d *client.Device) {
	for _, ev := range d.Notices() {
		switch ev := ev.(type) {
		case *client.NewContact:
			e.sayNewContact(ev)
		case *client.Alarm:
			e.sayAlarm(ev)
		}
	}
}
