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
	// TimeoutShare is the share of a request's timeout its latency may
	// reach before the limit shrinks, whatever the throughput: under load
	// the slowest requests take about three times the median, and none may
	// time out (a write whose answer is lost comes back as a replay).
	TimeoutShare = 0.25
	// DefaultLimiterBackoff is what the limit is multiplied by on an
	// overload signal (a timeout, a 5xx, a 429, no answer).
	DefaultLimiterBackoff = 0.5
	// DefaultFirstBatch caps the batches sent before any request came
	// back, so that a burst at start does not send a ledger of unknown
	// speed its largest requests.
	DefaultFirstBatch = 10
	// DefaultLimiterBand is how much a round's throughput must beat the
	// round before it for the limit to grow again, or fall short of it
	// for the limit to give a step back.
	DefaultLimiterBand = 0.1
	// DefaultProbeRounds is how many rounds a held limit waits before it
	// tries one more request in flight.
	DefaultProbeRounds = 4
)

// LimiterConfig configures a Limiter. Zero values take the defaults.
type LimiterConfig struct {
	// Initial is the limit at start (default DefaultLimiterInitial, at most
	// Max).
	Initial int
	// Min and Max bound the limit (defaults 1 and DefaultBatchInFlight).
	Min, Max int
	// Floor is what the throughput probes never take the limit under
	// (default Min, at most Max): only overload signals and requests near
	// their timeout go below it, down to Min. A ledger that does worse with
	// too little in flight (a pool that churns its connections) keeps what
	// it needs when its throughput is noisy.
	Floor int
	// TargetLatency, when set, is the most latency a request may reach
	// before the limit shrinks; by default (0) only TimeoutShare of the
	// request's timeout is (a Sample with a Timeout). Latency is a poor
	// sign of overload for a ledger whose throughput keeps growing long
	// after its latency does.
	TargetLatency time.Duration
	// Backoff multiplies the limit on an overload signal (default
	// DefaultLimiterBackoff, in (0, 1)).
	Backoff float64
	// FirstBatch caps batches until a request came back (default
	// DefaultFirstBatch).
	FirstBatch int
	// Band is the share by which throughput must change from one round to
	// the next to count (default DefaultLimiterBand, in (0, 1)).
	Band float64
	// ProbeRounds is how many rounds at a held limit come before one more
	// request in flight is tried (default DefaultProbeRounds).
	ProbeRounds int
}

func (c *LimiterConfig) setDefaults() {
	if c.Min == 0 {
		c.Min = 1
	}
	if c.Max == 0 {
		c.Max = DefaultBatchInFlight
	}
	if c.Floor == 0 {
		c.Floor = c.Min
	}
	if c.Initial == 0 {
		c.Initial = max(c.Floor, min(DefaultLimiterInitial, c.Max))
	}
	if c.Backoff == 0 {
		c.Backoff = DefaultLimiterBackoff
	}
	if c.FirstBatch == 0 {
		c.FirstBatch = DefaultFirstBatch
	}
	if c.Band == 0 {
		c.Band = DefaultLimiterBand
	}
	if c.ProbeRounds == 0 {
		c.ProbeRounds = DefaultProbeRounds
	}
}

