package ledgeradapter_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// A request carries the values of its first call's context (a trace, say),
// not its cancellation.
func TestBatcherRequestContextIsTheFirstCallers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		traced := func(v string) context.Context { return context.WithValue(context.Background(), traceKey{}, v) }

		first, cancelFirst := context.WithCancel(traced("lone"))
		lone := goWrite(first, b, "a:0", "k0")
		synctest.Wait()
		w1 := goWrite(traced("w1"), b, "a:1", "k1")
		synctest.Wait()
		w2 := goWrite(traced("w2"), b, "a:2", "k2")
		w3 := goWrite(context.Background(), b, "a:3", "k3")
		synctest.Wait()
		time.Sleep(ledgeradapter.DefaultBatchWindow)
		synctest.Wait()
		cancelFirst() // its only caller leaves: the request is cancelled, not its values
		synctest.Wait()
		close(f.hold)
		require.Error(t, <-lone)
		for _, ch := range []<-chan error{w1, w2, w3} {
			require.NoError(t, <-ch)
		}
		log := f.log()
		require.Len(t, log, 2)
		require.Equal(t, "lone", log[0].value, "a lone call's request has its values")
		require.True(t, log[0].ended, "cancelled once its only caller left")
		require.Equal(t, "Bulk", log[1].op)
		require.Equal(t, 3, log[1].n)
		require.Equal(t, "w1", log[1].value, "a shared request has its first call's")
	})
}

// loneThenTen writes k0 alone, its request held by the fake ledger, then
// k1 to k10, which wait behind it for one bulk, their window passed (in a
// synctest bubble).
func loneThenTen(b *ledgeradapter.Batcher) (first <-chan error, rest []<-chan error) {
	ctx := context.Background()
	first = goWrite(ctx, b, "a:0", "k0")
	synctest.Wait()
	for i := 1; i <= 10; i++ {
		rest = append(rest, goWrite(ctx, b, fmt.Sprintf("a:%d", i), fmt.Sprintf("k%d", i)))
	}
	synctest.Wait()
	time.Sleep(ledgeradapter.DefaultBatchWindow)
	synctest.Wait()
	return first, rest
}

// A bulk answered with most of its elements failing as a 5xx would (an
// element's INTERNAL: the ledger's database out of connections, say) slows
// the Batcher down as a 503 would; one element failing alone does not.
func TestBatcherElementsFailingOverloadItsLimit(t *testing.T) {
	t.Parallel()
	for name, failing := range map[string]int{"most": 8, "one": 1} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				f := newFake()
				f.hold = make(chan struct{})
				internal := &ledgeradapter.Error{Op: "Bulk", StatusCode: http.StatusInternalServerError, ErrorCode: "INTERNAL", Element: 1}
				f.elemErr = func(el ledgeradapter.BulkAddMetadata) error {
					var i int
					_, _ = fmt.Sscanf(el.IdempotencyKey, "k%d", &i)
					if i >= 1 && i <= failing {
						return internal
					}
					return nil
				}
				b := newBatcher(t, f, ledgeradapter.BatcherConfig{Limiter: ledgeradapter.LimiterConfig{Initial: 8}})
				first, rest := loneThenTen(b)
				close(f.hold)
				require.NoError(t, <-first)
				failed := 0
				for _, ch := range rest {
					if err := <-ch; err != nil {
						require.True(t, ledgeradapter.IsRetryable(err))
						failed++
					}
				}
				require.Equal(t, failing, failed)
				synctest.Wait()
				require.Equal(t, 10, f.log()[1].n, "one bulk of ten")
				st := b.Stats()
				if failing > 5 {
					require.EqualValues(t, 1, st.Overloads)
					require.Less(t, st.WriteLimit, 8, "most elements failed: an overloaded ledger gets less")
				} else {
					require.Zero(t, st.Overloads)
					require.Equal(t, 8, st.WriteLimit)
				}
			})
		})
	}
}

