package devsync_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/clinkme/clinkd/client/devsync"
)

// The receiving (new) device offers a session and shows the code; its user
// confirms at the end that the other device said "code accepted".
func ExampleOffer() {
	ctx := context.Background()
	ln, err := net.Listen("tcp", ":0") // on the LAN; tell the other device the address
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer ln.Close()
	stdin := bufio.NewReader(os.Stdin)
	got, err := devsync.Offer(ctx, ln, devsync.OfferConfig{
		DeviceID: "3f1c9a6e", // random per installation
		Account:  "alice@clink.example",
		ShowCode: func(_ context.Context, code string) error {
			fmt.Printf("Type %s %s on your other device.\n", code[:3], code[3:])
			return nil
		},
		Confirm: func(context.Context) error {
			fmt.Print(`Does your other device say "code accepted"? [y/N] `)
			if a, _ := stdin.ReadString('\n'); strings.TrimSpace(a) != "y" {
				return fmt.Errorf("not confirmed")
			}
			return nil
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // errors.Is(err, devsync.ErrWrongCode) etc. pick the message
		return
	}
	_ = got.Payload // import into the key store
}

// The device holding the secrets accepts: its user types the code shown on
// the other device, and the payload leaves only if it matches.
func ExampleAccept() {
	ctx := context.Background()
	keyStore := []byte("keystore v1 ...") // the caller's serialization
	stdin := bufio.NewReader(os.Stdin)
	err := devsync.Accept(ctx, "192.0.2.10:7420", func(context.Context) (string, error) {
		fmt.Print("Code shown on the new device: ")
		return stdin.ReadString('\n')
	}, devsync.AcceptConfig{
		DeviceID: "a7d2e410",
		Account:  "alice@clink.example",
		Payload:  keyStore,
		OnCodeAccepted: func() {
			fmt.Println("Code accepted. Confirm on the new device.")
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}
