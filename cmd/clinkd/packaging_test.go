package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// unitSettings returns a unit file's settings, "[Section] Key=value" in
// order, without comments, blank lines and the keys in skip.
func unitSettings(t *testing.T, path string, skip ...string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	section := ""
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		default:
			key, _, _ := strings.Cut(line, "=")
			if !slices.Contains(skip, key) && !slices.Contains(skip, section) {
				out = append(out, section+" "+line)
			}
		}
	}
	return out
}

// TestSpareUnit keeps packaging/systemd/clinkd-spare.service in step with
// clinkd.service: the spare runs clinkd as the service does, with the
// same hardening, user, handoff socket and command (--takeover), and
// differs only in its description, in never being restarted and in
// never being enabled (docs/operators.md, "Restart and upgrade without
// losing timed messages").
func TestSpareUnit(t *testing.T) {
	t.Parallel()
	main := unitSettings(t, "../../packaging/systemd/clinkd.service", "Description", "Restart", "RestartSec", "[Install]")
	spare := unitSettings(t, "../../packaging/systemd/clinkd-spare.service", "Description", "Restart")
	if !slices.Equal(main, spare) {
		t.Errorf("clinkd-spare.service's settings differ from clinkd.service's:\nclinkd.service:\n%s\nclinkd-spare.service:\n%s",
			strings.Join(main, "\n"), strings.Join(spare, "\n"))
	}
	for _, want := range []string{"[Service] Restart=no"} {
		if !slices.Contains(unitSettings(t, "../../packaging/systemd/clinkd-spare.service"), want) {
			t.Errorf("clinkd-spare.service lacks %q", want)
		}
	}
	for _, want := range []string{
		"[Service] ExecStart=/usr/local/bin/clinkd serve --config /etc/clinkd/clinkd.yaml --takeover",
		"[Service] Environment=CLINKD_EXPIRY_HANDOFF_SOCKET=/run/clinkd/handoff.sock",
		"[Service] RuntimeDirectoryMode=0700",
		"[Service] Restart=always",
	} {
		if !slices.Contains(unitSettings(t, "../../packaging/systemd/clinkd.service"), want) {
			t.Errorf("clinkd.service lacks %q", want)
		}
	}
}
