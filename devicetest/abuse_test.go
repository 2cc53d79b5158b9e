package devicetest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/extensions/envelopexml"
	"github.com/clinkme/clinkd/extensions/hints"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// The attacks of issue 13, item 3, on the device side, each against the
// real servers: an attacker with one ordinary account (or a server that
// keeps and replays what it relayed) must not make a device drop a real
// message, show one twice, show an expired one, or grow its key store.

// abuseLab starts clinkd with a key directory and a database (ordinary
// messages are tracked there) on srv, then tune. A sender's queue at
// clinkd holds a whole flood.
func abuseLab(t *testing.T, srv *lab.XMPPServer, tune ...func(*daemon.Config)) (*daemon.Daemon, clinkdtest.KeyDirKeys) {
	t.Helper()
	keys := clinkdtest.NewKeyDirKeys(t)
	dbURL := labtest.NewDatabase(t)
	d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Database = daemon.DatabaseConfig{URL: dbURL, Migrate: true}
		keys.Configure(c)
		c.Link.QueueDepth = 2048
		for _, f := range tune {
			f(c)
		}
	})
	return d, keys
}

// lookups returns how many key lookups clinkd's directory has answered,
// whatever the outcome (refusals included), from its /metrics.
func lookups(t *testing.T, d *daemon.Daemon) int {
	t.Helper()
	res, err := http.Get("http://" + d.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	n := 0
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "clinkd_keydir_requests_total{") || !strings.Contains(line, `kind="lookup"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		n += int(v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// listener runs a device's NextEvent loop, as an app does: it keeps every
// message shown (acknowledging it as delivered, when ack) and every
// receipt and error, in order.
type listener struct {
	mu       sync.Mutex
	changed  chan struct{}
	shown    []*client.Message
	receipts []*client.Receipt
	changes  []*client.KeyChanged
	conns    []*client.Connection
	refused  []*client.RefusedError
	expiries []*client.Expiry
	alarms   []*client.Alarm
	contacts []*client.NewContact
	errs     []error        // envelopes dropped (DropError events), then NextEvent's errors
	acked    map[string]int // delivery receipts sent, by message id
}

func listen(ctx context.Context, dev *client.Device, ack bool) *listener {
	l := &listener{changed: make(chan struct{}), acked: map[string]int{}}
	go func() {
		for ctx.Err() == nil {
			ev, err := dev.NextEvent(ctx)
			acked := false
			if m, ok := ev.(*client.Message); ok && ack {
				acked = dev.Acknowledge(ctx, m, client.Delivered) == nil
			}
			if kc, ok := ev.(*client.KeyChanged); ok && kc.Message != nil && ack {
				dev.Acknowledge(ctx, kc.Message, client.Delivered)
			}
			l.mu.Lock()
			switch ev := ev.(type) {
			case *client.Message:
				l.shown = append(l.shown, ev)
				if acked {
					l.acked[ev.ID]++
				}
			case *client.Receipt:
				l.receipts = append(l.receipts, ev)
			case *client.KeyChanged:
				l.changes = append(l.changes, ev)
			case *client.Connection:
				l.conns = append(l.conns, ev)
			case *client.RefusedError:
				l.refused = append(l.refused, ev)
			case *client.Expiry:
				l.expiries = append(l.expiries, ev)
			case *client.Alarm:
				l.alarms = append(l.alarms, ev)
			case *client.NewContact:
				l.contacts = append(l.contacts, ev)
			case *client.DropError:
				l.errs = append(l.errs, ev)
			}
			if err != nil && ctx.Err() == nil {
				l.errs = append(l.errs, err)
			}
			close(l.changed)
			l.changed = make(chan struct{})
			l.mu.Unlock()
			if errors.Is(err, client.ErrClosed) {
				return
			}
		}
	}()
	return l
}

// wait waits until done says the listener has what the test needs, or
// fails the test with what it has. done runs with l.mu held.
func (l *listener) wait(ctx context.Context, t *testing.T, what string, done func() bool) {
	t.Helper()
	for {
		l.mu.Lock()
		ok, ch := done(), l.changed
		l.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("%s: not within the test's deadline; shown %d messages, %d errors, the last: %v", what, len(l.shown), len(l.errs), lastErr(l.errs))
		}
	}
}

func lastErr(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[len(errs)-1]
}

// shownIDs returns the ids of the messages shown, in order.
func (l *listener) shownIDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]string, len(l.shown))
	for i, m := range l.shown {
		ids[i] = m.ID
	}
	return ids
}

// hasShown reports whether a message with id was shown; l.mu is held.
func (l *listener) hasShown(id string) bool {
	for _, m := range l.shown {
		if m.ID == id {
			return true
		}
	}
	return false
}

// receiptsFor counts the delivery receipts received for id; l.mu is held.
func (l *listener) receiptsFor(id string) int {
	n := 0
	for _, r := range l.receipts {
		if r.ID == id && r.Kind == client.Delivered {
			n++
		}
	}
	return n
}

func randomID(prefix string) string {
	b := make([]byte, 8)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// sealTo seals a standard envelope from dev's identity to the user to,
// whose key it looks up with proof.
func sealTo(ctx context.Context, t *testing.T, dev *client.Device, store *keystore.Store, to jid.JID, h envelope.Header, c envelope.Content) *envelopexml.Envelope {
	t.Helper()
	res, err := dev.Keys().LookupKeys(ctx, to.String())
	if err != nil || len(res) != 1 || res[0].Key == nil {
		t.Fatalf("look up %s: %v %v", to, res, err)
	}
	env, err := envelope.SealStandard(store.Identity(), []envelope.Recipient{{JID: to.String(), Key: res[0].Key.Key}}, h, c)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestAbuseFlood: an attacker floods a victim's device with 1,000
// envelopes through clinkd, well formed and addressed to the victim but
// with a broken signature; meanwhile another user sends a real message.
// The real message is shown, and the victim's device spends only a few
// key directory lookups on the whole flood. Before the device cached
// verified keys, it looked the sender up for every envelope, the
// directory refused it past its rate limit, and a real message whose
// lookup was among the refused was dropped.
//
// The servers keep their production c2s shapers (Prosody 10 kB/s,
// ejabberd 3 kB/s per session), so the attacker does what an ordinary
// account can: it opens several sessions (ejabberd allows 10 per user)
// and sends the smallest valid envelopes, about 1 kB each. clinkd's own
// bound on what one sender hands the relay (relay.per_minute, 60 by
// default) is lifted: with it, one account gets 60 envelopes a minute to
// the victim, a dozen accounts as many as this flood, and the device must
// hold on its own.
func TestAbuseFlood(t *testing.T) {
	t.Parallel()
	const flood, sessions = 1000, 8
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv, func(c *daemon.Config) { c.Relay.PerMinute, c.Relay.Burst = 1e9, 1<<30 })
			comp := d.Component().Domain()
			bob, _ := deviceFor(t, srv, d, keys, "bob")
			mallory, _, malloryUser, malloryPass := accountFor(t, srv, d, keys, "alice")
			carol, _ := deviceFor(t, srv, d, keys, "carol")
			attackers := []*client.Client{mallory.Client()}
			for len(attackers) < sessions {
				attackers = append(attackers, clinkdtest.Login(t, srv, malloryUser, malloryPass))
			}
			// Generous: the flood takes about ten seconds through Prosody's
			// shaper and forty through ejabberd's; the machine is shared.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			bobJID, carolJID := bob.Client().JID().Bare(), carol.Client().JID().Bare()

			// The junk: enhanced envelopes of the smallest valid size from
			// mallory to bob, with random bytes for a signature. clinkd
			// relays each (it does not verify signatures); each fails only
			// at the signature.
			junk := make([]*envelopexml.Envelope, flood)
			now := time.Now().UTC().Truncate(time.Second)
			for i := range junk {
				junk[i] = &envelopexml.Envelope{
					Kind: envelopexml.Enhanced, From: malloryUser, To: []string{bobJID.String()},
					ID: fmt.Sprintf("junk-%04d", i), Time: now,
					KeyID: randomBytes(16), Nonce: randomBytes(12), Payload: randomBytes(16), Signature: randomBytes(384),
				}
				if err := junk[i].Validate(); err != nil {
					t.Fatal(err)
				}
			}

			l := listen(ctx, bob, true)
			before := lookups(t, d)
			// Each session sends its share in two halves, each followed by
			// a ping: clinkd handles a session's stanzas in order, so once
			// every session's ping is answered, clinkd has relayed that much
			// of the flood to bob.
			var half, all sync.WaitGroup
			errs := make(chan error, 2*sessions)
			floodStart := time.Now()
			for s, c := range attackers {
				half.Add(1)
				all.Add(1)
				go func() {
					defer all.Done()
					var mine []*envelopexml.Envelope
					for i := s; i < flood; i += sessions {
						mine = append(mine, junk[i])
					}
					for part, es := range [][]*envelopexml.Envelope{mine[:len(mine)/2], mine[len(mine)/2:]} {
						for _, e := range es {
							if err := c.SendEnvelope(ctx, comp, bobJID, e); err != nil {
								errs <- err
							}
						}
						if err := c.Ping(ctx, comp); err != nil {
							errs <- err
						}
						if part == 0 {
							half.Done()
						}
					}
				}()
			}
			half.Wait()
			start := time.Now()
			id, err := carol.Send(ctx, bobJID, "a real message during the flood", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			// shownOrDropped waits for carol's message id: shown, or
			// reported dropped (an error naming carol).
			dropped := 0
			shownOrDropped := func(what, id string) {
				t.Helper()
				l.wait(ctx, t, what, func() bool {
					for _, err := range l.errs[dropped:] {
						if strings.Contains(err.Error(), carolJID.String()) {
							t.Errorf("%s (%s) was dropped: %v", what, id, err)
							dropped = len(l.errs)
							return true
						}
					}
					return l.hasShown(id)
				})
			}
			shownOrDropped("carol's message during the flood", id)
			latency := time.Since(start)
			all.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("mallory's flood: %v", err)
			}
			// The whole flood is relayed; carol's next message comes after
			// all of it in bob's stream.
			end, err := carol.Send(ctx, bobJID, "after the flood", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			shownOrDropped("carol's message after the flood", end)
			rest, lasted := time.Since(start), time.Since(floodStart)
			// carol's two sends looked bob up, once each.
			spent := lookups(t, d) - before - 2
			t.Logf("%s: carol's message reached the app %v after it was sent, half way through the flood; the second half of the flood took %v more; bob's device made %d key lookups for %d junk envelopes; %d errors reported; %s",
				srv.Kind, latency.Round(time.Millisecond), (rest - latency).Round(time.Millisecond), spent, flood, len(l.errs), receiveStats(bob))
			// One lookup per sender (mallory, carol), and one refresh of
			// mallory's key at most for each envelope the throttle lets
			// through once mallory is throttled (one per 15 s): about 4
			// for a flood of forty seconds, and in any case two orders of
			// magnitude below the flood.
			want := 4 + int(lasted/(15*time.Second))
			if spent > want {
				t.Errorf("bob's device made %d key lookups during a flood of %d envelopes from one sender that lasted %v; want at most %d", spent, flood, lasted.Round(time.Second), want)
			}
			if ids := l.shownIDs(); len(ids) != 2 {
				t.Errorf("bob was shown %v; want carol's two messages only", ids)
			}
			checkFloodAccounted(t, bob, flood)
		})
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestAbuseReplay: the same envelope delivered twice is shown once, and
// only one receipt goes out for it: an ordinary envelope its sender sends
// through clinkd again; the same envelope, and a timed one, handed over
// again by the servers (here at clinkd's link, as a server that kept them
// would send them); and the timed one again when the device announces
// itself again (clinkd used to deliver what it holds once more then).
func TestAbuseReplay(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			comp := d.Component().Domain()
			alice, aliceStore := deviceFor(t, srv, d, keys, "alice")
			bob, _ := deviceFor(t, srv, d, keys, "bob")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			aliceJID, bobJID := alice.Client().JID().Bare(), bob.Client().JID().Bare()
			lb := listen(ctx, bob, true)
			la := listen(ctx, alice, false)

			// checkOnce sends an ordinary sentinel after the duplicates,
			// which comes after them on every path, then checks that bob
			// showed id once and sent one receipt for it, and (for an
			// ordinary message) that one receipt reached alice: the
			// receipts bob sent before the sentinel's reach alice before
			// it. (A timed message's receipt is not counted at alice:
			// clinkd drops it when it arrives before clinkd holds alice's
			// copy of the message, a race of the relay's, not the device's.)
			checkOnce := func(what, id string, timed bool) {
				t.Helper()
				sentinel, err := alice.Send(ctx, bobJID, "sentinel after "+what, client.SendOptions{})
				if err != nil {
					t.Fatal(err)
				}
				lb.wait(ctx, t, "the sentinel after "+what, func() bool { return lb.acked[sentinel] > 0 })
				la.wait(ctx, t, "the receipt of the sentinel after "+what, func() bool { return la.receiptsFor(sentinel) > 0 })
				n := 0
				for _, s := range lb.shownIDs() {
					if s == id {
						n++
					}
				}
				if n != 1 {
					t.Errorf("%s: message %s shown %d times, want once (shown: %v)", what, id, n, lb.shownIDs())
				}
				lb.mu.Lock()
				sent := lb.acked[id]
				lb.mu.Unlock()
				if sent != 1 {
					t.Errorf("%s: bob sent %d delivery receipts for %s, want 1", what, sent, id)
				}
				la.mu.Lock()
				r := la.receiptsFor(id)
				la.mu.Unlock()
				if !timed && r != 1 {
					t.Errorf("%s: %d delivery receipts for %s reached its sender, want 1", what, r, id)
				}
			}

			// 1. The sender sends one envelope twice through clinkd.
			env := sealTo(ctx, t, alice, aliceStore, bobJID, envelope.Header{ID: randomID("dup-"), Time: time.Now().UTC().Truncate(time.Second)},
				envelope.Content{Kind: envelope.KindText, Text: "sent twice"})
			for range 2 {
				if err := alice.Client().SendEnvelope(ctx, comp, bobJID, env); err != nil {
					t.Fatal(err)
				}
			}
			checkOnce("a resent envelope", env.ID, false)

			// 2. The servers hand the same envelope over again, as relayed
			// by clinkd (from alice's address at the component).
			from, err := address.AtComponent(aliceJID, comp)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Component().SendMessage(ctx, stanza.Message{ID: env.ID, From: from, To: bob.Client().JID(), Type: stanza.ChatMessage}, env); err != nil {
				t.Fatal(err)
			}
			checkOnce("an envelope handed over again", env.ID, false)

			// 3. A timed message, relayed by clinkd, then handed over again
			// as the headline it came in.
			now := time.Now().UTC().Truncate(time.Second)
			timed := sealTo(ctx, t, alice, aliceStore, bobJID, envelope.Header{ID: randomID("timed-"), Time: now, Expires: now.Add(time.Minute)},
				envelope.Content{Kind: envelope.KindText, Text: "timed, delivered twice"})
			if err := alice.Client().SendEnvelope(ctx, comp, bobJID, timed); err != nil {
				t.Fatal(err)
			}
			lb.wait(ctx, t, "the timed message", func() bool { return lb.hasShown(timed.ID) })
			if err := d.Component().SendMessage(ctx, stanza.Message{ID: timed.ID, From: from, To: bob.Client().JID(), Type: stanza.HeadlineMessage},
				timed, hints.NoStore{}, hints.NoPermanentStore{}); err != nil {
				t.Fatal(err)
			}
			checkOnce("a timed message handed over again", timed.ID, true)

			// 4. bob's device announces itself again while clinkd holds the
			// timed message. bob's ping is answered after the announcement
			// was handled, so anything delivered for it is in bob's stream
			// before the sentinel.
			if err := bob.Client().Announce(ctx, comp); err != nil {
				t.Fatal(err)
			}
			if err := bob.Client().Ping(ctx, comp); err != nil {
				t.Fatal(err)
			}
			checkOnce("a timed message after announcing again", timed.ID, true)
			// At least the two handed over at the link reached the device;
			// clinkd may refuse the others itself.
			checkReplaysCounted(t, bob, 2)
		})
	}
}

// TestAbuseExpired: a timed envelope whose expiry has passed (by more
// than the device's clock skew allowance) is refused by the device even
// when a server hands it over. clinkd itself refuses it from the sender;
// here it is handed over as a server that kept it would: from the
// sender's address at the component, through the real server.
func TestAbuseExpired(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			comp := d.Component().Domain()
			alice, aliceStore := deviceFor(t, srv, d, keys, "alice")
			bob, _ := deviceFor(t, srv, d, keys, "bob")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			aliceJID, bobJID := alice.Client().JID().Bare(), bob.Client().JID().Bare()
			lb := listen(ctx, bob, true)

			now := time.Now().UTC().Truncate(time.Second)
			env := sealTo(ctx, t, alice, aliceStore, bobJID, envelope.Header{ID: randomID("expired-"), Time: now.Add(-time.Hour), Expires: now.Add(-10 * time.Minute)},
				envelope.Content{Kind: envelope.KindText, Text: "expired ten minutes ago"})

			// clinkd refuses it from its sender.
			if err := alice.Client().SendEnvelope(ctx, comp, bobJID, env); err != nil {
				t.Fatal(err)
			}
			if s, err := alice.Client().Next(ctx, func(s *client.Stanza) bool { return s.Type == "error" && s.ID == env.ID }); err != nil {
				t.Fatalf("clinkd's answer to an expired timed message: %v", err)
			} else if !strings.Contains(string(s.Raw), "not-acceptable") {
				t.Errorf("clinkd answered an expired timed message with %s, want not-acceptable", s.Raw)
			}

			// A server that kept it hands it over anyway.
			from, err := address.AtComponent(aliceJID, comp)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Component().SendMessage(ctx, stanza.Message{ID: env.ID, From: from, To: bob.Client().JID(), Type: stanza.HeadlineMessage},
				env, hints.NoStore{}, hints.NoPermanentStore{}); err != nil {
				t.Fatal(err)
			}
			sentinel, err := alice.Send(ctx, bobJID, "sentinel after the expired message", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			lb.wait(ctx, t, "the sentinel", func() bool { return lb.hasShown(sentinel) })
			if ids := lb.shownIDs(); len(ids) != 1 {
				t.Errorf("bob was shown %v; want only the sentinel %s, not the expired %s", ids, sentinel, env.ID)
			}
			checkExpiredReported(t, lb.errs, env.ID)
		})
	}
}

// TestAbuseKeyShares: an attacker sends a victim a dozen valid key shares
// (each a new contact key, signed with the attacker's own published key).
// The victim's key store keeps at most a few keys for that contact, so
// the file does not grow with the shares.
func TestAbuseKeyShares(t *testing.T) {
	t.Parallel()
	const shares = 12
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, dirKeys := abuseLab(t, srv)
			comp := d.Component().Domain()
			mallory, malloryStore := deviceFor(t, srv, d, dirKeys, "alice")
			bob, bobStore := deviceFor(t, srv, d, dirKeys, "bob")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			malloryJID, bobJID := mallory.Client().JID().Bare(), bob.Client().JID().Bare()
			lb := listen(ctx, bob, false)
			path := storePath(t, bobStore)
			before := fileSize(t, path)

			keys := make([]envelope.ContactKey, shares)
			for i := range keys {
				keys[i] = envelope.NewContactKey()
				env := sealTo(ctx, t, mallory, malloryStore, bobJID, envelope.Header{ID: randomID("share-"), Time: time.Now().UTC().Truncate(time.Second)},
					envelope.Content{Kind: envelope.KindKeyShare, Key: keys[i]})
				if err := mallory.Client().SendEnvelope(ctx, comp, bobJID, env); err != nil {
					t.Fatal(err)
				}
			}
			sentinel, err := mallory.Send(ctx, bobJID, "sentinel after the shares", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			lb.wait(ctx, t, "the sentinel", func() bool { return lb.hasShown(sentinel) })
			stored := 0
			for _, k := range keys {
				if _, ok := bobStore.ContactKey(malloryJID.String(), k.ID()); ok {
					stored++
				}
			}
			// One entry: str(contact), str(key) and the fingerprint of
			// the contact's key it was shared with (docs/keystore.md).
			entry := int64(4 + len(malloryJID.String()) + 4 + envelope.ContactKeySize + 32)
			// The store also pins the sender's key, once (str(JID),
			// fingerprint, flags, version), and the checkpoint it pinned
			// may have grown by a digit or two.
			pin := int64(4 + len(malloryJID.String()) + 32 + 1 + 8)
			// And its trust record, once (key store version 2: str(JID),
			// state, key, new key, flags, five numbers, str(end kind)).
			trust := int64(4 + len(malloryJID.String()) + 1 + 32 + 32 + 1 + 5*8 + 4)
			const checkpointDigits = 8
			grown := fileSize(t, path) - before
			t.Logf("%s: %d shares sent, %d keys kept for the sender, the key store grew by %d bytes; %s", srv.Kind, shares, stored, grown, receiveStats(bob))
			if stored > maxKeysPerContact {
				t.Errorf("bob's store keeps %d of %d keys shared by one contact; want at most %d", stored, shares, maxKeysPerContact)
			}
			if want := maxKeysPerContact*entry + pin + trust + checkpointDigits; grown > want {
				t.Errorf("bob's key store grew by %d bytes for %d shares from one contact; want at most %d (%d entries, one pin, one trust record)", grown, shares, want, maxKeysPerContact)
			}
		})
	}
}

// maxKeysPerContact is what the attack tests expect of the key store.
const maxKeysPerContact = 4

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestAbuseDroppedBeforeLookup: envelopes that fail the cheap checks cost
// no key lookup: from the wrong author for the conversation, expired,
// dated in the future, or older than the device remembers. They are
// handed over as a server would (from a user's address at the
// component); none is shown, each is reported, and the directory sees no
// lookup from the device while it refuses them.
func TestAbuseDroppedBeforeLookup(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			comp := d.Component().Domain()
			alice, _ := deviceFor(t, srv, d, keys, "alice")
			bob, _ := deviceFor(t, srv, d, keys, "bob")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			aliceJID, bobJID := alice.Client().JID().Bare(), bob.Client().JID().Bare()
			from, err := address.AtComponent(aliceJID, comp)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now().UTC().Truncate(time.Second)
			cases := []struct {
				reason        string // what the device must say
				author        string
				time, expires time.Time
			}{
				{"wrong author", "someone-else@" + srv.Domain, now, time.Time{}},
				{"expired", aliceJID.String(), now.Add(-time.Hour), now.Add(-ClockSkewForTest - time.Second)},
				{"from the future", aliceJID.String(), now.Add(time.Hour), time.Time{}},
				{"too old", aliceJID.String(), now.Add(-31 * 24 * time.Hour), time.Time{}},
			}
			ids := make([]string, len(cases))
			lb := listen(ctx, bob, true)
			before := lookups(t, d)
			for i, c := range cases {
				env := &envelopexml.Envelope{
					Kind: envelopexml.Enhanced, From: c.author, To: []string{bobJID.String()},
					ID: randomID("cheap-"), Time: c.time, Expires: c.expires,
					KeyID: randomBytes(16), Nonce: randomBytes(12), Payload: randomBytes(16), Signature: randomBytes(384),
				}
				if err := env.Validate(); err != nil {
					t.Fatal(err)
				}
				ids[i] = env.ID
				if err := d.Component().SendMessage(ctx, stanza.Message{ID: env.ID, From: from, To: bob.Client().JID(), Type: stanza.ChatMessage}, env); err != nil {
					t.Fatal(err)
				}
			}
			// Each is refused (an error naming it) or shown.
			lb.wait(ctx, t, "the refusals", func() bool {
				for _, id := range ids {
					named := slicesContainsFunc(lb.errs, func(err error) bool { return strings.Contains(err.Error(), id) })
					if !named && !lb.hasShown(id) {
						return false
					}
				}
				return true
			})
			spent := lookups(t, d) - before
			t.Logf("%s: %d refusals, %d lookups; errors: %v", srv.Kind, len(cases), spent, lb.errs)
			if spent != 0 {
				t.Errorf("bob's device made %d key lookups for envelopes it could refuse without one; want 0", spent)
			}
			if shown := lb.shownIDs(); len(shown) != 0 {
				t.Errorf("bob was shown %v; want none of them", shown)
			}
			for i, c := range cases {
				checkDropReason(t, lb.errs, ids[i], c.reason)
			}
		})
	}
}

func slicesContainsFunc(errs []error, f func(error) bool) bool {
	for _, err := range errs {
		if f(err) {
			return true
		}
	}
	return false
}

// TestDirectoryBusy: when the directory refuses the device's lookup for
// its rate limit, the envelope is kept and tried again later, not
// dropped. Here the device itself has spent its lookups (one per 10 s is
// allowed) just before a real message arrives.
func TestDirectoryBusy(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			keys := clinkdtest.NewKeyDirKeys(t)
			d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
				c.Database = daemon.DatabaseConfig{URL: labtest.NewDatabase(t), Migrate: true}
				keys.Configure(c)
				c.KeyDir.LookupPerMinute = 6
				c.KeyDir.LookupBurst = 20
			})
			comp := d.Component().Domain()
			// carol first: bob's device then pins a checkpoint that holds
			// both keys, and its lookups need no consistency proof.
			carol, _ := deviceFor(t, srv, d, keys, "carol")
			bob, _ := deviceFor(t, srv, d, keys, "bob")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			bobJID, carolJID := bob.Client().JID().Bare(), carol.Client().JID().Bare()

			id, err := carol.Send(ctx, bobJID, "while bob's lookups are refused", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			// bob spends his lookups (of users with no key) until the
			// directory refuses, then starts reading.
			spender, err := bob.Client().OpenKeyDirectory(client.KeyDirConfig{Service: comp, Verifier: keys.Verifier, VRFKey: keys.VRFKey})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; ; i++ {
				_, err := spender.LookupKeys(ctx, fmt.Sprintf("nobody%d@%s", i, srv.Domain))
				if err != nil {
					if !strings.Contains(err.Error(), "too many key directory lookups") {
						t.Fatal(err)
					}
					break
				}
				if i > 30 {
					t.Fatal("the directory did not refuse bob's lookups")
				}
			}
			start := time.Now()
			l := listen(ctx, bob, true)
			l.wait(ctx, t, "carol's message", func() bool {
				for _, err := range l.errs {
					if strings.Contains(err.Error(), carolJID.String()) {
						t.Fatalf("carol's message %s was dropped: %v", id, err)
					}
				}
				return l.hasShown(id)
			})
			t.Logf("%s: carol's message shown %v after bob started reading; %s", srv.Kind, time.Since(start).Round(time.Millisecond), receiveStats(bob))
			checkRetried(t, bob)
		})
	}
}

// TestKeyChangeNoticed: the cache does not hide a key change, and the
// message that reveals it is not lost. alice's device is replaced (an
// operator resets her binding and a new key is published) after bob's
// device cached her key; her next message fails its signature with the
// cached key, bob's device asks the directory again, verifies the message
// with the new key and reports the change with the message (a
// KeyChanged event carrying it; before, the message was dropped with the
// change as its reason), and then shows her messages under the new key.
func TestKeyChangeNoticed(t *testing.T) {
	t.Parallel()
	for _, srv := range labtest.Servers(t) {
		t.Run(string(srv.Kind), func(t *testing.T) {
			t.Parallel()
			d, keys := abuseLab(t, srv)
			alice, _, aliceUser, alicePass := accountFor(t, srv, d, keys, "alice")
			clock := &testClock{t: time.Now()}
			bob, _ := deviceWithClock(t, srv, d, keys, "bob", clock.Now)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			bobJID := bob.Client().JID().Bare()
			lb := listen(ctx, bob, true)

			first, err := alice.Send(ctx, bobJID, "with the first key", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			lb.wait(ctx, t, "the first message", func() bool { return lb.hasShown(first) })

			if _, err := d.KeyDir().Store().End(ctx, aliceUser, keylog.KindReset, "test: new phone", time.Now()); err != nil {
				t.Fatal(err)
			}
			store, err := keystore.Create(filepath.Join(t.TempDir(), "keys"), []byte("device passphrase"), clinkdtest.Identity(t, "dave", aliceUser))
			if err != nil {
				t.Fatal(err)
			}
			phone, err := client.NewDevice(client.DeviceConfig{Client: clinkdtest.Login(t, srv, aliceUser, alicePass), Store: store, Component: d.Component().Domain(), LogKey: keys.Verifier, VRFKey: keys.VRFKey})
			if err != nil {
				t.Fatal(err)
			}
			if err := phone.Start(ctx); err != nil {
				t.Fatal(err)
			}
			// Past the interval at which a failed signature may ask again.
			clock.Advance(11 * time.Second)
			second, err := phone.Send(ctx, bobJID, "with the new key", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			third, err := phone.Send(ctx, bobJID, "with the new key again", client.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			lb.wait(ctx, t, "the third message", func() bool { return lb.hasShown(third) })
			lb.mu.Lock()
			changes, errs := lb.changes, lb.errs
			lb.mu.Unlock()
			if len(changes) != 1 || changes[0].Message == nil || changes[0].Message.ID != second ||
				changes[0].Message.Text != "with the new key" || changes[0].Change.JID != aliceUser || changes[0].Change.New == nil {
				t.Errorf("bob's device reported the key changes %+v; want one, of %s, carrying message %s", changes, aliceUser, second)
			}
			if len(errs) != 0 {
				t.Errorf("bob's device dropped %v; want nothing dropped", errs)
			}
			t.Logf("%s: shown %v, key changes %d, errors %v; %s", srv.Kind, lb.shownIDs(), len(changes), errs, receiveStats(bob))
		})
	}
}

// testClock is a device clock that the test moves forward.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
