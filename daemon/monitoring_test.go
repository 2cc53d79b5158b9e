package daemon_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/clinkme/clinkd/clinkdtest"
	"github.com/clinkme/clinkd/daemon"
	"github.com/clinkme/clinkd/keylog"
	"github.com/clinkme/clinkd/lab"
	"github.com/clinkme/clinkd/lab/labtest"
)

// TestMonitoringFiles: every metric the shipped Prometheus rules and
// Grafana dashboard query is one a running clinkd serves on /metrics, so
// neither can silently watch nothing after a rename.
func TestMonitoringFiles(t *testing.T) {
	t.Parallel()
	srv := labtest.Server(t, lab.Prosody)
	// The key directory with a witness, for the witness metrics.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	vkey, err := keylog.GenerateKey("clink.lab.localhost/keydir", filepath.Join(dir, "signer"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keylog.GenerateVRFKey("clink.lab.localhost/keydir", filepath.Join(dir, "vrf")); err != nil {
		t.Fatal(err)
	}
	w := labtest.NewWitness(t, "w1.witness.lab.localhost")
	if err := w.AddLog(ctx, "clink.lab.localhost/keydir", vkey); err != nil {
		t.Fatal(err)
	}
	d := clinkdtest.Start(t, srv, func(c *daemon.Config) {
		c.Database = daemon.DatabaseConfig{URL: labtest.NewDatabase(t), Migrate: true}
		c.KeyDir.SignerKeyFile, c.KeyDir.VRFKeyFile = filepath.Join(dir, "signer"), filepath.Join(dir, "vrf")
		c.KeyDir.Witness = daemon.WitnessConfig{URLs: []string{w.URL}, Keys: []string{w.VerifierKey}}
	})
	// One round trip, so that the handler latency histogram has a series.
	// A checkpoint cosigned, so that the witness counter has a series.
	if _, _, err := d.KeyDir().Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	dev := clinkdtest.NewDevice(t, srv)
	if err := dev.Ping(ctx, d.Component().Domain()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + d.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	served := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([a-z_:][a-z0-9_:]*)[{ ]`).FindAllSubmatch(body, -1) {
		served[string(m[1])] = true
	}
	metricName := regexp.MustCompile(`\b(?:clinkd|process|go)_[a-z0-9_]+\b`)
	for _, file := range []string{"../packaging/prometheus/clinkd.rules.yml", "../packaging/grafana/clinkd-dashboard.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		names := metricName.FindAllString(string(b), -1)
		if len(names) == 0 {
			t.Errorf("%s names no metric", file)
		}
		for _, n := range names {
			if !served[n] {
				t.Errorf("%s queries %s, which clinkd does not serve", file, n)
			}
		}
	}
}
