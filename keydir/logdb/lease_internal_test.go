package logdb

import (
	"testing"
	"time"
)

// TestLeaseTrustAfterNotice: a renewal that began before a notice is not
// trusted after it, whichever of the two comes first to the lease (the
// order lease.trust and listenNotices keep).
func TestLeaseTrustAfterNotice(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		notice func(l *lease) // what the listener did while the renewal ran
		want   bool
	}{
		{"no notice", func(*lease) {}, true},
		{"a notice counted before the renewal trusts", func(l *lease) { l.notices.Add(1); l.drop() }, false},
	} {
		var l lease
		if err := l.start(time.Second); err != nil {
			t.Fatal(err)
		}
		notices := l.notices.Load() // the renewal begins
		tt.notice(&l)
		l.trust(l.now()+int64(time.Second/2), notices)
		if got := l.held(); got != tt.want {
			t.Errorf("%s: held = %v, want %v", tt.name, got, tt.want)
		}
	}
	// The notice after the trust: the listener's drop ends it.
	var l lease
	if err := l.start(time.Second); err != nil {
		t.Fatal(err)
	}
	l.trust(l.now()+int64(time.Second/2), l.notices.Load())
	l.notices.Add(1)
	l.drop()
	if l.held() {
		t.Error("held after a notice that came after the trust")
	}
}