// A request that fails as a whole fails each of its calls, once: the
// Batcher never sends it again, and the failure slows it down.
func TestBatcherNeverRetriesAWholeBulk(t *testing.T) {
	t.Parallel()
	for name, failure := range map[string]error{
		"503": &ledgeradapter.Error{Op: "Bulk", StatusCode: http.StatusServiceUnavailable, ErrorCode: "INTERNAL"},
		"timeout": &ledgeradapter.Error{Op: "Bulk", Method: http.MethodPost,
			Err: fmt.Errorf("%w after 5s", ledgeradapter.ErrTimeout)},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				f := newFake()
				f.hold = make(chan struct{})
				b := newBatcher(t, f, ledgeradapter.BatcherConfig{Limiter: ledgeradapter.LimiterConfig{Initial: 8}})
				first, rest := loneThenTen(b)
				f.mu.Lock()
				f.errOnce = nil
				f.err = nil
				f.mu.Unlock()
				f.hold <- struct{}{} // the lone write succeeds
				require.NoError(t, <-first)
				f.mu.Lock()
				f.errOnce = failure
				f.mu.Unlock()
				close(f.hold)
				for _, ch := range rest {
					err := <-ch
					require.ErrorIs(t, err, failure)
					require.True(t, ledgeradapter.IsRetryable(err))
				}
				synctest.Wait()
				log := f.log()
				require.Len(t, log, 2, "the bulk went out once")
				require.Equal(t, 10, log[1].n)
				st := b.Stats()
				require.EqualValues(t, 1, st.Overloads)
				require.Less(t, st.WriteLimit, 8, "an overloaded ledger gets less")
				if name == "timeout" {
					require.EqualValues(t, 1, st.Timeouts)
				} else {
					require.Zero(t, st.Timeouts)
				}
			})
		})
	}
}

// A transient failure of one element goes back to its call alone, as a
// retryable error, and nothing is sent again.
func TestBatcherElementFailureIsItsCallsOnly(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		racing := &ledgeradapter.Error{Op: "Bulk", Element: 2, StatusCode: http.StatusInternalServerError, ErrorCode: "INTERNAL"}
		f.elemErr = func(el ledgeradapter.BulkAddMetadata) error {
			if el.IdempotencyKey == "k2" {
				return racing
			}
			return nil
		}
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		ctx := context.Background()
		first := goWrite(ctx, b, "a:0", "k0")
		synctest.Wait()
		errs := map[string]<-chan error{}
		for i := 1; i <= 4; i++ {
			k := fmt.Sprintf("k%d", i)
			errs[k] = goWrite(ctx, b, fmt.Sprintf("a:%d", i), k)
		}
		synctest.Wait()
		close(f.hold)
		require.NoError(t, <-first)
		for k, ch := range errs {
			err := <-ch
			if k != "k2" {
				require.NoError(t, err, k)
				continue
			}
			require.ErrorIs(t, err, racing)
			require.True(t, ledgeradapter.IsRetryable(err))
		}
		require.Len(t, f.log(), 2)
		require.Len(t, f.accounts, 4)
		require.Zero(t, b.Stats().Overloads, "an element's failure is not the ledger's overload")
	})
}

// runLoad sends n writes from n callers at once, in waves of wave callers
// that each wait for the previous, and returns the requests' sizes.
func runLoad(t *testing.T, b *ledgeradapter.Batcher, f *fakeLedger, n int) []int {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := b.AddAccountMetadata(context.Background(), "l", fmt.Sprintf("a:%d", i), map[string]string{"x": "y"}, fmt.Sprintf("k%d", i))
			require.NoError(t, err)
		})
	}
	wg.Wait()
	var sizes []int
	for _, r := range f.log() {
		sizes = append(sizes, r.n)
	}
	return sizes
}

