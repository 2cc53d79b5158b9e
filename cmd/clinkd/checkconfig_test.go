package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfig: clinkd check-config refuses each nonsense value an
// operator could write, lists every problem at once with a non-zero exit,
// and accepts a sound configuration without touching the network.
func TestCheckConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := filepath.Join(dir, "component.secret")
	os.WriteFile(secret, []byte("7f3a9c0e5b2d481f6a0c9e3b7d15f2a8c4e6b0d9f1a3c5e7092b4d6f8a1c3e5b\n"), 0o600)
	open := filepath.Join(dir, "open.secret")
	os.WriteFile(open, []byte("a turn secret every user can read\n"), 0o644)
	base := "link:\n  addr: 127.0.0.1:5347\n  domain: clink.example.org\n  secret_file: " + secret + "\n  server_domain: example.org\n"
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	good := write("good.yaml", base)
	// A key file that exists but that this process cannot open (as root,
	// a permission bit cannot stop it; a socket can): serve would fail to
	// read it, so check-config must say so rather than stat it and pass.
	unopenable := filepath.Join(dir, "keydir.signer")
	l, err := net.Listen("unix", unopenable)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Chmod(unopenable, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := clinkd(t, "check-config", "--config", good); code != 0 || !strings.Contains(out, "no problem found") {
		t.Fatalf("a sound config: %d %q %q", code, out, errs)
	}
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"periods out of order", "expiry:\n  min_period: 2h\n  max_period: 1h\n", []string{"periods out of order"}},
		{"unseen above max", "expiry:\n  max_period: 1h\n  unseen_max_period: 2h\n", []string{"periods out of order"}},
		{"negative numbers", "expiry:\n  per_user_messages: -5\nrelay:\n  per_minute: -1\nlink:\n  queue_depth: -3\n",
			[]string{"expiry.per_user_messages is negative", "relay.per_minute is negative", "link.queue_depth is negative"}},
		{"negative duration", "link:\n  handler_timeout: -10s\n", []string{"link.handler_timeout is negative"}},
		{"world-readable secret", "turn:\n  services: [\"turn:127.0.0.1:3478\"]\n  secret_file: " + open + "\n", []string{"turn.secret_file", "readable by every local user"}},
		{"missing key file", "public:\n  listen: 127.0.0.1:8443\n  cert_file: " + filepath.Join(dir, "none.pem") + "\n  key_file: " + filepath.Join(dir, "none.key") + "\n",
			[]string{"public.key_file", "public.cert_file"}},
		{"key file that cannot be opened", "keydir:\n  signer_key_file: " + unopenable + "\n  vrf_key_file: " + unopenable + "\n",
			[]string{"keydir.signer_key_file: open " + unopenable + ": no such device or address", "keydir.vrf_key_file: open " + unopenable + ": no such device or address"}},
		{"half a certificate", "public:\n  listen: 127.0.0.1:8443\n  cert_file: " + secret + "\n", []string{"go together"}},
		{"bad TURN URI", "turn:\n  services: [\"http://127.0.0.1\"]\n  secret: a long enough turn secret\n", []string{"config: turn:"}},
		{"witness urls without keys", "keydir:\n  witness:\n    urls: [\"https://w1.example.net\"]\n", []string{"keydir.witness: 1 urls and 0 keys"}},
		{"witness key of a log", "keydir:\n  witness:\n    urls: [\"https://w1.example.net\"]\n    keys: [\"clink.example.org/keydir+64f016b5+AW18YgTFSNHPu0dpLLinneuHS3Z5Ty4qy2uy3qcuHUhc\"]\n",
			[]string{"keydir.witness", "want 0x04"}},
		{"witness threshold above the witnesses", "keydir:\n  witness:\n    urls: [\"https://w1.example.net\"]\n    keys: [\"w1.witness.example+57b5d8f6+BHjfZqfjqYviOImvagsQjPGeg9o4T7yLeVQX2OYOCGBl\"]\n    threshold: 2\n",
			[]string{"threshold 2 with 1 witnesses"}},
		{"scale-in without balancing", "expiry:\n  scale_in_socket: /run/clinkd-b/handoff.sock\n", []string{"expiry.scale_in_socket needs link.balanced"}},
		{"scale-in to a relative path", "link:\n  balanced: true\nexpiry:\n  scale_in_socket: run/handoff.sock\n", []string{"expiry.scale_in_socket \"run/handoff.sock\" is not an absolute path"}},
		{"scale-in to itself", "link:\n  balanced: true\nexpiry:\n  handoff_socket: " + filepath.Join(dir, "run", "h.sock") + "\n  scale_in_socket: " + filepath.Join(dir, "run", "h.sock") + "\n",
			[]string{"expiry.scale_in_socket is this clinkd's own expiry.handoff_socket"}},
		{"bad federated domain", "access:\n  federated_domains: [\"user@remote.example\"]\n", []string{"not a domain"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The base keys are merged in: the YAML keys of the case come
			// second, so a case may repeat a section the base has.
			p := write(strings.ReplaceAll(tt.name, " ", "-")+".yaml", mergeYAML(base, tt.yaml))
			code, _, errs := clinkd(t, "check-config", "--config", p)
			if code != 1 {
				t.Errorf("exit %d, want 1; stderr %q", code, errs)
			}
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr %q does not name %q", errs, w)
				}
			}
		})
	}
}

// mergeYAML puts the keys of extra's top-level sections into base's
// sections of the same name (both are two-level, as these tests write them).
func mergeYAML(base, extra string) string {
	sections := map[string][]string{}
	var order []string
	add := func(text string) {
		cur := ""
		for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
			if !strings.HasPrefix(line, " ") {
				cur = line
				if _, ok := sections[cur]; !ok {
					order = append(order, cur)
				}
				sections[cur] = append(sections[cur], nil...)
				continue
			}
			sections[cur] = append(sections[cur], line)
		}
	}
	add(base)
	add(extra)
	var b strings.Builder
	for _, s := range order {
		b.WriteString(s + "\n")
		for _, l := range sections[s] {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
