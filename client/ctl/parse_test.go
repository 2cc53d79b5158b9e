package ctl

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
)

// TestParseText: flags go before the text; one after it is a usage
// error, unless -- ended the flags. (The end-to-end test of clinkctl is
// devicetest/ctltest, against a whole lab.)
func TestParseText(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		text string // "" when refused
	}{
		{[]string{"--to", "bob@example.org", "hello"}, "hello"},
		{[]string{"--to", "bob@example.org", "hello", "world"}, "hello world"},
		{[]string{"--to", "bob@example.org", "hello", "--ttl", "1m"}, ""},
		{[]string{"--to", "bob@example.org", "hello", "-x"}, ""},
		{[]string{"--to", "bob@example.org", "--", "--ttl", "is text"}, "--ttl is text"},
		{[]string{"--to", "bob@example.org", "a", "-"}, "a -"},
	} {
		fl := flag.NewFlagSet("send", flag.ContinueOnError)
		fl.SetOutput(&bytes.Buffer{})
		fl.String("to", "", "")
		fl.Duration("ttl", 0, "")
		err := parseText(fl, tt.args)
		var ue usageError
		switch {
		case tt.text == "" && !errors.As(err, &ue):
			t.Errorf("parseText(%q) = %v; want a usage error", tt.args, err)
		case tt.text != "" && (err != nil || strings.Join(fl.Args(), " ") != tt.text):
			t.Errorf("parseText(%q) = %v, text %q; want %q", tt.args, err, strings.Join(fl.Args(), " "), tt.text)
		}
	}
}

// TestHints: the errors a user can do something about get a hint line.
func TestHints(t *testing.T) {
	t.Parallel()
	bob := jid.MustParse("bob@example.org")
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&client.RefusedError{ID: "1", To: bob, Condition: "not-acceptable", MinValidity: 5 * time.Second, MaxValidity: time.Hour}, "between 5s and 1h0m0s"},
		{&client.RefusedError{ID: "1", To: bob, Condition: "not-acceptable", MaxValidity: time.Hour}, "at most 1h0m0s"},
		{&client.RefusedError{ID: "1", To: bob, Condition: "resource-constraint", Type: "wait"}, "try again later"},
		{&client.KeyChangeError{}, "keys verify"},
		{&client.OwnKeyError{Own: client.OwnKey{Status: client.KeyEnded}}, "keys publish --again"},
		{&client.OwnKeyError{Own: client.OwnKey{Status: client.KeyReplaced}}, "clinkctl sync"},
		{&client.AuthError{Condition: "not-authorized"}, "password"},
		{&client.UnconfirmedError{ID: "1", Err: client.ErrConnectionLost}, "twice"},
	} {
		if got := hintFor(tt.err); !strings.Contains(got, tt.want) {
			t.Errorf("hintFor(%v) = %q; want it to say %q", tt.err, got, tt.want)
		}
	}
	if got := hintFor(errors.New("anything else")); got != "" {
		t.Errorf("hintFor(other) = %q; want none", got)
	}
}
