package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/envelope"
	"github.com/clinkme/clinkd/client/keystore"
)

// A device's first run and its event loop: log in, make the key store,
// start (which publishes the key on the first run), send, and take
// events until the session ends. It needs a server, so it is compiled
// but not run.
func Example() {
	ctx := context.Background()
	me := jid.MustParse("alice@example.org")
	c, err := client.Dial(ctx, client.Config{
		Addr: "chat.example.org:5222", JID: me, Password: "app token from ClinkID",
		TLS: &tls.Config{}, // the system's roots verify chat.example.org
	})
	if errors.Is(err, client.ErrNotAuthorized) {
		log.Fatal("wrong password or app token: ask the user again")
	} else if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	id, err := envelope.GenerateIdentity(me.String())
	if err != nil {
		log.Fatal(err)
	}
	store, err := keystore.Create("/data/clinkme.keys", []byte("the user's passphrase"), id)
	if err != nil {
		log.Fatal(err)
	}
	dev, err := client.NewDevice(client.DeviceConfig{
		Client: c, Store: store, Component: jid.MustParse("clink.example.org"),
		VerifierKey: "clink.example.org/keydir+…", VRFKey: "clink.example.org/keydir+…", // shipped with the app
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := dev.Start(ctx); err != nil {
		log.Fatal(err) // an *OwnKeyError says when the key was reset or replaced
	}
	if _, err := dev.Send(ctx, jid.MustParse("bob@example.org"), "hello", client.SendOptions{Enhanced: true}); err != nil {
		log.Print(err) // see ExampleDevice_Send
	}
	for {
		ev, err := dev.NextEvent(ctx)
		if err != nil {
			log.Fatal(err) // the session ended for good: c.Err() says why
		}
		fmt.Printf("%T\n", ev) // see ExampleDevice_NextEvent
	}
}

// What an app does with each outcome of Send.
func ExampleDevice_Send() {
	var dev *client.Device // started
	ctx := context.Background()
	bob := jid.MustParse("bob@example.org")
	id, err := dev.Send(ctx, bob, "gone in a minute", client.SendOptions{Enhanced: true, TTL: time.Minute})
	var refused *client.RefusedError
	var changed *client.KeyChangeError
	switch {
	case err == nil:
		fmt.Println("accepted by clinkd:", id)
	case errors.As(err, &changed):
		// Nothing was sent. Show the change; send again when the user
		// agrees (the device knows the new key now).
		fmt.Println("bob's key changed:", changed.Changes[0].JID)
	case errors.As(err, &refused):
		// Nothing was relayed. For a validity period out of bounds,
		// clinkd names them.
		if refused.MaxValidity > 0 {
			fmt.Printf("choose a validity between %v and %v\n", refused.MinValidity, refused.MaxValidity)
		}
	case errors.Is(err, client.ErrUnconfirmed):
		// Sent, but clinkd's answer was lost with the connection:
		// sending again may show it twice, never lose it.
	case errors.Is(err, client.ErrNoKey):
		fmt.Println("bob has not published a key yet")
	default:
		log.Print(err)
	}
}

// An app's event loop: every kind of event, and what to do with it.
func ExampleDevice_NextEvent() {
	var dev *client.Device // started
	ctx := context.Background()
	for {
		ev, err := dev.NextEvent(ctx)
		if err != nil {
			return // ctx ended, or the session ended for good (errors.Is(err, client.ErrClosed))
		}
		switch ev := ev.(type) {
		case *client.Message:
			fmt.Println(ev.From, ev.Time, ev.Text) // show it; delete it at ev.Expires if set
			dev.Acknowledge(ctx, ev, client.Delivered)
		case *client.KeyChanged:
			fmt.Println("verify the new key of", ev.Change.JID)
			if ev.Message != nil {
				// Verified with the new key: the app decides whether to
				// show it before the user accepted the change.
			}
		case *client.Receipt:
			fmt.Println(ev.ID, ev.Kind, "by", ev.From)
		case *client.Expiry:
			fmt.Println("delete", ev.ID) // Local: by this device's clock
		case *client.DropError:
			fmt.Println("refused a message from", ev.From, "because", ev.Reason)
		case *client.RefusedError:
			fmt.Println("clinkd refused", ev.ID, ev.Condition)
		case *client.Connection:
			fmt.Println("online:", ev.Up)
		case *client.InboxOverflow:
			fmt.Println(ev.Dropped, "stanzas lost: read events faster")
		}
	}
}

// Errors are matched by type and sentinel, never by text.
func ExampleRefusedError() {
	err := error(&client.RefusedError{
		ID: "m1", To: jid.MustParse("bob@example.org"), Condition: "not-acceptable", Type: "modify",
		Text: "the validity period must be between 5s and 168h0m0s from now", MinValidity: 5 * time.Second, MaxValidity: 168 * time.Hour,
	})
	var re *client.RefusedError
	fmt.Println(errors.Is(err, client.ErrRefused), errors.As(err, &re), re.MinValidity, re.MaxValidity, re.Temporary())
	// Output: true true 5s 168h0m0s false
}

// A login refused by the server matches a sentinel of its condition.
func ExampleAuthError() {
	err := fmt.Errorf("client: login as alice@example.org: %w", &client.AuthError{Condition: "not-authorized", Text: "Invalid username or password"})
	fmt.Println(errors.Is(err, client.ErrNotAuthorized), errors.Is(err, client.ErrAccountLocked))
	// Output: true false
}

// Start stops, and says why, when the device's key was reset.
func ExampleOwnKeyError() {
	err := error(&client.OwnKeyError{Own: client.OwnKey{Status: client.KeyEnded}})
	fmt.Println(errors.Is(err, client.ErrOwnKeyReset), errors.Is(err, client.ErrOwnKeyReplaced))
	fmt.Println(err)
	// Output:
	// true false
	// client: the directory ended this device's key binding; the key is not published again unless the user chooses to
}

// ClinkID's errors match the same sentinels as the XMPP login's.
func ExampleAPIError() {
	err := error(&client.APIError{Status: 429, Code: "account_locked", Message: "try again later", RetryAfter: time.Minute})
	var api *client.APIError
	fmt.Println(errors.Is(err, client.ErrAccountLocked), errors.As(err, &api), api.RetryAfter)
	// Output: true true 1m0s
}
