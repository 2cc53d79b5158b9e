package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/doctor"
	"github.com/clinkme/clinkd/lab/deploy"
)

func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("doctor", stderr)
	labFile := fs.String("lab", "", "`lab.json` of `clinkd lab`: takes every setting below from it, as its first demo user")
	c2s := fs.String("c2s", "", "the XMPP server's client `host:port`")
	user := fs.String("user", "", "an account (`JID`) of the server's domain to log in as")
	passFile := fs.String("password-file", "", "`file` holding its password (or set CLINKD_DOCTOR_PASSWORD)")
	component := fs.String("component", "", "clinkd's component `domain`")
	publicURL := fs.String("public-url", "", "clinkd's public `URL` (https://host:port); empty skips the key log and ClinkID checks")
	caFile := fs.String("ca", "", "PEM `file` of the CA to verify certificates with (default: the system's)")
	keyLogKey := fs.String("keylog-key", "", "the key log's verifier `key` (as clinkd keys genkey prints it)")
	timeout := fs.Duration("timeout", 20*time.Second, "bound on each check")
	if err := parse(fs, args); err != nil {
		return err
	}
	password := os.Getenv("CLINKD_DOCTOR_PASSWORD")
	if *labFile != "" {
		info, err := deploy.ReadInfo(*labFile)
		if err != nil {
			return err
		}
		if len(info.Users) == 0 {
			return fmt.Errorf("%s has no user", *labFile)
		}
		*c2s, *user, password = info.C2S, info.Users[0].JID, info.Users[0].Password
		*component, *publicURL, *caFile = info.Component, info.PublicURL, info.CAFile
		if *keyLogKey == "" {
			*keyLogKey = info.KeyLogVerifier
		}
	}
	if *passFile != "" {
		b, err := os.ReadFile(*passFile)
		if err != nil {
			return err
		}
		password = strings.TrimSpace(string(b))
	}
	if *c2s == "" || *user == "" || *component == "" {
		return usageError{"give --lab, or --c2s, --user and --component"}
	}
	if password == "" {
		return usageError{"no password: give --password-file or set CLINKD_DOCTOR_PASSWORD"}
	}
	u, err := jid.Parse(*user)
	if err != nil || u.Localpart() == "" {
		return usageError{fmt.Sprintf("--user %q is not a user@domain JID", *user)}
	}
	comp, err := jid.Parse(*component)
	if err != nil {
		return usageError{fmt.Sprintf("--component %q is not a domain", *component)}
	}
	cfg := doctor.Config{
		C2S: *c2s, User: u, Password: password, Component: comp, PublicURL: *publicURL,
		KeyLogKey: *keyLogKey, Timeout: *timeout,
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no PEM certificate", *caFile)
		}
	}
	fmt.Fprintf(stdout, "clinkd doctor: %s at %s, component %s\n", u.Domainpart(), *c2s, comp)
	report := doctor.Run(ctx, cfg)
	report.WriteTo(stdout)
	if report.Failed() {
		return errors.New("doctor: some checks failed")
	}
	return nil
}
