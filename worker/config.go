package worker

import (
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/handlers"
)

// Config configures a Worker. Zero values take the documented defaults.
type Config struct {
	// Concurrency is how many commands this process handles at once
	// (default 32).
	Concurrency int
	// AckWait is how long JetStream waits for a settle before it redelivers
	// a command to any worker (default 30s). InProgress renews it.
	AckWait time.Duration
	// HandlerTimeout bounds one attempt at a delivery, counted from the
	// moment it gets a slot, or leaves a hold of the ledger breaker (default
	// AckWait*2/3); until then its lease is renewed. It must be shorter than
	// AckWait, and longer than the ledger client's request timeout.
	HandlerTimeout time.Duration
	// MaxDeliver is the retry budget: the delivery on which a command that
	// still fails transiently is dead-lettered as RETRIES_EXHAUSTED
	// (default 20, about 15 minutes of backoff, see RetryBudget).
	MaxDeliver int
	// MaxAckPending caps the commands handed out and not yet settled across
	// every worker of the consumer. 0 (the default) sets no cap for the
	// fleet: each worker holds at most its own Concurrency, so every worker
	// added adds its capacity, with no sum for the operator to keep up to
	// date. A positive value caps the fleet (at least Concurrency).
	MaxAckPending int
	// DuplicateWindow is the deduplication window of the three streams
	// (default 10m). A command republished with the same key within it is
	// dropped by JetStream; an outcome event re-published within it is too.
	DuplicateWindow time.Duration
	// StreamReplicas is the replica count of the streams, the consumer
	// and the claims bucket (default 1; 3 on a JetStream cluster).
	StreamReplicas int
	// EventsMaxAge and DLQMaxAge bound how long outcome events and dead
	// letters are kept (defaults 7 days and 30 days).
	EventsMaxAge time.Duration
	DLQMaxAge    time.Duration
	// Backoff shapes the delay before a command that failed transiently is
	// delivered again.
	Backoff Backoff
	// ClaimTTL is how long a balance claim blocks other commands for the
	// same balance when its claimant neither writes nor returns (default and
	// minimum AckWait).
	ClaimTTL time.Duration
	// SettleTimeout bounds the publish of an outcome and the ack that
	// follows it (default 10s). Settling runs on a context that shutdown does
	// not cancel.
	SettleTimeout time.Duration
	// Replays, when set, are the kinds over read-only ledgers
	// (handlers.Wallets.Replays) that a command delivered past the retry
	// budget is decided by: one they find applied (its last delivery wrote,
	// then its worker died before the event) settles as replayed; any other
	// settles RETRIES_EXHAUSTED, as without them. Nothing past the budget
	// writes to the ledger.
	Replays handlers.Kinds
	// Order is how the commands of one wallet are ordered: OrderWallet (the
	// default) applies them in their WALLETS_COMMANDS order across every
	// worker; OrderNone as soon as a slot is free.
	Order Order
	// DrainTimeout is how long a shutdown waits for commands in flight
	// (default 25s).
	DrainTimeout time.Duration
	// Breaker holds the commands while the ledger is unavailable, instead
	// of retrying each on its own; off unless Breaker.Probe is set.
	Breaker Breaker
	// Metrics, when set, records what the worker does (see NewMetrics).
	Metrics *Metrics
	// TracerProvider makes the spans of the commands and of the claims
	// (default: the global provider, a no-op unless the program installed
	// an SDK; see docs/tracing.md).
	TracerProvider trace.TracerProvider
}

// Backoff is an exponential backoff with jitter and a cap.
type Backoff struct {
	Initial    time.Duration // default 1s
	Max        time.Duration // default 60s
	Multiplier float64       // default 2
	// Jitter is the randomization factor: a delay d becomes a random value
	// in [d*(1-Jitter), d*(1+Jitter)] (default 0.2).
	Jitter float64
}

func (c *Config) setDefaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 32
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.HandlerTimeout <= 0 {
		c.HandlerTimeout = c.AckWait * 2 / 3
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 20
	}
	if c.Order == "" {
		c.Order = OrderWallet
	}
	if c.MaxAckPending < 0 {
		c.MaxAckPending = 0
	}
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = 10 * time.Minute
	}
	if c.StreamReplicas <= 0 {
		c.StreamReplicas = 1
	}
	if c.EventsMaxAge <= 0 {
		c.EventsMaxAge = 7 * 24 * time.Hour
	}
	if c.DLQMaxAge <= 0 {
		c.DLQMaxAge = 30 * 24 * time.Hour
	}
	if c.ClaimTTL <= 0 {
		c.ClaimTTL = c.AckWait
	}
	if c.SettleTimeout <= 0 {
		c.SettleTimeout = 10 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 25 * time.Second
	}
	c.Breaker.setDefaults()
	b := &c.Backoff
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max <= 0 {
		b.Max = time.Minute
	}
	if b.Multiplier < 1 {
		b.Multiplier = 2
	}
	if b.Jitter <= 0 {
		b.Jitter = 0.2
	}
}

// ClaimReadMaxAge is the age limit of a read made before a claim (the
// handler's ClaimReadMaxAge) that goes
// with c: half the margin by which a claim outlives its claimant's attempt
// (ClaimTTL less HandlerTimeout). A command whose read is younger than that
// when it wins the claim cannot have missed the write of an earlier
// claimant, unless the ledger applied that write more than the other half
// of the margin after its attempt ended; an older read is done again.
func (c Config) ClaimReadMaxAge() time.Duration {
	c.setDefaults()
	return max(0, (c.ClaimTTL-c.HandlerTimeout)/2)
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.setDefaults()
	return c
}

// Validate reports every problem of c (after defaults) at once.
func (c Config) Validate() error {
	c.setDefaults()
	var errs []error
	if _, err := ParseOrder(string(c.Order)); err != nil {
		errs = append(errs, err)
	}
	if c.HandlerTimeout >= c.AckWait {
		errs = append(errs, fmt.Errorf("handler timeout %s must be shorter than ack wait %s", c.HandlerTimeout, c.AckWait))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("ack wait %s is under 1s", c.AckWait))
	}
	if c.MaxAckPending > 0 && c.MaxAckPending < c.Concurrency {
		errs = append(errs, fmt.Errorf("max ack pending %d is below concurrency %d", c.MaxAckPending, c.Concurrency))
	}
	if c.DuplicateWindow < time.Second {
		errs = append(errs, fmt.Errorf("duplicate window %s is under 1s", c.DuplicateWindow))
	}
	if c.StreamReplicas > 5 {
		errs = append(errs, fmt.Errorf("stream replicas %d: JetStream allows at most 5", c.StreamReplicas))
	}
	if c.ClaimTTL < c.AckWait {
		// A claim must outlive its claimant's attempt (HandlerTimeout from
		// receipt, and a request the ledger may still be applying after
		// that), or a second key could claim and write beside it.
		errs = append(errs, fmt.Errorf("claim TTL %s is shorter than ack wait %s", c.ClaimTTL, c.AckWait))
	}
	if c.Backoff.Jitter >= 1 {
		errs = append(errs, errors.New("backoff jitter must be below 1"))
	}
	if c.Backoff.Max < c.Backoff.Initial {
		errs = append(errs, fmt.Errorf("backoff max %s is below its initial %s", c.Backoff.Max, c.Backoff.Initial))
	}
	if c.Breaker.ProbeMaxInterval < c.Breaker.ProbeInterval {
		errs = append(errs, fmt.Errorf("breaker probe max interval %s is below its first interval %s", c.Breaker.ProbeMaxInterval, c.Breaker.ProbeInterval))
	}
	return errors.Join(errs...)
}
