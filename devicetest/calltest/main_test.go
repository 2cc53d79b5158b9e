package calltest

import (
	"flag"
	"os"
	"testing"

	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Fuzzing runs this binary once per worker: fuzz targets need no
	// server, so none is started for them.
	if fuzzing() {
		os.Exit(m.Run())
	}
	os.Exit(labtest.Main(m, labtest.Need{Prosody: true, Ejabberd: true, Coturn: true}))
}

func fuzzing() bool {
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return true
	}
	f := flag.Lookup("test.fuzzworker")
	return f != nil && f.Value.String() == "true"
}
