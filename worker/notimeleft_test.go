package worker

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// notSent is what handlers.CreateBalance returns for a ledger call the
// Batcher did not send for lack of time.
func notSent() error {
	return &handlers.RetryError{Err: fmt.Errorf("write balance: %w", ledgeradapter.ErrNoTimeLeft), NoTimeLeft: true}
}

// TestNoTimeLeftIsNotAnAttempt: a call refused for lack of time once the
// window has run down (as after an outage, its turn coming late) costs no
// delivery and no backoff: the command gets a new window at once.
func TestNoTimeLeftIsNotAnAttempt(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	b := setup(t, withHandler(func(next handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
		return handlerFunc(func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
			if calls.Add(1) <= 2 {
				// Most of the window spent waiting for a turn.
				dl, _ := ctx.Deadline()
				time.Sleep(time.Until(dl) - 300*time.Millisecond)
				return handlers.Outcome{}, notSent()
			}
			return next.Handle(ctx, key, cmd)
		})
	}))
	start := time.Now()
	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))
	requireCreatedOnce(t, b, "k", ack, false)
	require.Equal(t, int64(3), calls.Load())
	require.Equal(t, uint64(1), b.deliveries(t), "no redelivery")
	require.Zero(t, b.worker.Stats().Retried.Load(), "no retry")
	require.Less(t, time.Since(start), 5*time.Second, "no backoff")
}

// TestNoTimeLeftWithAFreshWindowIsAFailure: a call refused with most of its
// window left (a ledger slower than any window) fails as any transient
// error does, with backoff and the budget, rather than turning in place.
func TestNoTimeLeftWithAFreshWindowIsAFailure(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	b := setup(t, withHandler(func(next handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
		return handlerFunc(func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
			if calls.Add(1) == 1 {
				return handlers.Outcome{}, notSent()
			}
			return next.Handle(ctx, key, cmd)
		})
	}))
	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))
	requireCreatedOnce(t, b, "k", ack, false)
	require.Equal(t, int64(2), calls.Load())
	require.Equal(t, uint64(2), b.deliveries(t), "retried on a redelivery")
	require.Equal(t, int64(1), b.worker.Stats().Retried.Load())
}
