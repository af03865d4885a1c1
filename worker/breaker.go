package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// Breaker configures the ledger circuit breaker. When the ledger keeps
// failing (Threshold transient failures in a row, across commands) the worker
// stops pulling commands and holds the ones it has, their leases renewed and
// their delivery counts untouched, while it probes the ledger at a growing
// interval. Once a probe passes, one held command is tried; its success (or
// any answer of the ledger) closes the breaker and every held command is
// tried again at once.
//
// The breaker is written here rather than taken from sony/gobreaker or
// Watermill's middleware.CircuitBreaker: those fail a call at once while open
// (the message would be NAKed, spending its retry budget), and probe after a
// fixed timeout by letting a call through; this one makes callers wait, and
// probes with the ledger's health check at a growing interval.
type Breaker struct {
	// Probe asks the ledger whether it is up; run passes
	// ledgeradapter.Client.Healthcheck. The breaker is off when Probe is nil:
	// every failing command is then retried on its own backoff.
	Probe func(context.Context) error
	// Threshold is the number of transient ledger failures in a row that
	// opens the breaker (default 5). Permanent answers (4xx) and failures
	// that are not the ledger's (claims, NATS) never count.
	Threshold int
	// ProbeInterval is the wait before the first probe; it doubles after
	// each failed probe, up to ProbeMaxInterval (defaults 250ms and 2s).
	ProbeInterval    time.Duration
	ProbeMaxInterval time.Duration
}

func (b *Breaker) setDefaults() {
	if b.Threshold <= 0 {
		b.Threshold = 5
	}
	if b.ProbeInterval <= 0 {
		b.ProbeInterval = 250 * time.Millisecond
	}
	if b.ProbeMaxInterval <= 0 {
		b.ProbeMaxInterval = 2 * time.Second
	}
}

// LedgerState is what the breaker knows of the ledger.
type LedgerState struct {
	// Available is false while the breaker is open or half-open.
	Available bool
	// Since is when the ledger became unavailable (zero when available).
	Since time.Time
	// Error is the first failure of the outage.
	Error string
	// Held is the number of commands waiting for the ledger now.
	Held int
}

// Breaker states, the values of wallets_worker_ledger_breaker_state.
const (
	breakerClosed   = 0
	breakerOpen     = 1
	breakerHalfOpen = 2
)

var breakerStateNames = [...]string{breakerClosed: "closed", breakerOpen: "open", breakerHalfOpen: "half_open"}

// result of one attempt, as the breaker sees it.
type result int

const (
	resultOther         result = iota // not about the ledger: a claim, our own deadline
	resultAnswered                    // the ledger answered (a success or a permanent 4xx)
	resultLedgerFailure               // transient ledger failure
)

// classify tells what an attempt's error says about the ledger. attempt is
// the attempt's context: a failure after its deadline or cancellation is
// ours, not the ledger's, and so is a context error of any kind (a batcher
// refusing to send a call it has no time left for says we are behind, not
// that the ledger failed). The client's own request timeout is not a context
// error: a ledger that hangs counts.
func classify(attempt context.Context, err error) result {
	if err == nil {
		return resultAnswered
	}
	var le *ledgeradapter.Error
	if !errors.As(err, &le) {
		return resultOther
	}
	if !le.Retryable() {
		return resultAnswered
	}
	if attempt.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return resultOther
	}
	return resultLedgerFailure
}

// breaker implements Breaker. A nil *breaker is always closed.
type breaker struct {
	cfg     Breaker
	log     *slog.Logger
	metrics *Metrics
	stats   *Stats
	timeout time.Duration // of one probe

	state atomic.Int32 // fast path of pass

	mu        sync.Mutex
	failures  int   // in a row, while closed
	firstErr  error // the first of them
	outage    int   // number of the current or last outage
	outageErr error // the failure that opened the breaker
	since     time.Time
	waiters   []*waiter // FIFO
	resumed   chan struct{}
	held      int           // deliveries that waited during this outage
	interval  time.Duration // before the next probe
	prober    int           // generation of the probing goroutine in charge
	loud      bool          // this outage was logged at WARN
	lastEnd   time.Time     // when the last outage ended
	drained   bool
	drain     chan struct{}
}