// Validate reports every problem of c (after defaults) at once.
func (c LimiterConfig) Validate() error {
	c.setDefaults()
	var errs []error
	if c.Min < 1 || c.Max < c.Min {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter bounds %d to %d: want 1 <= min <= max", c.Min, c.Max))
	}
	if c.Floor < c.Min || c.Floor > c.Max {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter floor %d is outside %d to %d", c.Floor, c.Min, c.Max))
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
	if c.Band <= 0 || c.Band >= 1 {
		errs = append(errs, fmt.Errorf("ledgeradapter: limiter band %g: want a share in (0, 1)", c.Band))
	}
	if c.ProbeRounds < 1 {
		errs = append(errs, fmt.Errorf("ledgeradapter: probe rounds %d: want at least 1", c.ProbeRounds))
	}
	return errors.Join(errs...)
}

// Limiter adapts how many requests may be in flight to one ledger, and how
// many calls one request carries, to the throughput and the failures of the
// requests that come back. It seeks throughput: the limit grows while
// completions per second grow with it, steps back when they fall, and
// halves on an overload signal.
//
// The real ledger's throughput levels off, and then falls, well before its
// latency says anything (its writes queue for a pool of database
// connections, and each list-accounts request scans a table), so latency
// is not the signal: completions per second are. They are counted in
// rounds, each at least as many answers as the limit was when it began and
// two latencies of a request long, and a round counts only when the limit held requests back
// in it (Pressed): a limit that is not reached says nothing of the ledger.
// The limit moves by probes of a quarter (at least one), and the round
// after a probe judges it:
//   - a probe up that got more than Band more through is followed by
//     another; one that did not is taken back, and the next probe looks
//     below;
//   - a probe down that got as much through (within Band of the best of the
//     last rounds) is kept, since fewer requests in flight cost the ledger
//     less; one that got less is taken back, and the next probe looks above;
//   - a limit that held for ProbeRounds rounds probes again (up at once
//     after a cut).
//
// A request that timed out, was refused as overloaded (5xx, 429) or got no
// answer halves the limit at once; a request whose latency passed
// TimeoutShare of its timeout (or TargetLatency) shrinks it in proportion
// to the excess, by half at most, so that none times out. When the limit is
// at its minimum and requests are still too slow, the batch size shrinks
// the same way, and grows back by a tenth per request within bounds.
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
	// cutAt is when the limit was last cut, by cutFactor: a request sent
	// before it answers for the load that cut answered, and cuts only as
	// much deeper as it asks.
	cutAt     time.Time
	cutFactor float64

	// round is the round under way.
	round struct {
		start    time.Time
		need     int // answers that end it
		answers  int
		elements int
		pressed  bool
	}
	// lastRate is the throughput (elements a second) of the last round
	// that counted, 0 when the one before was not; held counts the rounds
	// the limit held since it last moved.
	lastRate float64
	held     int
	// moved is +1 or -1 when the last round that counted moved the limit
	// up or down (its effect is judged by the next one), 0 otherwise; up
	// is the way the next probe goes.
	moved int
	up    bool
	// rates are the throughputs of the last rounds that counted, nRates
	// how many there were in all.
	rates  [8]float64
	nRates int
}

// Sample is what became of one request.
type Sample struct {
	// Latency is the time from sending to the end of the answer.
	Latency time.Duration
	// Elements is how many calls the request carried (at least 1).
	Elements int
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
	return &Limiter{cfg: cfg, limit: float64(cfg.Initial), batch: 1, up: true}, nil
}

// Config returns the configuration in force, defaults applied.
func (l *Limiter) Config() LimiterConfig { return l.cfg }

// Limit is how many requests may be in flight now.
func (l *Limiter) Limit() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}

// Pressed says that the limit held a request back: one was ready to go
// and the limit was reached. Only rounds with one count.
func (l *Limiter) Pressed() {
	l.mu.Lock()
	l.round.pressed = true
	l.mu.Unlock()
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
	// roundLatencies is the least length of a round, in latencies of a
	// request: fewer answers measure the noise more than the ledger.
	roundLatencies = 2
	// probeStep is the factor of a probe: a step of one in flight would
	// change the throughput of a large limit by less than the band.
	probeStep = 1.25
)

// Observe adapts the limits to one request's fate.
func (l *Limiter) Observe(s Sample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.Overload {
		l.cut(s, l.cfg.Backoff)
		return
	}
	if l.recent == 0 || s.Stale {
		l.recent = s.Latency
	} else {
		l.recent += time.Duration(recentWeight * float64(s.Latency-l.recent))
	}
	target := l.cfg.TargetLatency
	if s.Timeout > 0 {
		share := time.Duration(TimeoutShare * float64(s.Timeout))
		if target == 0 || share < target {
			target = share
		}
	}
	if target > 0 && s.Latency > target {
		l.cut(s, math.Max(l.cfg.Backoff, float64(target)/float64(s.Latency)))
		return
	}
	l.batch = math.Min(1, l.batch+batchGrowth)
	l.count(max(1, s.Elements))
}

