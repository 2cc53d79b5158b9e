package address_test

import (
	"errors"
	"testing"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/address"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	comp := jid.MustParse("clink.example.org")
	tests := []struct{ user, want string }{
		{"bob@example.org", `bob\40example.org@clink.example.org`},
		{"bob@example.org/phone", `bob\40example.org@clink.example.org`},
		{"Bob@Example.ORG", `bob\40example.org@clink.example.org`},
	}
	for _, tt := range tests {
		a, err := address.AtComponent(jid.MustParse(tt.user), comp)
		if err != nil || a.String() != tt.want {
			t.Errorf("AtComponent(%s) = %s, %v; want %s", tt.user, a, err, tt.want)
			continue
		}
		u, err := address.User(a)
		if err != nil || !u.Equal(jid.MustParse(tt.user).Bare()) {
			t.Errorf("User(%s) = %s, %v; want %s", a, u, err, jid.MustParse(tt.user).Bare())
		}
	}
}

func TestNotAUser(t *testing.T) {
	t.Parallel()
	for _, a := range []string{"clink.example.org", `nodomain@clink.example.org`, `a\40b\2fc@clink.example.org`} {
		if u, err := address.User(jid.MustParse(a)); !errors.Is(err, address.ErrNotAUser) {
			t.Errorf("User(%s) = %s, %v; want ErrNotAUser", a, u, err)
		}
	}
}

func FuzzUser(f *testing.F) {
	f.Add(`bob\40example.org`)
	f.Add(`\5c\40\40`)
	f.Fuzz(func(t *testing.T, local string) {
		a, err := jid.New(local, "clink.example.org", "")
		if err != nil {
			return
		}
		u, err := address.User(a)
		if err != nil {
			return
		}
		back, err := address.AtComponent(u, jid.MustParse("clink.example.org"))
		if err != nil {
			t.Fatalf("User(%s) = %s but AtComponent fails: %v", a, u, err)
		}
		if u2, err := address.User(back); err != nil || !u2.Equal(u) {
			t.Fatalf("round trip %s -> %s -> %s -> %s, %v", a, u, back, u2, err)
		}
	})
}

func TestEscapeXEP0106(t *testing.T) {
	t.Parallel()
	// Examples from XEP-0106 §4.
	tests := []struct{ in, want string }{
		{"space cadet", `space\20cadet`},
		{`call me "ishmael"`, `call\20me\20\22ishmael\22`},
		{"at&t guy", `at\26t\20guy`},
		{"d'artagnan", `d\27artagnan`},
		{"/.fanboy", `\2f.fanboy`},
		{"::foo::", `\3a\3afoo\3a\3a`},
		{"<foo>", `\3cfoo\3e`},
		{"user@host", `user\40host`},
		{`c:\net`, `c\3a\net`},
		{`c:\\net`, `c\3a\\net`},
		{`c:\cool stuff`, `c\3a\cool\20stuff`},
		{`c:\5commas`, `c\3a\5c5commas`},
	}
	for _, tt := range tests {
		if got := address.Escape(tt.in); got != tt.want {
			t.Errorf("Escape(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got := address.Unescape(tt.want); got != tt.in {
			t.Errorf("Unescape(%q) = %q, want %q", tt.want, got, tt.in)
		}
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"user@host", `c:\5commas`, `\\`, `\40`, "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got := address.Unescape(address.Escape(s)); got != s {
			t.Fatalf("Unescape(Escape(%q)) = %q", s, got)
		}
	})
}
