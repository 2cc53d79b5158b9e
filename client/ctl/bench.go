package ctl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/xmpp/jid"

	"github.com/clinkme/clinkd/client"
)

// bench sends N messages (and looks the recipient's key up M times)
// through the SDK, K at a time, and summarises how fast clinkd accepted
// them (docs/operators.md, "Capacity").
func (e *env) bench(ctx context.Context, p *profile, args []string) error {
	fl := subFlags("bench", e)
	to := fl.String("to", "", "recipient `JID` (must have published a key)")
	n := fl.Int("n", 100, "how many messages to send")
	ttl := fl.Duration("ttl", 0, "send timed messages valid for `period`, e.g. 5m (0: ordinary messages)")
	inFlight := fl.Int("in-flight", 8, "how many messages or lookups wait for clinkd at once")
	lookups := fl.Int("lookups", 0, "how many key lookups of the recipient, after the messages")
	if err := parse(fl, args, 0); err != nil {
		return err
	}
	rcpt, err := jid.Parse(*to)
	switch {
	case *to == "":
		return usageError{"bench needs --to JID"}
	case err != nil || rcpt.Localpart() == "":
		return usageError{fmt.Sprintf("--to %q is not a user JID", *to)}
	case *n < 0 || *lookups < 0 || *n+*lookups == 0:
		return usageError{"-n and --lookups must not be negative, and not both 0"}
	case *inFlight < 1:
		return usageError{"--in-flight must be at least 1"}
	case *ttl < 0:
		return usageError{"--ttl must be positive"}
	}
	d, _, err := p.device(ctx, false, true)
	if err != nil {
		return err
	}
	defer d.Close()
	rcpt = rcpt.Bare()

	msgs := e.benchRun(ctx, "messages", *n, *inFlight, func(ctx context.Context, i int) error {
		_, err := d.Send(ctx, rcpt, fmt.Sprintf("clinkctl bench %d of %d", i+1, *n), client.SendOptions{TTL: *ttl})
		return err
	})
	unchanged := d.Directory().UnchangedLookups()
	looks := e.benchRun(ctx, "lookups", *lookups, *inFlight, func(ctx context.Context, _ int) error {
		_, err := d.Directory().LookupKeys(ctx, rcpt.String())
		return err
	})
	looks.Unchanged = int(d.Directory().UnchangedLookups() - unchanged)
	out := map[string]any{"event": "bench", "to": rcpt.String(), "in_flight": *inFlight}
	if *ttl > 0 {
		out["ttl_seconds"] = int64(*ttl / time.Second)
	}
	for _, s := range []benchStats{msgs, looks} {
		if s.Count == 0 {
			continue
		}
		out[s.Name] = s
		if !e.json {
			fmt.Fprintln(e.stdout, s)
		}
	}
	if e.json {
		e.emit(out)
	}
	if failed := msgs.failed() + looks.failed(); failed > 0 {
		return fmt.Errorf("bench: %d of %d operations failed", failed, msgs.Count+looks.Count)
	}
	return nil
}

// benchStats summarises one kind of operation of a bench run.
type benchStats struct {
	Name      string            `json:"-"`
	Count     int               `json:"count"`
	OK        int               `json:"ok"`
	Seconds   float64           `json:"seconds"`
	PerSecond float64           `json:"per_second"`           // successful operations per second of the run
	P50       float64           `json:"p50_ms"`               // of successful operations
	P99       float64           `json:"p99_ms"`               // of successful operations
	Errors    map[string]int    `json:"errors"`               // by RefusedError's condition, or errorClass
	FirstErr  map[string]string `json:"first_error,omitzero"` // the first error's message, per class
	// Unchanged counts the lookups the directory answered "unchanged"
	// (conditional lookups, docs/protocol.md): the device held the key
	// verified at the log's size.
	Unchanged int `json:"unchanged,omitzero"`
}

func (s benchStats) failed() int { return s.Count - s.OK }

// String is the summary line for people.
func (s benchStats) String() string {
	verb := map[string]string{"messages": "accepted", "lookups": "verified"}[s.Name]
	if s.Unchanged > 0 {
		verb += fmt.Sprintf(" (%d answered \"unchanged\")", s.Unchanged)
	}
	line := fmt.Sprintf("%s: %d of %d %s in %.2fs, %.1f/s, latency p50 %.1fms p99 %.1fms",
		s.Name, s.OK, s.Count, verb, s.Seconds, s.PerSecond, s.P50, s.P99)
	if len(s.Errors) == 0 {
		return line + ", no errors"
	}
	var errs []string
	for _, c := range slices.Sorted(maps.Keys(s.Errors)) {
		errs = append(errs, fmt.Sprintf("%s %d", c, s.Errors[c]))
	}
	return line + ", errors: " + strings.Join(errs, ", ")
}

// benchRun runs op count times, inFlight at a time, with a progress line
// on stderr at most once a second.
func (e *env) benchRun(ctx context.Context, name string, count, inFlight int, op func(context.Context, int) error) benchStats {
	s := benchStats{Name: name, Count: count, Errors: map[string]int{}}
	if count == 0 {
		return s
	}
	lat := make([]time.Duration, count)
	errs := make([]error, count)
	var done, failed atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range min(inFlight, count) {
		wg.Go(func() {
			for i := range jobs {
				t0 := time.Now()
				errs[i] = op(ctx, i)
				lat[i] = time.Since(t0)
				if errs[i] != nil {
					failed.Add(1)
				}
				done.Add(1)
			}
		})
	}
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-tick.C:
				fmt.Fprintf(e.stderr, "bench: %s %d/%d done, %d failed, %.0fs\n", name, done.Load(), count, failed.Load(), time.Since(start).Seconds())
			}
		}
	}()
	for i := range count {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(stopProgress)
	<-progressDone
	s.Seconds = time.Since(start).Seconds()

	var ok []time.Duration
	for i, err := range errs {
		if err == nil {
			ok = append(ok, lat[i])
			continue
		}
		class := errorClass(err)
		if s.Errors[class] == 0 {
			if s.FirstErr == nil {
				s.FirstErr = map[string]string{}
			}
			s.FirstErr[class] = err.Error()
		}
		s.Errors[class]++
	}
	s.OK = len(ok)
	if s.Seconds > 0 {
		s.PerSecond = float64(s.OK) / s.Seconds
	}
	s.P50 = ms(percentile(ok, 50))
	s.P99 = ms(percentile(ok, 99))
	return s
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*10) / 10 }

// errorClass names what went wrong, for counting: clinkd's stanza error
// condition for a refusal, else the kind of failure.
func errorClass(err error) string {
	var re *client.RefusedError
	var kc *client.KeyChangeError
	switch {
	case errors.As(err, &re):
		return re.Condition
	case errors.As(err, &kc):
		return "key-changed"
	case errors.Is(err, client.ErrUnconfirmed):
		return "unconfirmed"
	case errors.Is(err, client.ErrNoKey):
		return "no-key"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "interrupted"
	}
	return "other"
}

// percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of ds,
// which it sorts; 0 for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	rank := int(math.Ceil(p / 100 * float64(len(ds))))
	return ds[max(rank, 1)-1]
}
