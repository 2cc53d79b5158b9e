// Package certpool reads PEM files of CA certificates, the one way clinkd,
// its commands and the device SDK load a private CA.
package certpool

import (
	"crypto/x509"
	"fmt"
	"os"
)

// Load reads a PEM file of CA certificates into a new pool. It fails when
// the file cannot be read or holds no certificate.
func Load(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}