// count adds an answer of n elements to the round, and judges the round
// when it is complete. Called with mu held.
func (l *Limiter) count(n int) {
	now := time.Now()
	r := &l.round
	if r.start.IsZero() {
		// The first answer starts the first round: the time before it
		// was the ledger's first latency, not its throughput.
		l.newRound(now)
		return
	}
	r.answers++
	r.elements += n
	elapsed := now.Sub(r.start)
	if r.answers < r.need || elapsed < roundLatencies*l.recent {
		return
	}
	pressed := r.pressed
	rate := 0.0
	if elapsed > 0 {
		rate = float64(r.elements) / elapsed.Seconds()
	}
	l.newRound(now)
	if !pressed || rate == 0 {
		// The limit held nothing back: the round measured the demand, not
		// the ledger.
		l.lastRate, l.moved = 0, 0
		return
	}
	l.rates[l.nRates%len(l.rates)] = rate
	l.nRates++
	last, moved := l.lastRate, l.moved
	l.lastRate, l.moved = rate, 0
	gain := last > 0 && rate > last*(1+l.cfg.Band)
	switch {
	case moved > 0 && gain:
		l.move(+1) // more in flight got more through: more still
	case moved > 0:
		l.step(-1) // it gained nothing: back, and look below next
		l.up = false
	case moved < 0 && gain:
		l.move(-1) // fewer got more through: fewer still
	case moved < 0 && rate >= l.recentBest()*(1-l.cfg.Band):
		// as much with fewer: keep it
	case moved < 0:
		l.step(+1) // fewer got less through: back, and look above next
		l.up = true
	case last > 0:
		l.held++
		if l.held >= l.cfg.ProbeRounds {
			if l.up {
				l.move(+1)
			} else {
				l.move(-1)
			}
		}
	}
}

// move changes the limit by one probe step up (dir > 0) or down, to be
// judged by the next round. Called with mu held.
func (l *Limiter) move(dir int) {
	before := l.limit
	l.step(dir)
	switch {
	case l.limit > before:
		l.moved = 1
	case l.limit < before:
		l.moved = -1
	default:
		l.up = dir < 0 // at a bound: the next probe goes the other way
	}
}

// step changes the limit by probeStep up or down. Called with mu held.
func (l *Limiter) step(dir int) {
	l.held = 0
	if dir > 0 {
		l.limit = l.clamp(math.Max(l.limit+1, l.limit*probeStep))
	} else {
		// Not under the floor, unless an overload already took it there.
		floor := math.Min(l.limit, float64(l.cfg.Floor))
		l.limit = math.Max(floor, l.clamp(math.Min(l.limit-1, l.limit/probeStep)))
	}
}

// recentBest is the best throughput of the last rounds that counted.
// Called with mu held.
func (l *Limiter) recentBest() float64 {
	best := 0.0
	for i := range min(l.nRates, len(l.rates)) {
		best = math.Max(best, l.rates[i])
	}
	return best
}

// newRound starts a round at now. Called with mu held.
func (l *Limiter) newRound(now time.Time) {
	l.round.start, l.round.need = now, max(1, int(l.limit))
	l.round.answers, l.round.elements, l.round.pressed = 0, 0, false
}

// cut shrinks the limit by factor for s. The requests in flight together
// when the ledger falters (eight bulks timing out at once) cut once, as deep
// as the deepest of them asks, not once each, which would take the limit to
// its least and leave it climbing back a quarter a round: a request sent
// before the last cut cuts only what its factor asks beyond that cut's (a
// mild latency cut, then timeouts of the requests in flight with it, still
// halves). Called with mu held.
func (l *Limiter) cut(s Sample, factor float64) {
	now := time.Now()
	if !l.cutAt.IsZero() && now.Add(-s.Latency).Before(l.cutAt) {
		if factor < l.cutFactor {
			l.shrink(factor / l.cutFactor)
			l.cutFactor = factor
		}
		return
	}
	l.cutAt, l.cutFactor = now, factor
	l.shrink(factor)
}

// shrink cuts the limit by factor, and the batch size too when the limit
// cannot take the whole cut; the round under way no longer counts. Called
// with mu held.
func (l *Limiter) shrink(factor float64) {
	if l.limit*factor < float64(l.cfg.Min) {
		l.batch = math.Max(minBatchShare, l.batch*factor)
	}
	l.limit = l.clamp(l.limit * factor)
	// After a cut, the next round that counts probes upwards at once:
	// the ledger may be back.
	l.lastRate, l.moved, l.up, l.held = 0, 0, true, l.cfg.ProbeRounds
	if !l.round.start.IsZero() {
		l.newRound(time.Now())
	}
}

func (l *Limiter) clamp(v float64) float64 {
	return math.Max(float64(l.cfg.Min), math.Min(float64(l.cfg.Max), v))
}
