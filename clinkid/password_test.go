package clinkid_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clinkme/clinkd/clinkid"
)

func TestParamsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p  clinkid.Params
		ok bool
	}{
		{clinkid.DefaultParams(), true},
		{clinkid.Params{Memory: 2 << 20, Iterations: 1, Parallelism: 4}, true}, // RFC 9106 first option
		{clinkid.Params{Memory: 8, Iterations: 1, Parallelism: 1}, true},
		{clinkid.Params{Memory: 31, Iterations: 1, Parallelism: 4}, false}, // m < 8p
		{clinkid.Params{Memory: 1024, Iterations: 0, Parallelism: 1}, false},
		{clinkid.Params{Memory: 1024, Iterations: 1, Parallelism: 0}, false},
		{clinkid.Params{Memory: 4<<20 + 1, Iterations: 1, Parallelism: 1}, false},
	}
	for _, tt := range tests {
		if err := tt.p.Validate(); (err == nil) != tt.ok {
			t.Errorf("%v.Validate() = %v, want ok=%v", tt.p, err, tt.ok)
		}
	}
	if d := clinkid.DefaultParams(); d.Memory != 65536 || d.Iterations != 3 || d.Parallelism != 4 {
		t.Errorf("DefaultParams() = %v, want RFC 9106's second option m=65536,t=3,p=4", d)
	}
}

func TestPHC(t *testing.T) {
	t.Parallel()
	p := clinkid.Params{Memory: 1024, Iterations: 2, Parallelism: 1}
	salt, key := []byte("0123456789abcdef"), []byte("0123456789abcdef0123456789abcdef")
	s := clinkid.EncodePHC(p, salt, key)
	if want := "$argon2id$v=19$m=1024,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"; s != want {
		t.Errorf("EncodePHC = %s, want %s", s, want)
	}
	gp, gs, gk, err := clinkid.DecodePHC(s)
	if err != nil || gp != p || string(gs) != string(salt) || string(gk) != string(key) {
		t.Errorf("DecodePHC(EncodePHC(...)) = %v, %q, %q, %v", gp, gs, gk, err)
	}
	for _, bad := range []string{
		"",
		"$argon2i$v=19$m=1024,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
		"$argon2id$v=16$m=1024,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
		"$argon2id$v=19$m=99999999,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
		"$argon2id$v=19$m=1024,t=2,p=300$MDEyMzQ1Njc4OWFiY2RlZg$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
		"$argon2id$v=19$m=1024,t=2,p=1,x=1$MDEyMzQ1Njc4OWFiY2RlZg$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
		"$argon2id$v=19$m=1024,t=2,p=1$!!$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
		"$argon2id$v=19$m=1024,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$",
		"$argon2id$v=19$m=1024,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY$",
	} {
		if _, _, _, err := clinkid.DecodePHC(bad); err == nil {
			t.Errorf("DecodePHC(%q) = nil error, want one", bad)
		}
	}
}

func TestCheckNewPassword(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pw string
		ok bool
	}{
		{"correct horse", true},
		{"Passwort-äöü", true},
		{"密码密码密码密码", true},
		{"short", false},
		{"1234567", false},
		{"12345678", false},        // the second commonest password
		{"Password", false},        // case does not make a common password rare
		{"qwertyuiop", false},      // common, 10 characters
		{"alice-the-owner", false}, // the account name
		{"ALICE-THE-OWNER", false},
		{"12345678 but longer", true},
		{strings.Repeat("a", clinkid.MaxPasswordBytes), true},
		{strings.Repeat("a", clinkid.MaxPasswordBytes+1), false},
		{"ck1_looks-like-a-token", false},
		{"a\u00a0b c d e f", false}, // non-ASCII space: SASLprep and OpaqueString map it
		{"ﬁﬁﬁﬁﬁﬁﬁﬁ", false},         // compatibility ligature: NFKC changes it
		{"a\u00adbcdefgh", false},   // soft hyphen: SASLprep drops it
		{"abc\x00defgh", false},
		{"abcdefg\xff", false},
	}
	for _, tt := range tests {
		err := clinkid.CheckNewPassword(tt.pw, 8, "alice-the-owner")
		if (err == nil) != tt.ok {
			t.Errorf("CheckNewPassword(%q) = %v, want ok=%v", tt.pw, err, tt.ok)
		}
		if err != nil && !errors.Is(err, clinkid.ErrWeakPassword) {
			t.Errorf("CheckNewPassword(%q) = %v, want it to wrap ErrWeakPassword", tt.pw, err)
		}
		if err != nil && len(tt.pw) >= 8 && strings.Contains(err.Error(), tt.pw) {
			t.Errorf("CheckNewPassword(%q) = %v quotes the password", tt.pw, err)
		}
	}
}

func TestLockDuration(t *testing.T) {
	t.Parallel()
	base, maxLock := time.Minute, time.Hour
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour}
	for k, w := range want {
		if got := clinkid.LockDuration(k, base, maxLock); got != w {
			t.Errorf("LockDuration(%d, 1m, 1h) = %v, want %v", k, got, w)
		}
	}
	if got := clinkid.LockDuration(1<<30, base, maxLock); got != maxLock {
		t.Errorf("LockDuration(2^30, 1m, 1h) = %v, want 1h", got)
	}
}

func TestIsToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s  string
		ok bool
	}{
		{"ck1_" + strings.Repeat("A", 43), true},
		{"ck1_" + strings.Repeat("A", 42), false},
		{"ck1_" + strings.Repeat("A", 44), false},
		{"ck2_" + strings.Repeat("A", 43), false},
		{"ck1_" + strings.Repeat("A", 42) + "=", false},
		{"ck1_" + strings.Repeat("A", 42) + "+", false},
		{"password", false},
	}
	for _, tt := range tests {
		if got := clinkid.IsToken(tt.s); got != tt.ok {
			t.Errorf("IsToken(%q) = %v, want %v", tt.s, got, tt.ok)
		}
	}
}
