package ledgeradapter

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// heldWrites is a BatchLedger whose single writes wait for release, and
// whose bulks fail when their request is cancelled, as a Client's do.
type heldWrites struct {
	started, release chan struct{}
}

func (h *heldWrites) GetAccount(context.Context, string, string) (Account, bool, error) {
	return Account{}, false, nil
}

func (h *heldWrites) AddAccountMetadata(context.Context, string, string, map[string]string, string) (WriteResult, error) {
	h.started <- struct{}{}
	<-h.release
	return WriteResult{}, nil
}

func (h *heldWrites) ListAccounts(context.Context, string, []string) (map[string]Account, error) {
	return nil, nil
}

func (h *heldWrites) Bulk(ctx context.Context, _ string, elems []BulkAddMetadata) ([]BulkResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Op: "Bulk", Err: err}
	}
	return make([]BulkResult, len(elems)), nil
}

// A caller that leaves right after its call was sent, while the calls of
// the same request after its own are still being added, leaves the request
// to them: it is not cancelled under a caller that still waits.
func TestBatcherCallerLeavingAsItsCallIsSentKeepsTheRequest(t *testing.T) {
	h := &heldWrites{started: make(chan struct{}, 1), release: make(chan struct{})}
	b, err := NewBatcher(h, BatcherConfig{MaxInFlight: 1, Limiter: LimiterConfig{Min: 1, Max: 1}})
	require.NoError(t, err)
	write := func(ctx context.Context, key string) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := b.AddAccountMetadata(ctx, "l", "a:"+key, nil, key)
			done <- err
		}()
		return done
	}
	first := write(context.Background(), "k1")
	<-h.started // in flight: the next two queue behind it
	leaving, leave := context.WithCancel(context.Background())
	second := write(leaving, "k2")
	require.Eventually(t, func() bool { return b.Stats().WritesWaiting == 1 }, 5*time.Second, time.Millisecond)
	third := write(context.Background(), "k3")
	require.Eventually(t, func() bool { return b.Stats().WritesWaiting == 2 }, 5*time.Second, time.Millisecond)

	sent := 0
	testHookSent = func(*call) {
		if sent++; sent == 1 {
			leave() // the second's caller leaves as soon as its call is sent
			require.Error(t, <-second)
		}
	}
	t.Cleanup(func() { testHookSent = nil })
	close(h.release)
	require.NoError(t, <-first)
	require.NoError(t, <-third, "the third's caller never left")
	require.Equal(t, 2, sent, "the second and third went together")
}
