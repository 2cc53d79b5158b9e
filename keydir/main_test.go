package keydir_test

import (
	"os"
	"testing"

	"github.com/clinkme/clinkd/lab/labtest"
)

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, labtest.Need{Postgres: true, Prosody: true, Ejabberd: true}))
}
