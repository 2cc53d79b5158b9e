package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeRefusesExposedLink plays an operator who points link.addr at
// the XMPP server across the network with neither TLS nor
// link.insecure_network: `clinkd serve` must exit at once with status 1
// and an error naming link.addr and the keys that would make it safe,
// never quoting the secret, instead of sending the handshake (and then
// every stanza) in the clear.
func TestServeRefusesExposedLink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "component.secret")
	const secret = "7f3a9c0e5b2d481f6a0c9e3b7d15f2a8c4e6b0d9f1a3c5e7092b4d6f8a1c3e5b"
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	config := filepath.Join(dir, "clinkd.yaml")
	os.WriteFile(config, []byte("link:\n  addr: 192.0.2.10:5347\n  domain: clink.example.org\n  secret_file: "+secretFile+
		"\nadmin:\n  listen: 127.0.0.1:0\n"), 0o600)
	_, errOut, code := clinkdChild(t, nil, nil, "serve", "--config", config)
	if code != 1 || !strings.Contains(errOut, "clinkd: error: config: link.addr 192.0.2.10:5347 is not loopback") ||
		!strings.Contains(errOut, "link.tls: true") || !strings.Contains(errOut, "link.insecure_network: true") {
		t.Errorf("clinkd serve with a plaintext remote link = %d, stderr %q; want 1 and a refusal naming link.addr, link.tls and link.insecure_network", code, errOut)
	}
	if strings.Contains(errOut, secret) {
		t.Error("the refusal quotes the secret")
	}
}
