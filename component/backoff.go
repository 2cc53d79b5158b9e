package component

import (
	"math/rand/v2"
	"time"
)

// backoff yields waits that double from min up to max, each drawn
// uniformly from [d/2, d] ("equal jitter"), so that many clinkd instances
// cut off by one server restart do not all knock again in the same
// instant, while each wait stays at least half the schedule.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

func (b *backoff) reset() { b.cur = 0 }
