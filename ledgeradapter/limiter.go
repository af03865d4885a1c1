package ledgeradapter

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Defaults of LimiterConfig.
const (
	// DefaultLimiterInitial is the limit a Limiter starts from.
	DefaultLimiterInitial = 8
	// DefaultLimiterTolerance is how many times its best latency per
	// element the ledger may take before the limit shrinks.
	DefaultLimiterTolerance = 2.0
	// DefaultLimiterBackoff is what the limit is multiplied by on an
	// overload signal (a timeout, a 5xx, a 429, no answer).
	DefaultLimiterBackoff = 0.5
	// DefaultLatencyFloor is the latency per element under which a ledger
	// is never deemed congested.
	DefaultLatencyFloor = time.Millisecond
	// DefaultTargetLatency is the time a request is sized for: a batch is
	// cut so that, at the latency per element seen lately, it takes about
	// this long.
	DefaultTargetLatency = time.Second
)

// LimiterConfig configures a Limiter. Zero values take the defaults.
type LimiterConfig struct {
	// Initial is the limit at start (default DefaultLimiterInitial, at most
	// Max).
	Initial int
	// Min and Max bound the limit (defaults 1 and DefaultBatchInFlight).
	Min, Max int
	// Tolerance is how many times the best latency per element (the
	// ledger's latency unloaded) a request may take before the limit
	// shrinks (default DefaultLimiterTolerance, at least 1).
	Tolerance float64
	// Backoff multiplies the limit on an overload signal (default
	// DefaultLimiterBackoff, in (0, 1)).
	Backoff float64
	// TargetLatency sizes batches (default DefaultTargetLatency): see
	// Limiter.BatchLimit.
	TargetLatency time.Duration
	// LatencyFloor is the latency per element under which a ledger is
	// never deemed congested (default DefaultLatencyFloor): at that scale
	// the differences are the scheduler's, not the ledger's queue.
	LatencyFloor time.Duration
}

func (c *LimiterConfig) setDefaults() {
	if c.Min == 0 {
		c.Min = 1
	}
	if c.Max == 0 {
		c.Max = DefaultBatchInFlight
	}
	if c.Initial == 0 {
		c.Initial = min(DefaultLimiterInitial, c.Max)
	}
	if c.Tolerance == 0 {
		c.Tolerance = DefaultLimiterTolerance
	}
	if c.Backoff == 0 {
		c.Backoff = DefaultLimiterBackoff
	}
	if c.TargetLatency == 0 {
		c.TargetLatency = DefaultTargetLatency
	}
	if c.LatencyFloor == 0 {
		c.LatencyFloor = DefaultLatencyFloor
	}
}

// Validate reports every problem of c (after defaults) at once.
func (c LimiterConfig) Validate() error {
	c.setDefaults()
	var errs []error
	if c.Min < 1 || c.Max < c.Min {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter bounds %d to %d: want 1 <= min <= max", c.Min, c.Max))
	}
	if c.Initial < c.Min || c.Initial > c.Max {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter initial %d is outside %d to %d", c.Initial, c.Min, c.Max))
	}
	if c.Tolerance < 1 {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter tolerance %g: want at least 1", c.Tolerance))
	}
	if c.Backoff <= 0 || c.Backoff >= 1 {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter backoff %g: want a factor in (0, 1)", c.Backoff))
	}
	if c.TargetLatency < 0 {
		errs = append(errs, fmt.Errorf("ledgeradapter: target latency %s is negative", c.TargetLatency))
	}
	if c.LatencyFloor < 0 {
		errs = append(errs, fmt.Errorf("ledgeradapter: latency floor %s is negative", c.LatencyFloor))
	}
	return errors.Join(errs...)
}

// Limiter adapts how many requests may be in flight to one ledger, from the
// latency and the failures of those that come back: a gradient limiter in
// the manner of TCP Vegas and Netflix's concurrency-limits, with a
// multiplicative cut on overload as in AIMD.
//
// A request is judged by its latency per element (its time divided by the
// calls it carried) against the best seen for requests of about its size
// or smaller (sizes are grouped in classes that differ by at most 1.5×):
// the best is the ledger's latency unloaded, and leaving larger requests
// out keeps a lone write from looking slow beside a bulk of 50, whose fixed
// cost is shared.
// While samples stay within Tolerance of the best, the limit grows by about
// half its square root per sample, as long as it is used (a limit that is
// not reached is not raised); beyond, it shrinks in proportion to the
// excess, by a quarter at most per sample. A request that timed out, was
// refused as overloaded (5xx, 429) or got no answer cuts the limit by
// Backoff at once. Latencies per element under LatencyFloor count as the
// floor: a ledger that answers that fast is not congested, whatever the
// scheduler's noise. A request that was alone in flight sets the best of its
// size whatever it took: a ledger whose floor rose is throttled down to one
// request, which then measures the new floor, and the limit grows again
// from there.
//
// A Limiter is safe for concurrent use; it does not count requests itself.
type Limiter struct {
	cfg LimiterConfig

	mu    sync.Mutex
	limit float64
	// best is the lowest latency per element seen, by size class; recent
	// an average of the last few, all sizes. 0 until seen.
	best   [numSizeClasses]time.Duration
	recent time.Duration
}

