package component

import (
	"sync"
	"time"
)

// logInterval is the least time between two log lines of one kind of
// handler failure.
const logInterval = 10 * time.Second

// logLimiter lets one log line per key through per logInterval and counts
// the ones it holds back, so that the next line can say how many.
type logLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

// allow reports whether a line of key may be logged at now, and how many
// were held back since the last one.
func (l *logLimiter) allow(key string, now time.Time) (held int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.held = map[string]time.Time{}, map[string]int{}
	}
	if last, seen := l.last[key]; seen && now.Sub(last) < logInterval {
		l.held[key]++
		return 0, false
	}
	held = l.held[key]
	l.last[key], l.held[key] = now, 0
	return held, true
}
