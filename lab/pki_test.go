package lab_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"

	"github.com/clinkme/clinkd/lab"
)

// TestCAIssue proves that an issued certificate verifies against the CA's
// pool for each of its names and for no other, and that every file is
// private.
func TestCAIssue(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := lab.NewCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.Issue(dir, "srv", "lab.localhost", "c1.clink.lab.localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ca.CertFile, ca.KeyFile, certFile, keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("mode(%s) = %v, want 0600", f, got)
		}
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(pair.Certificate) != 2 {
		t.Errorf("len(chain) = %d, want 2 (leaf and CA)", len(pair.Certificate))
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"lab.localhost", true},
		{"c1.clink.lab.localhost", true},
		{"127.0.0.1", true},
		{"other.localhost", false},
	} {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, DNSName: tc.name})
		if (err == nil) != tc.ok {
			t.Errorf("Verify(%s) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if _, _, err := ca.Issue(dir, "none"); err == nil {
		t.Error("Issue with no hosts = nil error, want an error")
	}
}
