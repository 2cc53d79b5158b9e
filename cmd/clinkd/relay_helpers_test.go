package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
	"github.com/clinkme/clinkd/client"
	"github.com/clinkme/clinkd/lab"
)

// writeServeConfig writes a config for `clinkd serve` linked to comp on
// srv, with a 1 s minimum validity so that tests can wait out an expiry,
// expiryExtra (indented YAML) under expiry: and more YAML at the top
// level. It returns the config's path.
func writeServeConfig(t *testing.T, dir string, srv *lab.XMPPServer, comp lab.Component, expiryExtra, more string) string {
	t.Helper()
	secretFile := filepath.Join(dir, "component.secret")
	if err := os.WriteFile(secretFile, []byte(comp.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "clinkd.yaml")
	text := fmt.Sprintf(`log:
  level: debug
link:
  addr: %s
  domain: %s
  secret_file: %s
  server_domain: %s
  backoff_min: 50ms
  backoff_max: 1s
admin:
  listen: 127.0.0.1:0
expiry:
  min_period: 1s
%s
%s`, comp.Addr, comp.Domain, secretFile, srv.Domain, expiryExtra, more)
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return config
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// announce tells clinkd that dev is online and waits until clinkd has
// handled it: a ping to the user's own address is answered only after the
// announcement before it (one sender's stanzas are handled in order).
func announce(t *testing.T, dev *client.Client, comp jid.JID, user string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	own, err := address.AtComponent(jid.MustParse(user), comp)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Announce(ctx, comp); err != nil {
		t.Fatal(err)
	}
	if err := dev.Ping(ctx, own); err != nil {
		t.Fatalf("ping own address after announcing: %v", err)
	}
}

// next waits for a stanza that satisfies match.
func next(t *testing.T, dev *client.Client, what string, match func(*client.Stanza) bool) *client.Stanza {
	t.Helper()
	s, err := dev.Next(ctxFor(t, 40*time.Second), match)
	if err != nil {
		t.Fatalf("%s waiting for %s: %v", dev.JID(), what, err)
	}
	return s
}

func envelopeWithID(id string) func(*client.Stanza) bool {
	return func(s *client.Stanza) bool {
		if s.Kind != "message" || !s.Has(client.EnvelopeName) {
			return false
		}
		env, err := s.Envelope()
		return err == nil && env.ID == id
	}
}

func expired(id string) func(*client.Stanza) bool {
	return func(s *client.Stanza) bool {
		got, ok := s.ExpiredID()
		return ok && got == id
	}
}
