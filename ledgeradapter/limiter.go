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
	// DefaultTargetLatency is the most latency a request may reach before
	// the limit shrinks; a request whose timeout is known gets at most a
	// quarter of it (TimeoutShare).
	DefaultTargetLatency = 2500 * time.Millisecond
	// TimeoutShare is the share of a request's timeout its latency may
	// reach before the limit shrinks: under load the slowest requests take
	// about three times the median, and none may time out.
	TimeoutShare = 0.25
	// DefaultLimiterBackoff is what the limit is multiplied by on an
	// overload signal (a timeout, a 5xx, a 429, no answer).
	DefaultLimiterBackoff = 0.5
	// DefaultFirstBatch caps the batches sent before any request came
	// back, so that a burst at start does not send a ledger of unknown
	// speed its largest requests.
	DefaultFirstBatch = 10
)

// LimiterConfig configures a Limiter. Zero values take the defaults.
type LimiterConfig struct {
	// Initial is the limit at start (default DefaultLimiterInitial, at most
	// Max).
	Initial int
	// Min and Max bound the limit (defaults 1 and DefaultBatchInFlight).
	Min, Max int
	// TargetLatency is the most latency a request may reach before the
	// limit shrinks (default DefaultTargetLatency); a Sample with a
	// Timeout lowers it to TimeoutShare of that timeout. Keep it well below
	// the client's timeout: a request that times out has lost its answer.
	TargetLatency time.Duration
	// Backoff multiplies the limit on an overload signal (default
	// DefaultLimiterBackoff, in (0, 1)).
	Backoff float64
	// FirstBatch caps batches until a request came back (default
	// DefaultFirstBatch).
	FirstBatch int
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
	if c.TargetLatency == 0 {
		c.TargetLatency = DefaultTargetLatency
	}
	if c.Backoff == 0 {
		c.Backoff = DefaultLimiterBackoff
	}
	if c.FirstBatch == 0 {
		c.FirstBatch = DefaultFirstBatch
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
	if c.TargetLatency < 0 {
		errs = append(errs, fmt.Errorf("ledgeradapter: target latency %s is negative", c.TargetLatency))
	}
	if c.Backoff <= 0 || c.Backoff >= 1 {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter backoff %g: want a factor in (0, 1)", c.Backoff))
	}
	if c.FirstBatch < 0 {
		errs = append(errs, fmt.Errorf("ledgeradapter: first batch %d is negative", c.FirstBatch))
	}
	return errors.Join(errs...)
}

// Limiter adapts how many requests may be in flight to one ledger, and how
// many calls one request carries, to the latency and the failures of the
// requests that come back: additive increase, multiplicative decrease, as
// TCP and Netflix's concurrency-limits AIMD do, with a latency target as
// the congestion signal.
//
// The real ledger's throughput keeps growing with the work in flight well
// after its latency has grown several times (its writes queue for a pool
// of database connections), so the limit is not held where latency starts
// to rise but where it reaches its target: TargetLatency, or a quarter of
// the request's timeout if that is less. While requests come back within it, the limit grows by
// one per request, as long as it is used (a limit that is not reached is
// not raised); a request beyond it shrinks the limit in proportion to the
// excess, by half at most; a request that timed out, was refused as
// overloaded (5xx, 429) or got no answer halves it at once. When the limit
// is at its minimum and requests are still too slow, the batch size shrinks
// the same way, and grows back by a tenth per request within the target.
//
// A Limiter is safe for concurrent use; it does not count requests itself.
type Limiter struct {
	cfg LimiterConfig

	mu    sync.Mutex
	limit float64
	// batch caps the calls of a request, as a share of the most asked
	// for: 1 is all of them.
	batch float64
	// recent is an average of the latency of the last requests, 0 until
	// one came back.
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
	// Timeout is the request's timeout, 0 when unknown.
	Timeout time.Duration
	// Stale says the request was sent because the expected time had gone
	// unconfirmed for longer than it lasts: its latency replaces the
	// estimate rather than moving it.
	Stale bool
}

// NewLimiter returns a Limiter at cfg.Initial.
func NewLimiter(cfg LimiterConfig) (*Limiter, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Limiter{cfg: cfg, limit: float64(cfg.Initial), batch: 1}, nil
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
// most: FirstBatch until a request came back, then most unless requests at
// the least limit were too slow. It is never below 1.
func (l *Limiter) BatchLimit(most int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.recent == 0 {
		return max(1, min(most, l.cfg.FirstBatch))
	}
	return max(1, int(math.Round(float64(most)*l.batch)))
}

// Expected is about how long a request takes now: the average of the last
// few; 0 until one came back.
func (l *Limiter) Expected() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recent
}

const (
	// recentWeight is the weight of a new sample in the recent average.
	recentWeight = 0.3
	// minBatchShare is the least share of the largest batch a request
	// carries: 1 of 100.
	minBatchShare = 0.01
	// batchGrowth is what the batch share grows by per request within
	// the target.
	batchGrowth = 0.1
)

// Observe adapts the limits to one request's fate.
func (l *Limiter) Observe(s Sample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.Overload {
		l.shrink(l.cfg.Backoff)
		return
	}
	if l.recent == 0 || s.Stale {
		l.recent = s.Latency
	} else {
		l.recent += time.Duration(recentWeight * float64(s.Latency-l.recent))
	}
	target := l.cfg.TargetLatency
	if s.Timeout > 0 {
		target = min(target, time.Duration(TimeoutShare*float64(s.Timeout)))
	}
	if s.Latency > target {
		l.shrink(math.Max(l.cfg.Backoff, float64(target)/float64(s.Latency)))
		return
	}
	l.batch = math.Min(1, l.batch+batchGrowth)
	if float64(s.InFlight) >= l.limit/2 {
		l.limit = l.clamp(l.limit + 1)
	}
}

// shrink cuts the limit by factor, and the batch size too when the limit
// cannot take the whole cut. Called with mu held.
func (l *Limiter) shrink(factor float64) {
	if l.limit*factor < float64(l.cfg.Min) {
		l.batch = math.Max(minBatchShare, l.batch*factor)
	}
	l.limit = l.clamp(l.limit * factor)
}

func (l *Limiter) clamp(v float64) float64 {
	return math.Max(float64(l.cfg.Min), math.Min(float64(l.cfg.Max), v))
}