type waiter struct {
	d    *delivery
	wake chan bool // true: go as the trial; false: the breaker closed
}

func newBreaker(cfg Breaker, timeout time.Duration, log *slog.Logger, m *Metrics, st *Stats) *breaker {
	if cfg.Probe == nil {
		return nil
	}
	cfg.setDefaults()
	return &breaker{cfg: cfg, log: log, metrics: m, stats: st, timeout: timeout, drain: make(chan struct{})}
}

// pass lets an attempt of d go to the ledger: at once while the breaker is
// closed; otherwise it holds d until the breaker closes or picks d as its
// trial. held says d waited; it returns ErrShutdown when a drain began.
func (b *breaker) pass(ctx context.Context, d *delivery) (held, trial bool, err error) {
	if b == nil || b.state.Load() == breakerClosed {
		return false, false, nil
	}
	b.mu.Lock()
	if b.state.Load() == breakerClosed {
		b.mu.Unlock()
		return false, false, nil
	}
	if b.drained {
		b.mu.Unlock()
		return false, false, ErrShutdown
	}
	wt := &waiter{d: d, wake: make(chan bool, 1)}
	b.waiters = append(b.waiters, wt)
	if d.heldIn != b.outage {
		d.heldIn, d.trialFailures = b.outage, 0
		b.held++
		b.stats.Held.Add(1)
	}
	b.mu.Unlock()
	b.metrics.holding(1)
	defer b.metrics.holding(-1)

	select {
	case trial := <-wt.wake:
		return true, trial, nil
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-b.drain:
		err = ErrShutdown
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, x := range b.waiters {
		if x == wt {
			b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
			return true, false, err
		}
	}
	// Woken meanwhile: take the wake-up, and hand a trial on.
	if <-wt.wake {
		b.grantTrialLocked()
	}
	return true, false, err
}

// record takes the result of an attempt of d and reports whether d is to be
// held rather than retried on its own backoff.
func (b *breaker) record(d *delivery, trial bool, res result, err error) (hold bool) {
	if b == nil {
		return false
	}
	if res == resultOther && !trial {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch res {
	case resultAnswered:
		b.failures, b.firstErr = 0, nil
		if b.state.Load() != breakerClosed {
			b.closeLocked()
		}
		return false
	case resultOther: // an inconclusive trial: probe again
		if b.state.Load() == breakerHalfOpen {
			b.reopenLocked()
		}
		return false
	}
	switch b.state.Load() {
	case breakerClosed:
		b.failures++
		if b.failures == 1 {
			b.firstErr = err
		}
		if b.failures < b.cfg.Threshold {
			return false
		}
		b.openLocked()
		return true
	case breakerHalfOpen:
		if !trial {
			return true
		}
		b.reopenLocked()
		// The probe passed and this command still failed. Twice means it is
		// the command, not the ledger: it goes back to its own retries so
		// that it cannot keep the breaker open for the others.
		d.trialFailures++
		return d.trialFailures < 2
	default:
		return true
	}
}

// openLocked opens a closed breaker.
func (b *breaker) openLocked() {
	b.setStateLocked(breakerOpen)
	b.outage++
	b.outageErr = b.firstErr
	b.since = time.Now()
	b.held = 0
	b.resumed = make(chan struct{})
	b.interval = b.cfg.ProbeInterval
	// A ledger that struggles under load can open the breaker for a moment
	// every few seconds; such blips within a minute of the last outage are
	// logged at DEBUG, unless one of them lasts (see probe).
	b.loud = b.lastEnd.IsZero() || time.Since(b.lastEnd) >= quietPeriod
	if b.loud {
		b.log.Warn("ledger unavailable: holding commands and probing it",
			"error", b.firstErr, "failures_in_a_row", b.failures, "first_probe_in", b.interval.String())
	} else {
		b.log.Debug("ledger unavailable again shortly after the last outage: holding commands and probing it",
			"error", b.firstErr, "failures_in_a_row", b.failures, "last_outage_ended", time.Since(b.lastEnd).Round(time.Millisecond).String())
	}
	b.startProberLocked()
}

// quietPeriod: an outage that starts within it of the last one's end is
// logged only if it lasts longer than quietLimit.
const (
	quietPeriod = time.Minute
	quietLimit  = 10 * time.Second
)

// reopenLocked goes back from half-open to open, with the probe interval
// still growing.
func (b *breaker) reopenLocked() {
	b.setStateLocked(breakerOpen)
	b.startProberLocked()
}

func (b *breaker) startProberLocked() {
	b.prober++
	go b.probe(b.prober)
}

func (b *breaker) closeLocked() {
	b.setStateLocked(breakerClosed)
	b.failures, b.firstErr = 0, nil
	b.lastEnd = time.Now()
	if b.loud {
		b.log.Info("ledger available again: resuming",
			"down_for", time.Since(b.since).Round(time.Millisecond).String(), "commands_held", b.held)
	} else {
		b.log.Debug("ledger available again: resuming",
			"down_for", time.Since(b.since).Round(time.Millisecond).String(), "commands_held", b.held)
	}
	for _, wt := range b.waiters {
		wt.wake <- false
	}
	b.waiters = nil
	close(b.resumed)
}

func (b *breaker) setStateLocked(s int32) {
	b.state.Store(s)
	b.metrics.breakerState(s)
}

// probe waits for the probe interval, then asks the ledger until it answers,
// doubling the interval each time; when it does, the oldest held command is
// let through as the trial (or, with none held, the breaker closes).
func (b *breaker) probe(gen int) {
	for {
		b.mu.Lock()
		if b.prober != gen || b.state.Load() != breakerOpen {
			b.mu.Unlock()
			return // closed by a success meanwhile, or another prober is in charge
		}
		wait := b.interval
		b.interval = min(2*b.interval, b.cfg.ProbeMaxInterval)
		b.mu.Unlock()
		select {
		case <-time.After(wait):
		case <-b.drain:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		err := b.cfg.Probe(ctx)
		cancel()
		b.metrics.probed(err == nil)
		if err != nil {
			b.log.Debug("ledger probe failed", "error", err, "next_in", min(2*wait, b.cfg.ProbeMaxInterval).String())
			b.mu.Lock()
			if b.prober == gen && !b.loud && time.Since(b.since) >= quietLimit {
				b.loud = true
				b.log.Warn("ledger unavailable: holding commands and probing it",
					"error", b.outageErr, "down_for", time.Since(b.since).Round(time.Millisecond).String())
			}
			b.mu.Unlock()
			continue
		}
		b.mu.Lock()
		if b.prober == gen && b.state.Load() == breakerOpen {
			b.setStateLocked(breakerHalfOpen)
			b.grantTrialLocked()
		}
		b.mu.Unlock()
		return
	}
}

// grantTrialLocked lets the oldest held command try, or closes the breaker
// when none is held.
func (b *breaker) grantTrialLocked() {
	if b.state.Load() != breakerHalfOpen {
		return
	}
	if len(b.waiters) == 0 {
		b.closeLocked()
		return
	}
	wt := b.waiters[0]
	b.waiters = b.waiters[1:]
	wt.wake <- true
}

// paused returns a channel that is closed when the breaker closes, or nil
// while it is closed: the subscriber pulls no new commands meanwhile.
func (b *breaker) paused() <-chan struct{} {
	if b == nil || b.state.Load() == breakerClosed {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state.Load() == breakerClosed {
		return nil
	}
	return b.resumed
}

// stop wakes every held command with ErrShutdown (they are handed back) and
// ends the probing.
func (b *breaker) stop() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.drained {
		b.drained = true
		close(b.drain)
	}
}

// ledgerState reports the breaker's view of the ledger.
func (b *breaker) ledgerState() LedgerState {
	if b == nil || b.state.Load() == breakerClosed {
		return LedgerState{Available: true}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state.Load() == breakerClosed {
		return LedgerState{Available: true}
	}
	s := LedgerState{Since: b.since, Held: len(b.waiters)}
	if b.outageErr != nil {
		s.Error = b.outageErr.Error()
	}
	return s
}
