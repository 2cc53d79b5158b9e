package ratelimit_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/clinkme/clinkd/internal/ratelimit"
)

func TestBurstThenRate(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(2, 3, 10)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if !l.AllowN("a", now, 1) {
			t.Fatalf("event %d of the burst refused", i)
		}
	}
	if l.AllowN("a", now, 1) {
		t.Fatal("event past the burst allowed")
	}
	if !l.AllowN("b", now, 1) {
		t.Fatal("another key shares a's bucket")
	}
	if !l.AllowN("a", now.Add(500*time.Millisecond), 1) {
		t.Fatal("a token did not refill after 1/rate")
	}
}

func TestBoundedKeys(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(1, 1, 100)
	now := time.Unix(1000, 0)
	for i := range 10000 {
		l.AllowN(fmt.Sprint(i), now, 1)
	}
	if n := l.Len(); n > 100 {
		t.Fatalf("Len = %d, want ≤ 100", n)
	}
}

func TestUnlimited(t *testing.T) {
	t.Parallel()
	l := ratelimit.New(0, 1, 1)
	for range 1000 {
		if !l.Allow("a") {
			t.Fatal("refused with no limit")
		}
	}
}
