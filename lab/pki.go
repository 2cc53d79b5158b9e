package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certLifetime is long enough for any test run or a long clinklab
// session, short enough that a leaked lab key is soon worthless.
const certLifetime = 30 * 24 * time.Hour

// CA is a throwaway certificate authority. Servers get certificates from it
// so that clients can verify them against Pool with full hostname checks,
// exactly as in production, instead of skipping verification.
type CA struct {
	CertFile string         // PEM certificate of the CA, 0600
	KeyFile  string         // PEM private key of the CA, 0600
	Pool     *x509.CertPool // holds only this CA; use as tls.Config.RootCAs

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA creates a CA whose certificate and key are written to dir as
// ca.pem and ca.key.
func NewCA(dir string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("lab: new ca: %w", err)
	}
	serial, err := randSerial()
	if err != nil {
		return nil, fmt.Errorf("lab: new ca: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "clinkd lab CA", Organization: []string{"clinkd lab"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clock skew between processes
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("lab: new ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("lab: new ca: %w", err)
	}
	ca := &CA{
		CertFile: filepath.Join(dir, "ca.pem"),
		KeyFile:  filepath.Join(dir, "ca.key"),
		Pool:     x509.NewCertPool(),
		cert:     cert,
		key:      key,
	}
	ca.Pool.AddCert(cert)
	if err := writeCertAndKey(ca.CertFile, ca.KeyFile, [][]byte{der}, key); err != nil {
		return nil, fmt.Errorf("lab: new ca: %w", err)
	}
	return ca, nil
}

// Issue writes a server certificate for hosts (DNS names or IP addresses;
// the first one is also the subject CN) to dir/name.pem and its key to
// dir/name.key, both 0600. The certificate file holds the leaf followed by
// the CA so that servers which send the file as their chain send a complete
// one.
func (ca *CA) Issue(dir, name string, hosts ...string) (certFile, keyFile string, err error) {
	if len(hosts) == 0 {
		return "", "", errors.New("lab: issue: no hosts")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("lab: issue %s: %w", name, err)
	}
	serial, err := randSerial()
	if err != nil {
		return "", "", fmt.Errorf("lab: issue %s: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"clinkd lab"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// ServerAuth for c2s and TURN over TLS; ClientAuth because XMPP
		// servers also present their certificate when they connect out.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", fmt.Errorf("lab: issue %s: %w", name, err)
	}
	certFile = filepath.Join(dir, name+".pem")
	keyFile = filepath.Join(dir, name+".key")
	if err := writeCertAndKey(certFile, keyFile, [][]byte{der, ca.cert.Raw}, key); err != nil {
		return "", "", fmt.Errorf("lab: issue %s: %w", name, err)
	}
	return certFile, keyFile, nil
}

func randSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func writeCertAndKey(certFile, keyFile string, chain [][]byte, key *ecdsa.PrivateKey) error {
	var certPEM []byte
	for _, der := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// PKCS#8 "PRIVATE KEY" is read by Prosody (LuaSec), Erlang's ssl
	// and coturn (OpenSSL) alike.
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyFile, keyPEM, 0o600)
}
