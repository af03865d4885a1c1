package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// holdingHandler holds every command until release is closed, counting
// those it holds.
type holdingHandler struct {
	held    atomic.Int64
	release <-chan struct{}
}

func (h *holdingHandler) Handle(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
	h.held.Add(1)
	select {
	case <-h.release:
	case <-ctx.Done():
	}
	return handlers.Outcome{Created: &messages.BalanceCreated{Key: key, WalletID: cmd.WalletID,
		Balance: messages.Balance{Name: cmd.Name}, Ledger: testLedger}}, nil
}

// TestFleetHoldsEveryWorkersConcurrency: with the default settings, four
// workers at run's default concurrency each hold that many commands at
// once: the consumer's limit does not make the fleet smaller than the sum
// of its workers.
func TestFleetHoldsEveryWorkersConcurrency(t *testing.T) {
	t.Parallel()
	const workers = 4
	cfg := testConfig()
	cfg.Concurrency = ledgeradapter.DefaultBatchingConcurrency
	cfg.AckWait, cfg.HandlerTimeout = time.Minute, 50*time.Second
	cfg.DrainTimeout = 20 * time.Second
	ns := testutil.NATS(t)
	_, admin := testutil.Connect(t, ns.ClientURL())
	ctx := context.Background()
	require.NoError(t, Provision(ctx, admin, cfg))

	release := make(chan struct{})
	var once sync.Once
	hs := make([]*holdingHandler, workers)
	for i := range hs {
		hs[i] = &holdingHandler{release: release}
		_, js := testutil.Connect(t, ns.ClientURL())
		w, err := New(js, handlers.NewKinds(handlers.CreateBalanceKind(hs[i])), cfg, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})))
		require.NoError(t, err)
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(runCtx) }()
		t.Cleanup(func() {
			stop()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(cfg.DrainTimeout + 10*time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // runs before the workers stop

	// Each worker pulls as many commands again as it has slots, queued
	// for a slot: enough commands for every worker to fill both.
	n := 2*workers*cfg.Concurrency + 100
	for i := range n {
		if i%500 == 499 { // nats.go stalls past 4,000 unacknowledged async publishes
			select {
			case <-admin.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				t.Fatal("publishes not acknowledged")
			}
		}
		_, err := admin.PublishMsgAsync(cmd(fmt.Sprintf("w%d", i), fmt.Sprintf("k%d", i), body(fmt.Sprintf("w%d", i), "savings")))
		require.NoError(t, err)
	}
	select {
	case <-admin.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishes not acknowledged")
	}

	held := func() []int64 {
		out := make([]int64, workers)
		for i, h := range hs {
			out[i] = h.held.Load()
		}
		return out
	}
	deadline := time.Now().Add(60 * time.Second)
	full := func() bool {
		for _, n := range held() {
			if n < int64(cfg.Concurrency) {
				return false
			}
		}
		return true
	}
	for !full() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	require.True(t, full(), "each worker holds its concurrency; held %v", held())
	require.Equal(t, []int64{512, 512, 512, 512}, held(), "and no more")
	info, err := admin.Consumer(ctx, messages.StreamCommands, messages.ConsumerName)
	require.NoError(t, err)
	require.Equal(t, -1, info.CachedInfo().Config.MaxAckPending, "no cap for the fleet")
	require.GreaterOrEqual(t, info.CachedInfo().NumAckPending, workers*cfg.Concurrency)
	once.Do(func() { close(release) })
}
