package devsync_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/clinkme/clinkd/client/devsync"
)

// Compare BenchmarkSession with BenchmarkBaselineTCP from the same run: the
// baseline is one plain TCP connection on loopback carrying the same
// payload one way and a one-byte answer back, which is the least any sync
// over TCP costs. The ratio is the price of the key exchange, the key
// schedule and AES-256-GCM (the user's typing is not measured: the code is
// handed over through a channel).

var benchSizes = []int{4 << 10, 64 << 10, 1 << 20}

func BenchmarkSession(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("payload=%dKiB", size>>10), func(b *testing.B) {
			payload := make([]byte, size)
			rand.Read(payload)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			addr := ln.Addr().String()
			ctx := context.Background()
			codes := make(chan string, 1)
			ocfg := devsync.OfferConfig{
				DeviceID: "phone-new",
				Account:  "alice@clink.example",
				ShowCode: func(_ context.Context, c string) error { codes <- c; return nil },
				Confirm:  func(context.Context) error { return nil },
			}
			acfg := devsync.AcceptConfig{DeviceID: "phone-old", Account: "alice@clink.example", Payload: payload}
			code := func(context.Context) (string, error) { return <-codes, nil }
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				errc := make(chan error, 1)
				go func() {
					got, err := devsync.Offer(ctx, ln, ocfg)
					if err == nil && len(got.Payload) != size {
						err = fmt.Errorf("got %d bytes", len(got.Payload))
					}
					errc <- err
				}()
				if err := devsync.Accept(ctx, addr, code, acfg); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkBaselineTCP(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("payload=%dKiB", size>>10), func(b *testing.B) {
			payload := make([]byte, size)
			rand.Read(payload)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			addr := ln.Addr().String()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				errc := make(chan error, 1)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						errc <- err
						return
					}
					defer c.Close()
					var n [4]byte
					if _, err := io.ReadFull(c, n[:]); err != nil {
						errc <- err
						return
					}
					buf := make([]byte, binary.BigEndian.Uint32(n[:]))
					if _, err := io.ReadFull(c, buf); err != nil {
						errc <- err
						return
					}
					_, err = c.Write([]byte{1})
					errc <- err
				}()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				msg := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
				if _, err := c.Write(append(msg, payload...)); err != nil {
					b.Fatal(err)
				}
				var ack [1]byte
				if _, err := io.ReadFull(c, ack[:]); err != nil {
					b.Fatal(err)
				}
				c.Close()
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
