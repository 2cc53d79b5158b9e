package client

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestInboxBound: the inbox keeps at most its bounds of stanzas nobody
// took, dropping the oldest and counting them; what Next takes no longer
// counts against the bounds.
func TestInboxBound(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name          string
		max, maxBytes int
		sizes         []int  // Raw sizes pushed, ids s0, s1, …
		take          string // taken by Next after every push, if queued
		want          []string
		dropped       uint64
	}{
		{"under both bounds", 4, 100, []int{10, 10, 10}, "", []string{"s0", "s1", "s2"}, 0},
		{"count bound", 2, 100, []int{10, 10, 10, 10}, "", []string{"s2", "s3"}, 2},
		{"byte bound", 10, 25, []int{10, 10, 10}, "", []string{"s1", "s2"}, 1},
		{"one stanza over the byte bound is kept alone", 10, 25, []int{10, 30}, "", []string{"s1"}, 1},
		{"taken stanzas free room", 2, 100, []int{10, 10, 10}, "s1", []string{"s0", "s2"}, 0},
		{"a flood drops the oldest", 3, 1 << 20, make([]int, 1000), "", []string{"s997", "s998", "s999"}, 997},
	} {
		var b inbox
		b.init(tt.max, tt.maxBytes)
		for i, n := range tt.sizes {
			b.push(&Stanza{ID: fmt.Sprintf("s%d", i), Raw: []byte(strings.Repeat("x", n))})
			if tt.take != "" {
				ctx, cancel := context.WithCancel(context.Background())
				cancel() // take only what is queued
				b.next(ctx, func(s *Stanza) bool { return s.ID == tt.take }, func() error { return ErrClosed })
			}
		}
		var got []string
		total := 0
		for _, s := range b.queue {
			got = append(got, s.ID)
			total += len(s.Raw)
		}
		if !slices.Equal(got, tt.want) || b.dropped.Load() != tt.dropped || total != b.bytes {
			t.Errorf("%s: inbox = %v, dropped %d, %d bytes counted of %d; want %v, dropped %d", tt.name, got, b.dropped.Load(), b.bytes, total, tt.want, tt.dropped)
		}
	}
}
