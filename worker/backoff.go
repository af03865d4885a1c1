package worker

import (
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Delay is the wait before delivery number delivered+1 of a command whose
// delivery number delivered failed transiently: Initial*Multiplier^(n-1),
// capped at Max, with jitter. It depends only on the delivery count, so any
// worker computes the same schedule for a command.
func (b Backoff) Delay(delivered uint64) time.Duration {
	eb := &backoff.ExponentialBackOff{
		InitialInterval:     b.Initial,
		RandomizationFactor: b.Jitter,
		Multiplier:          b.Multiplier,
		MaxInterval:         b.Max,
		MaxElapsedTime:      0,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	eb.Reset()
	// The interval grows by Multiplier per step and stops at Max; 64 steps
	// reach the cap for any sane setting, so larger counts need no more.
	n := min(max(delivered, 1), 64)
	d := eb.NextBackOff()
	for i := uint64(1); i < n; i++ {
		d = eb.NextBackOff()
	}
	return d
}

// Budget is the expected total wait, without jitter, between the first and
// the last of maxDeliver deliveries: how long a command keeps being retried
// before it is dead-lettered as RETRIES_EXHAUSTED (handling time not counted).
func (b Backoff) Budget(maxDeliver int) time.Duration {
	var total time.Duration
	d := float64(b.Initial)
	for i := 1; i < maxDeliver; i++ {
		total += time.Duration(min(d, float64(b.Max)))
		d *= b.Multiplier
	}
	return total
}

// RetryBudget is Backoff.Budget for the configured MaxDeliver.
func (c Config) RetryBudget() time.Duration {
	c.setDefaults()
	return c.Backoff.Budget(c.MaxDeliver)
}

// lineAsideWait is how long a command that stepped aside waits for its
// wallet's line before it is handed back: longer than a live head can keep
// its place, its whole retry budget plus an AckWait for each of the
// deliveries JetStream makes (line.handBackDue).
func (c Config) lineAsideWait() time.Duration {
	return c.RetryBudget() + time.Duration(c.MaxDeliver+serverMaxDeliverMargin)*c.AckWait
}
