package doctor

import (
	"strings"
	"testing"
)

// TestVerdictSkips: the verdict tells checks the deployment does not
// serve from checks that did not run because one they need failed. A
// doctor run against a server whose certificate did not verify said
// "3 skipped: not served by this deployment" of the login, the component
// and XEP-0215, which that deployment served.
func TestVerdictSkips(t *testing.T) {
	var d doctor
	d.add("c2s TLS", Failed, "certificate signed by unknown authority")
	d.blocked("login", "needs TLS first")
	d.blocked("component", "needs a login")
	d.add("ClinkID", Skipped, "404, ClinkID accounts are not configured")
	var b strings.Builder
	d.report.WriteTo(&b)
	verdict := b.String()[strings.LastIndex(b.String(), "verdict:"):]
	want := "verdict: 1 of 4 checks failed (1 skipped: not served by this deployment) (2 not run: they need a check that did not pass)\n"
	if verdict != want {
		t.Errorf("verdict %q, want %q", verdict, want)
	}
	for _, line := range []string{"  skip  login        needs TLS first\n", "  skip  component    needs a login\n"} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("report %q lacks %q", b.String(), line)
		}
	}
}
