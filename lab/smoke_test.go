package lab_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/clinkme/clinkd/lab"
)

func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	ca, err := lab.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range lab.Kinds() {
		t0 := time.Now()
		s, err := lab.StartXMPP(context.Background(), lab.XMPPOptions{Kind: k, Dir: dir, Domain: "lab.localhost", CA: ca,
			Components: []lab.Component{{Domain: "c1.clink.lab.localhost", Secret: "s1"}, {Domain: "c2.clink.lab.localhost", Secret: "s2"}},
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Log("start", time.Since(t0))
		t0 = time.Now()
		if err := s.Register(context.Background(), "alice", "pw"); err != nil {
			t.Error(err)
		}
		t.Log("register", time.Since(t0))
		d, err := s.DumpStorage(context.Background())
		t.Logf("dump %d %v\n%s", len(d), err, d)
		t0 = time.Now()
		t.Log(s.LogTail())
		if err := s.Close(); err != nil {
			t.Error(err)
		}
		t.Log("stop", time.Since(t0))
	}
}
