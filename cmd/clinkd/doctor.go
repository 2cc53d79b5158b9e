package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/client/labfile"
	"github.com/clinkme/clinkd/doctor"
	"github.com/clinkme/clinkd/keylog"
)

func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("doctor", stderr)
	labFile := fs.String("lab", "", "`lab.json` of clinklab: takes every setting below from it, as its first demo user")
	c2s := fs.String("c2s", "", "the XMPP server's client `host:port`")
	user := fs.String("user", "", "an account (`JID`) of the server's domain to log in as")
	passFile := fs.String("password-file", "", "`file` holding its password (or set CLINKD_DOCTOR_PASSWORD)")
	component := fs.String("component", "", "clinkd's component `domain`")
	publicURL := fs.String("public-url", "", "clinkd's public `URL` (https://host:port); empty skips the key log and ClinkID checks")
	caFile := fs.String("ca", "", "PEM `file` of the CA to verify certificates with (default: the system's)")
	keyLogKey := fs.String("keylog-key", "", "the key log's verifier `key` (as clinkd keys genkey prints it)")
	timeout := fs.Duration("timeout", 20*time.Second, "bound on each check")
	var witnesses []string
	fs.Func("witness", "a witness's cosignature/v1 verifier `key` (repeat for each) whose cosignature the key log's checkpoint must carry", func(s string) error {
		witnesses = append(witnesses, s)
		return nil
	})
	threshold := fs.Int("witness-threshold", -1, "how many of the --witness keys must have cosigned (default: all)")
	if err := parse(fs, args); err != nil {
		return err
	}
	var cfg doctor.Config
	if *labFile != "" {
		info, err := labfile.Read(*labFile)
		if err != nil {
			return err
		}
		if cfg, err = doctor.FromLab(info); err != nil {
			return err
		}
		if *keyLogKey != "" {
			cfg.KeyLogKey = *keyLogKey
		}
	} else {
		cfg.Password = os.Getenv("CLINKD_DOCTOR_PASSWORD")
		if *passFile != "" {
			b, err := os.ReadFile(*passFile)
			if err != nil {
				return err
			}
			cfg.Password = strings.TrimSpace(string(b))
		}
		if *c2s == "" || *user == "" || *component == "" {
			return usageError{"give --lab, or --c2s, --user and --component"}
		}
		if cfg.Password == "" {
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
		cfg.C2S, cfg.User, cfg.Component, cfg.PublicURL, cfg.KeyLogKey = *c2s, u, comp, *publicURL, *keyLogKey
		if *threshold < 0 {
			*threshold = len(witnesses)
		}
		if cfg.Witnesses, err = keylog.NewWitnessPolicy(witnesses, *threshold); err != nil {
			return usageError{err.Error()}
		}
		if *caFile != "" {
			if cfg.RootCAs, err = client.LoadCertPool(*caFile); err != nil {
				return err
			}
		}
	}
	cfg.Timeout = *timeout
	fmt.Fprintf(stdout, "clinkd doctor: %s at %s, component %s\n", cfg.User.Domainpart(), cfg.C2S, cfg.Component)
	report := doctor.Run(ctx, cfg)
	report.WriteTo(stdout)
	if report.Failed() {
		return errors.New("doctor: some checks failed")
	}
	return nil
}