// Sample is what became of one request.
type Sample struct {
	// Latency is the time from sending to the end of the answer.
	Latency time.Duration
	// Elements is how many calls the request carried (at least 1).
	Elements int
	// InFlight is how many requests of the limiter were in flight when
	// this one was sent, itself included.
	InFlight int
	// Overload says the ledger did not cope: a timeout, a 5xx, a 429 or no
	// answer. Its latency is not used.
	Overload bool
}

// NewLimiter returns a Limiter at cfg.Initial.
func NewLimiter(cfg LimiterConfig) (*Limiter, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Limiter{cfg: cfg, limit: float64(cfg.Initial)}, nil
}

// Config returns the configuration in force, defaults applied.
func (l *Limiter) Config() LimiterConfig { return l.cfg }

// Limit is how many requests may be in flight now.
func (l *Limiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}

// BatchLimit is how many calls one request should carry at most, up to
// most: as many as fit in TargetLatency at the latency per element seen
// lately, and at most firstBatch until something was seen (a burst at start
// must not send a ledger of unknown speed its largest requests). It is
// never below 1.
func (l *Limiter) BatchLimit(most int) int {
	l.mu.Lock()
	recent := l.recent
	l.mu.Unlock()
	if recent <= 0 {
		return min(most, firstBatch)
	}
	return min(most, max(int(l.cfg.TargetLatency/recent), 1))
}

// Expected is about how long a request of n elements takes now: n times
// the latency per element seen lately; 0 until something was seen.
func (l *Limiter) Expected(n int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recent * time.Duration(max(n, 1))
}

const (
	// numSizeClasses covers requests of up to 128 elements.
	numSizeClasses = 15
	// recentWeight is the weight of a new sample in the recent average.
	recentWeight = 0.3
	// smoothing is the weight of the new limit against the old one.
	smoothing = 0.5
	// firstBatch caps the batches sent before any request came back.
	firstBatch = 10
)

// sizeClass groups request sizes by factors of √2: 1, 2, 3, 4-5, 6-7, 8-11,
// 12-15, 16-22, ...
func sizeClass(n int) int {
	return min(int(2*math.Log2(float64(max(n, 1)))), numSizeClasses-1)
}

// Observe adapts the limit to one request's fate.
func (l *Limiter) Observe(s Sample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.Overload {
		l.limit = l.clamp(l.limit * l.cfg.Backoff)
		return
	}
	per := s.Latency / time.Duration(max(s.Elements, 1))
	per = max(per, time.Microsecond) // a clock that did not move is not infinitely fast
	if l.recent == 0 {
		l.recent = per
	} else {
		l.recent += time.Duration(recentWeight * float64(per-l.recent))
	}
	class := sizeClass(s.Elements)
	if best := &l.best[class]; *best == 0 || per < *best || s.InFlight <= 1 {
		// Alone in flight, a request takes the ledger's unloaded time, be
		// it more than before: the floor rose.
		*best = per
	}
	// A larger request shares its fixed cost among more elements: its
	// unloaded time per element is at most a smaller one's. This keeps a
	// size first seen under load (large batches form under load) from
	// taking a loaded time for its floor.
	ref := l.best[class]
	for _, b := range l.best[:class] {
		if b > 0 {
			ref = min(ref, b)
		}
	}

	floor := l.cfg.LatencyFloor
	gradient := math.Max(0.5, math.Min(1, l.cfg.Tolerance*float64(max(ref, floor))/float64(max(per, floor))))
	next := l.limit * gradient
	if gradient == 1 {
		if float64(s.InFlight) < l.limit/2 {
			// The limit was not the bound: nothing says more would be fine.
			return
		}
		next += math.Sqrt(l.limit)
	}
	l.limit = l.clamp(l.limit*(1-smoothing) + next*smoothing)
}

func (l *Limiter) clamp(v float64) float64 {
	return math.Max(float64(l.cfg.Min), math.Min(float64(l.cfg.Max), v))
}
