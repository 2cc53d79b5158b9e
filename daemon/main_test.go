package daemon_test

import (
	"io"
	"net"
	"os"
	"testing"

	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	// As a child of TestHandoffRefusesOtherUsers, running as another
	// user: connect to the handoff socket and wait to be turned away.
	if path := os.Getenv("CLINKD_TEST_DIAL_HANDOFF"); path != "" {
		conn, err := net.Dial("unix", path)
		if err != nil {
			os.Exit(2)
		}
		io.Copy(io.Discard, conn)
		os.Exit(0)
	}
	os.Exit(labtest.Main(m, labtest.Need{Prosody: true, Ejabberd: true, Postgres: true, Fast: true}))
}
