// Command clinkctl is the reference ClinkMe device on the command line:
// log in, keep a device key store, publish and verify keys, send and
// receive end-to-end messages through clinkd, move keys between devices.
// With clinklab running: clinkctl --lab DIR/lab.json --as alice login.
// See client/ctl and README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/clinkme/clinkd/client/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
