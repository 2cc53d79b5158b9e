package bench_test

import (
	"flag"
	"os"
	"testing"

	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	// Fast: no c2s shaper, so clinkd is measured, not the shaper.
	os.Exit(labtest.Main(m, labtest.Need{Prosody: true, Ejabberd: true, Postgres: true, Coturn: true, Fast: true}))
}