// The same defaults serve a fast ledger and a slow one: the one whose
// throughput grows with the requests in flight gets more of them, the
// saturated one no more and fuller ones, and the one whose requests near
// their timeout smaller ones.
func TestBatcherAdaptsToTheLedger(t *testing.T) {
	t.Parallel()

	t.Run("fast", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			// Every request takes 10ms whatever its size: more in flight,
			// more through.
			f := newFake()
			f.cost = func(int, int) time.Duration { return 10 * time.Millisecond }
			b := newBatcher(t, f, ledgeradapter.BatcherConfig{MaxBatch: 5})
			for range 20 {
				runLoad(t, b, f, 500)
			}
			require.Greater(t, b.Stats().WriteLimit, ledgeradapter.DefaultLimiterInitial)
		})
	})

	t.Run("saturated", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			// A ledger that serves 100 elements a second whatever the load:
			// a request waits for every element in flight, 10ms each.
			// Latency grows with the load and says nothing; the throughput
			// stays flat, so the limit does not climb.
			f := newFake()
			f.cost = func(inFlight, n int) time.Duration {
				return time.Duration(inFlight*n) * 10 * time.Millisecond
			}
			b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
			sizes := runLoad(t, b, f, 4000)
			st := b.Stats()
			require.LessOrEqual(t, st.WriteLimit, ledgeradapter.DefaultLimiterInitial*5/4, "no more requests in flight")
			require.Zero(t, st.Overloads)
			tail := sizes[len(sizes)/2:]
			sum := 0
			for _, n := range tail {
				sum += n
			}
			require.GreaterOrEqual(t, sum/len(tail), ledgeradapter.DefaultWriteBatchMax*8/10, "full requests: %v", tail)
			t.Logf("stats %+v, sizes %v", st, tail)
		})
	})

	t.Run("slow per element", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			// 100ms per element, one after another, one request at a time,
			// with the client's timeouts (5s and 100ms an element beyond
			// the first): a quarter of it holds about 16 elements. Batches
			// shrink to about that.
			f := newFake()
			f.cost = func(_, n int) time.Duration { return time.Duration(n) * 100 * time.Millisecond }
			f.timeout = func(n int) time.Duration { return 5*time.Second + time.Duration(n-1)*100*time.Millisecond }
			b := newBatcher(t, f, ledgeradapter.BatcherConfig{MaxInFlight: 1})
			sizes := runLoad(t, b, f, 1000)
			require.LessOrEqual(t, b.Stats().WriteBatch, 30)
			tail := sizes[len(sizes)/2:]
			for _, n := range tail {
				require.LessOrEqual(t, n, 30, "sizes of the last requests: %v", tail)
			}
		})
	})
}

// A call whose deadline would come before its request's answer is not sent:
// its caller would leave mid-request, and a write whose answer is lost comes
// back as a replay of itself.
func TestBatcherSendsNothingItCannotFinish(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.cost = func(_, n int) time.Duration { return time.Duration(n) * time.Second }
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		_, err := b.AddAccountMetadata(context.Background(), "l", "a:0", nil, "k0")
		require.NoError(t, err, "no deadline: sent; the ledger takes a second")

		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = b.AddAccountMetadata(ctx, "l", "a:1", nil, "k1")
		require.ErrorIs(t, err, ledgeradapter.ErrNoTimeLeft)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.True(t, ledgeradapter.IsRetryable(err))
		require.Equal(t, start, time.Now(), "at once")
		require.Len(t, f.log(), 1, "not sent")
		_, _, err = b.GetAccount(ctx, "l", "a:1")
		require.NoError(t, err, "reads learn their own latency: none seen yet")

		ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = b.AddAccountMetadata(ctx, "l", "a:2", nil, "k2")
		require.NoError(t, err, "two seconds left is enough")
		require.EqualValues(t, 1, b.Stats().NoTimeLeft)
	})
}

// An expected time nothing has confirmed for longer than it lasts is not
// evidence: a call with too little time left for it is sent when no request
// of its kind has come back for that long and none is in flight, and the
// answer corrects the estimate. Otherwise one slow request (after an
// outage, under load) would leave every later call refused and nothing
// sent, for good: the worker's commands would cycle through their backoff
// until their budget ran out.
func TestBatcherRelearnsAStaleExpectedTime(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		var slow atomic.Bool
		slow.Store(true)
		f.cost = func(_, n int) time.Duration {
			if slow.Load() {
				return 3 * time.Second
			}
			return 100 * time.Millisecond
		}
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		_, err := b.AddAccountMetadata(context.Background(), "l", "a:0", nil, "k0")
		require.NoError(t, err, "a slow patch: the ledger took 3 s")
		slow.Store(false)

		write := func(i int) error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err := b.AddAccountMetadata(ctx, "l", fmt.Sprintf("a:%d", i), nil, fmt.Sprint("k", i))
			return err
		}
		require.ErrorIs(t, write(1), ledgeradapter.ErrNoTimeLeft, "right after the slow answer, the estimate holds")
		time.Sleep(7 * time.Second) // longer than twice the estimate, nothing sent meanwhile
		require.NoError(t, write(2), "a stale estimate does not refuse: the call goes, and is answered in 100 ms")
		for i := 3; i < 10; i++ {
			require.NoError(t, write(i), "the estimate learned from it (call %d)", i)
		}
		require.EqualValues(t, 1, b.Stats().NoTimeLeft)
	})
}
