package worker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// A command that waits for a slot behind slow ones keeps its lease: it is
// delivered once, however long the commands in front of it take. (With the
// iterator the worker used before, a pull made as the third slot filled
// asked for more than the one slot left, and the command pulled with the
// last slow one waited in the client's buffer, its AckWait running.)
func TestQueuedCommandIsNotRedelivered(t *testing.T) {
	t.Parallel()
	const (
		ackWait     = time.Second
		concurrency = 4
	)
	release := make(chan struct{})
	var mu sync.Mutex
	calls := map[string]int{}
	b := setup(t,
		withConfig(func(c *Config) {
			c.Concurrency = concurrency
			c.AckWait = ackWait // HandlerTimeout 666ms
			c.SettleTimeout = 10 * time.Second
		}),
		withHandler(func(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
			return handlerFunc(func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
				mu.Lock()
				calls[key]++
				mu.Unlock()
				if strings.HasPrefix(key, "slow") {
					<-release // a handler that ignores its deadline; its lease runs until deadline + settle
					ctx = context.WithoutCancel(ctx)
				}
				return h.Handle(ctx, key, cmd)
			})
		}))
	want := map[string]int{"queued": 1}
	for i := range concurrency {
		key := fmt.Sprintf("slow-%d", i)
		want[key] = 1
		b.publish(t, cmd(fmt.Sprintf("w%d", i), key, body(fmt.Sprintf("w%d", i), "savings")))
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return calls[key] == 1
		}, waitFor, tick, "%s takes a slot", key)
	}
	b.publish(t, cmd("wq", "queued", body("wq", "savings")))

	// Keep the slot busy for three times AckWait, or until JetStream gives
	// up on a lease and redelivers something.
	start := time.Now()
	require.Eventually(t, func() bool {
		return b.consumerInfo(t).NumRedelivered > 0 || time.Since(start) > 3*ackWait
	}, waitFor, tick)
	close(release)

	b.settled(t)
	require.Len(t, b.events.wait(t, concurrency+1), concurrency+1)
	require.Empty(t, b.dlq.all())
	require.Equal(t, uint64(concurrency+1), b.deliveries(t), "each command delivered once")
	mu.Lock()
	require.Equal(t, want, calls)
	mu.Unlock()
	require.Equal(t, concurrency+1, b.setMetadataLogs(t))
}
