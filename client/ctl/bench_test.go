package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	ms := func(ns ...int) []time.Duration {
		var out []time.Duration
		for _, n := range ns {
			out = append(out, time.Duration(n)*time.Millisecond)
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100 … 1, unsorted
	}
	for _, tt := range []struct {
		ds   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 50, 7 * time.Millisecond},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(3, 1, 2), 50, 2 * time.Millisecond},
		{ms(4, 3, 2, 1), 50, 2 * time.Millisecond},
		{ms(4, 3, 2, 1), 99, 4 * time.Millisecond},
		{ms(hundred...), 50, 50 * time.Millisecond},
		{ms(hundred...), 99, 99 * time.Millisecond},
		{ms(hundred...), 100, 100 * time.Millisecond},
	} {
		if got := percentile(tt.ds, tt.p); got != tt.want {
			t.Errorf("percentile(%d values, %v) = %v, want %v", len(tt.ds), tt.p, got, tt.want)
		}
	}
}

// TestBenchStatsString: the summary line for people, with the lookups
// answered "unchanged" when there were any.
func TestBenchStatsString(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		s    benchStats
		want string
	}{
		{benchStats{Name: "messages", Count: 5, OK: 5, Seconds: 1, PerSecond: 5, P50: 2, P99: 3, Errors: map[string]int{}},
			"messages: 5 of 5 accepted in 1.00s, 5.0/s, latency p50 2.0ms p99 3.0ms, no errors"},
		{benchStats{Name: "lookups", Count: 10, OK: 10, Seconds: 0.5, PerSecond: 20, P50: 1, P99: 2, Unchanged: 9},
			`lookups: 10 of 10 verified (9 answered "unchanged") in 0.50s, 20.0/s, latency p50 1.0ms p99 2.0ms, no errors`},
		{benchStats{Name: "lookups", Count: 3, OK: 2, Seconds: 1, PerSecond: 2, P50: 1, P99: 1, Errors: map[string]int{"resource-constraint": 1}},
			"lookups: 2 of 3 verified in 1.00s, 2.0/s, latency p50 1.0ms p99 1.0ms, errors: resource-constraint 1"},
	} {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("String() =\n%s\nwant\n%s", got, tt.want)
		}
	}
}

func TestErrorClass(t *testing.T) {
	t.Parallel()
	bob := jid.MustParse("bob@example.org")
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&client.RefusedError{ID: "1", To: bob, Condition: "not-acceptable"}, "not-acceptable"},
		{fmt.Errorf("wrapped: %w", &client.RefusedError{ID: "1", To: bob, Condition: "resource-constraint"}), "resource-constraint"},
		{&client.KeyChangeError{}, "key-changed"},
		{&client.UnconfirmedError{ID: "1", Err: client.ErrConnectionLost}, "unconfirmed"},
		{client.ErrNoKey, "no-key"},
		{context.DeadlineExceeded, "interrupted"},
		{errors.New("anything else"), "other"},
	} {
		if got := errorClass(tt.err); got != tt.want {
			t.Errorf("errorClass(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// TestBenchUsage: bad flags are usage errors (exit 2), found before
// clinkctl logs in.
func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "bench needs --to JID"},
		{[]string{"--to", "example.org"}, "is not a user JID"},
		{[]string{"--to", "bob@example.org", "-n", "-1"}, "must not be negative"},
		{[]string{"--to", "bob@example.org", "-n", "0"}, "not both 0"},
		{[]string{"--to", "bob@example.org", "--in-flight", "0"}, "--in-flight must be at least 1"},
		{[]string{"--to", "bob@example.org", "--ttl", "-1s"}, "--ttl must be positive"},
		{[]string{"--to", "bob@example.org", "--nope"}, "flag provided but not defined"},
		{[]string{"--to", "bob@example.org", "extra"}, "takes 0 argument(s)"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--jid", "alice@example.org", "--home", t.TempDir(), "bench"}, tt.args...)
		code := Run(context.Background(), args, strings.NewReader(""), &stdout, &stderr, func(string) string { return "" })
		if code != 2 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("clinkctl bench %q = %d, %q; want 2 and %q", tt.args, code, stderr.String(), tt.want)
		}
	}
}
