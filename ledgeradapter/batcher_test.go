package ledgeradapter_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// fakeLedger is a BatchLedger in memory that records its requests and can
// hold them until released.
type fakeLedger struct {
	latency time.Duration // every request takes this long (fake time in a bubble)
	// cost, when set, is how long a request of n calls takes with
	// inFlight requests in flight, itself included.
	cost func(inFlight, n int) time.Duration
	hold chan struct{} // when set, each request waits for one receive from it
	// timeout, when set, is the timeout of a request of n calls, as
	// Client.TimeoutFor says it.
	timeout  func(n int) time.Duration
	inFlight atomic.Int32

	mu       sync.Mutex
	accounts map[string]map[string]string
	requests []fakeRequest
	// elemErr, when set, fails the elements it returns an error for.
	elemErr func(ledgeradapter.BulkAddMetadata) error
	// err, when set, fails every request; errOnce the next one.
	err     error
	errOnce error
}

type fakeRequest struct {
	op    string
	n     int // calls carried
	at    time.Time
	ended bool // the request's context had ended when it returned
	// value is the request context's value of traceKey.
	value any
}

// traceKey stands for what a tracer keeps in a context.
type traceKey struct{}

func newFake() *fakeLedger { return &fakeLedger{accounts: map[string]map[string]string{}} }

// TimeoutFor is what the Batcher reads a request's timeout from; 0 is
// unknown.
func (f *fakeLedger) TimeoutFor(n int) time.Duration {
	if f.timeout == nil {
		return 0
	}
	return f.timeout(n)
}

func (f *fakeLedger) request(ctx context.Context, op string, n int) (int, error) {
	in := int(f.inFlight.Add(1))
	defer f.inFlight.Add(-1)
	f.mu.Lock()
	f.requests = append(f.requests, fakeRequest{op: op, n: n, at: time.Now(), value: ctx.Value(traceKey{})})
	i := len(f.requests) - 1
	f.mu.Unlock()
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			f.mu.Lock()
			f.requests[i].ended = true
			f.mu.Unlock()
			return i, ctx.Err()
		}
	}
	if f.latency > 0 {
		time.Sleep(f.latency)
	}
	if f.cost != nil {
		time.Sleep(f.cost(in, n))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errOnce; err != nil {
		f.errOnce = nil
		return i, err
	}
	return i, f.err
}

func (f *fakeLedger) GetAccount(ctx context.Context, _, address string) (ledgeradapter.Account, bool, error) {
	if _, err := f.request(ctx, "GetAccount", 1); err != nil {
		return ledgeradapter.Account{}, false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	md, ok := f.accounts[address]
	if !ok {
		return ledgeradapter.Account{}, false, nil
	}
	return ledgeradapter.Account{Address: address, Metadata: maps.Clone(md)}, true, nil
}

func (f *fakeLedger) AddAccountMetadata(ctx context.Context, _, address string, md map[string]string, key string) (ledgeradapter.WriteResult, error) {
	if _, err := f.request(ctx, "AddAccountMetadata", 1); err != nil {
		return ledgeradapter.WriteResult{}, err
	}
	return ledgeradapter.WriteResult{}, f.apply(ledgeradapter.BulkAddMetadata{Address: address, Metadata: md, IdempotencyKey: key})
}

func (f *fakeLedger) ListAccounts(ctx context.Context, _ string, addresses []string) (map[string]ledgeradapter.Account, error) {
	if _, err := f.request(ctx, "ListAccounts", len(addresses)); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]ledgeradapter.Account{}
	for _, a := range addresses {
		if md, ok := f.accounts[a]; ok {
			out[a] = ledgeradapter.Account{Address: a, Metadata: maps.Clone(md)}
		}
	}
	return out, nil
}

func (f *fakeLedger) Bulk(ctx context.Context, _ string, elems []ledgeradapter.BulkAddMetadata) ([]ledgeradapter.BulkResult, error) {
	if _, err := f.request(ctx, "Bulk", len(elems)); err != nil {
		return nil, err
	}
	res := make([]ledgeradapter.BulkResult, len(elems))
	for i, el := range elems {
		res[i].Err = f.apply(el)
	}
	return res, nil
}

func (f *fakeLedger) apply(el ledgeradapter.BulkAddMetadata) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.elemErr != nil {
		if err := f.elemErr(el); err != nil {
			return err
		}
	}
	if f.accounts[el.Address] == nil {
		f.accounts[el.Address] = map[string]string{}
	}
	maps.Copy(f.accounts[el.Address], el.Metadata)
	return nil
}

func (f *fakeLedger) log() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

func newBatcher(t *testing.T, f *fakeLedger, cfg ledgeradapter.BatcherConfig) *ledgeradapter.Batcher {
	t.Helper()
	b, err := ledgeradapter.NewBatcher(f, cfg)
	require.NoError(t, err)
	return b
}

// read runs GetAccount in a goroutine and returns where its result lands.
type readResult struct {
	acc   ledgeradapter.Account
	found bool
	err   error
	at    time.Time
}

func goRead(ctx context.Context, b *ledgeradapter.Batcher, address string) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		acc, found, err := b.GetAccount(ctx, "l", address)
		ch <- readResult{acc, found, err, time.Now()}
	}()
	return ch
}

func goWrite(ctx context.Context, b *ledgeradapter.Batcher, address, key string) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := b.AddAccountMetadata(ctx, "l", address, map[string]string{"k": address}, key)
		ch <- err
	}()
	return ch
}

func TestBatcherLoneCallIsNotDelayed(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.latency = 5 * time.Millisecond
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{Window: 2 * time.Millisecond})
		start := time.Now()
		_, found, err := b.GetAccount(context.Background(), "l", "a:1")
		require.NoError(t, err)
		require.False(t, found)
		_, err = b.AddAccountMetadata(context.Background(), "l", "a:1", map[string]string{"x": "y"}, "k")
		require.NoError(t, err)
		require.Equal(t, 10*time.Millisecond, time.Since(start), "two requests of 5ms, no window")
		log := f.log()
		require.Len(t, log, 2)
		require.Equal(t, "GetAccount", log[0].op, "a batch of one is the single call")
		require.Equal(t, "AddAccountMetadata", log[1].op)
		st := b.Stats()
		st.ReadLimit, st.WriteLimit, st.ReadBatch, st.WriteBatch = 0, 0, 0, 0 // the limiters' own, tested with them
		require.Equal(t, ledgeradapter.BatcherStats{Reads: 1, Writes: 1, ReadRequests: 1, WriteRequests: 1, PeakInFlight: 1}, st)
	})
}

// heldBatcher is a Batcher over a fake ledger that holds each request until
// released.
func heldBatcher(t *testing.T, cfg ledgeradapter.BatcherConfig) (*fakeLedger, *ledgeradapter.Batcher) {
	t.Helper()
	f := newFake()
	f.hold = make(chan struct{})
	return f, newBatcher(t, f, cfg)
}

// Writes behind one in flight wait their window and leave together; reads
// behind one in flight wait for it (or for a full batch): a list-accounts
// request costs the real ledger v2.4.12 a scan of its accounts whatever it
// asks for, so fewer and fuller is cheaper.
func TestBatcherCoalesces(t *testing.T) {
	t.Parallel()
	const window = 2 * time.Millisecond

	t.Run("writes after the window", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			f, b := heldBatcher(t, ledgeradapter.BatcherConfig{Window: window})
			ctx := context.Background()
			first := goWrite(ctx, b, "a:0", "k0") // in flight, held
			synctest.Wait()
			start := time.Now()
			var rest []<-chan error
			for i := 1; i <= 5; i++ {
				rest = append(rest, goWrite(ctx, b, fmt.Sprintf("a:%d", i), fmt.Sprint("k", i)))
			}
			synctest.Wait()
			require.Len(t, f.log(), 1, "the others wait for their window")
			time.Sleep(window)
			synctest.Wait()
			log := f.log()
			require.Len(t, log, 2)
			require.Equal(t, fakeRequest{op: "Bulk", n: 5, at: start.Add(window)}, log[1], "one request after the window")
			close(f.hold)
			require.NoError(t, <-first)
			for _, ch := range rest {
				require.NoError(t, <-ch)
			}
		})
	})

	t.Run("reads after the read in flight", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			f, b := heldBatcher(t, ledgeradapter.BatcherConfig{Window: window})
			ctx := context.Background()
			f.accounts["a:3"] = map[string]string{"n": "3"}

			first := goRead(ctx, b, "a:0") // in flight, held
			synctest.Wait()
			var rest []<-chan readResult
			for i := 1; i <= 5; i++ {
				rest = append(rest, goRead(ctx, b, fmt.Sprintf("a:%d", i)))
			}
			rest = append(rest, goRead(ctx, b, "a:3")) // the same address twice
			time.Sleep(time.Second)
			synctest.Wait()
			require.Len(t, f.log(), 1, "the others wait for the read in flight, well past the window")

			f.hold <- struct{}{}
			require.NoError(t, (<-first).err)
			synctest.Wait()
			log := f.log()
			require.Len(t, log, 2)
			require.Equal(t, "ListAccounts", log[1].op)
			require.Equal(t, 6, log[1].n, "one request for the six that waited")
			close(f.hold)
			for i, ch := range rest {
				r := <-ch
				require.NoError(t, r.err)
				require.Equal(t, i == 2 || i == 5, r.found, "a:%d", i+1)
			}
			st := b.Stats()
			require.Equal(t, int64(7), st.Reads)
			require.Equal(t, int64(2), st.ReadRequests)
		})
	})

	t.Run("reads are not held to a small first batch", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			// Nothing came back yet, when writes leave in batches of at most
			// FirstBatch; a list of 49 costs the ledger what a list of 1 does.
			f, b := heldBatcher(t, ledgeradapter.BatcherConfig{Window: window})
			ctx := context.Background()
			first := goRead(ctx, b, "a:0")
			synctest.Wait()
			var rest []<-chan readResult
			for i := 1; i < 50; i++ {
				rest = append(rest, goRead(ctx, b, fmt.Sprintf("a:%d", i)))
			}
			synctest.Wait()
			f.hold <- struct{}{}
			require.NoError(t, (<-first).err)
			synctest.Wait()
			log := f.log()
			require.Len(t, log, 2)
			require.Equal(t, 49, log[1].n, "one request for the 49 that waited")
			close(f.hold)
			for _, ch := range rest {
				require.NoError(t, (<-ch).err)
			}
		})
	})

	t.Run("a full batch of reads does not wait", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			f, b := heldBatcher(t, ledgeradapter.BatcherConfig{Window: window, MaxBatch: 4})
			ctx := context.Background()
			first := goRead(ctx, b, "a:0")
			synctest.Wait()
			var rest []<-chan readResult
			for i := 1; i <= 5; i++ {
				rest = append(rest, goRead(ctx, b, fmt.Sprintf("a:%d", i)))
			}
			synctest.Wait()
			log := f.log()
			require.Len(t, log, 2, "four of the five fill a request, which leaves at once")
			require.Equal(t, 4, log[1].n)
			close(f.hold)
			require.NoError(t, (<-first).err)
			for _, ch := range rest {
				require.NoError(t, (<-ch).err)
			}
			require.Len(t, f.log(), 3)
		})
	})
}

func TestBatcherMaxBatchAndInFlight(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		const window = time.Millisecond
		// The limit is fixed at 2 (Min = Max): this is about the caps.
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{Window: window, MaxBatch: 10, MaxInFlight: 2, Limiter: ledgeradapter.LimiterConfig{Min: 2}})
		ctx := context.Background()
		first := goWrite(ctx, b, "a:0", "k0")
		synctest.Wait()
		var rest []<-chan error
		for i := 1; i <= 25; i++ {
			rest = append(rest, goWrite(ctx, b, fmt.Sprintf("a:%d", i), fmt.Sprintf("k%d", i)))
			synctest.Wait()
		}
		// A full batch leaves at once, window or not; then no slot is free.
		log := f.log()
		require.Len(t, log, 2)
		require.Equal(t, []int{1, 10}, []int{log[0].n, log[1].n})

		// A freed slot takes the next full batch; the 5 left wait for a
		// slot beyond their window, and leave together when one frees.
		f.hold <- struct{}{}
		synctest.Wait()
		require.Len(t, f.log(), 3)
		require.Equal(t, 10, f.log()[2].n)
		time.Sleep(10 * window)
		synctest.Wait()
		require.Len(t, f.log(), 3, "no slot")
		f.hold <- struct{}{}
		synctest.Wait()
		require.Len(t, f.log(), 4)
		require.Equal(t, 5, f.log()[3].n)
		close(f.hold)
		require.NoError(t, <-first)
		for _, ch := range rest {
			require.NoError(t, <-ch)
		}
		require.Equal(t, 2, b.Stats().PeakInFlight)
		require.Len(t, f.accounts, 26)
	})
}

func TestBatcherPerCallResults(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		conflict := &ledgeradapter.Error{Op: "Bulk", StatusCode: http.StatusBadRequest, ErrorCode: "VALIDATION", ErrorMessage: "invalid idempotency hash when using idempotency key 'k2'"}
		f.elemErr = func(el ledgeradapter.BulkAddMetadata) error {
			if el.IdempotencyKey == "k2" {
				return conflict
			}
			return nil
		}
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		ctx := context.Background()
		first := goWrite(ctx, b, "a:0", "k0")
		synctest.Wait()
		errs := []<-chan error{goWrite(ctx, b, "a:1", "k1"), goWrite(ctx, b, "a:2", "k2"), goWrite(ctx, b, "a:3", "k3")}
		synctest.Wait()
		close(f.hold)
		require.NoError(t, <-first)
		require.NoError(t, <-errs[0])
		err := <-errs[1]
		require.ErrorIs(t, err, ledgeradapter.ErrIdempotencyConflict, "an element's error is its call's only")
		require.NoError(t, <-errs[2])
		require.Equal(t, "Bulk", f.log()[1].op)

		// A request that fails as a whole fails each of its calls.
		f.hold = make(chan struct{})
		first = goWrite(ctx, b, "b:0", "")
		synctest.Wait()
		f.err = &ledgeradapter.Error{Op: "Bulk", StatusCode: http.StatusServiceUnavailable, ErrorCode: "INTERNAL"}
		errs = []<-chan error{goWrite(ctx, b, "b:1", ""), goWrite(ctx, b, "b:2", "")}
		synctest.Wait()
		close(f.hold)
		for _, ch := range append(errs, first) {
			err := <-ch
			require.Error(t, err)
			require.True(t, ledgeradapter.IsRetryable(err))
		}

		// Nothing invalid is queued: it fails as Client's would, unsent.
		n := len(f.log())
		_, _, err = b.GetAccount(ctx, "l", "a::b")
		require.ErrorIs(t, err, ledgeradapter.ErrInvalidAddress)
		_, err = b.AddAccountMetadata(ctx, "_info", "a:b", nil, "")
		require.ErrorIs(t, err, ledgeradapter.ErrInvalidLedgerName)
		require.Len(t, f.log(), n)
	})
}

// Deliveries of one command at once write once: the same key and input as
// a write in flight wait for it and are idempotency hits.
func TestBatcherSameWriteInFlight(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		ctx := context.Background()
		write := func(md map[string]string) <-chan ledgeradapter.WriteResult {
			ch := make(chan ledgeradapter.WriteResult, 1)
			go func() {
				res, err := b.AddAccountMetadata(ctx, "l", "a:1", md, "k")
				require.NoError(t, err)
				ch <- res
			}()
			return ch
		}
		md := map[string]string{"x": "1"}
		leader := write(md)
		synctest.Wait()
		same := []<-chan ledgeradapter.WriteResult{write(map[string]string{"x": "1"}), write(md), write(md)}
		other := write(map[string]string{"x": "2"}) // same key, other input: sent
		synctest.Wait()
		time.Sleep(ledgeradapter.DefaultBatchWindow)
		synctest.Wait()
		require.Len(t, f.log(), 2, "the leader, and the other input")
		require.Equal(t, 1, f.log()[1].n)
		close(f.hold)
		require.False(t, (<-leader).IdempotencyHit)
		for _, ch := range same {
			require.True(t, (<-ch).IdempotencyHit)
		}
		<-other
		require.Len(t, f.log(), 2, "no request for the waiting ones")
		st := b.Stats()
		require.Equal(t, int64(5), st.Writes)
		require.Equal(t, int64(2), st.WriteRequests)

		// When the write in flight fails, the waiting ones are sent.
		f.hold = make(chan struct{})
		f.errOnce = &ledgeradapter.Error{Op: "AddAccountMetadata", StatusCode: http.StatusServiceUnavailable}
		failed := make(chan error, 1)
		go func() {
			_, err := b.AddAccountMetadata(ctx, "l", "a:2", md, "k2")
			failed <- err
		}()
		synctest.Wait()
		again := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := b.AddAccountMetadata(ctx, "l", "a:2", md, "k2")
				again <- err
			}()
		}
		synctest.Wait()
		close(f.hold)
		require.Error(t, <-failed)
		require.NoError(t, <-again)
		require.NoError(t, <-again)
		require.Len(t, f.log(), 4, "the failed write, then one more for the two that waited")
		require.Equal(t, fakeRequest{op: "AddAccountMetadata", n: 1, at: time.Now()}, f.log()[3])
	})
}

func TestBatcherReadsGetTheirOwnMaps(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.accounts["a:1"] = map[string]string{"n": "1"}
		f.hold = make(chan struct{})
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		ctx := context.Background()
		first := goRead(ctx, b, "a:0")
		synctest.Wait()
		r1, r2 := goRead(ctx, b, "a:1"), goRead(ctx, b, "a:1")
		synctest.Wait()
		close(f.hold)
		<-first
		a, b2 := <-r1, <-r2
		a.acc.Metadata["n"] = "changed"
		require.Equal(t, "1", b2.acc.Metadata["n"])
	})
}

func TestBatcherCancellation(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{Window: time.Hour, MaxInFlight: 1})
		first := goRead(context.Background(), b, "a:0") // takes the only slot
		synctest.Wait()

		// A call waiting for a slot returns when its context ends, and is
		// never sent.
		ctx, cancel := context.WithCancelCause(context.Background())
		waiting := goRead(ctx, b, "a:1")
		kept := goRead(context.Background(), b, "a:2")
		synctest.Wait()
		start := time.Now()
		cancel(errors.New("shutting down"))
		r := <-waiting
		require.Equal(t, start, r.at, "returns at once")
		require.ErrorIs(t, r.err, context.Canceled)
		require.ErrorContains(t, r.err, "shutting down")
		require.True(t, ledgeradapter.IsRetryable(r.err))

		f.hold <- struct{}{}
		require.NoError(t, (<-first).err)
		synctest.Wait()
		log := f.log()
		require.Len(t, log, 2)
		require.Equal(t, "GetAccount", log[1].op, "only a:2 was sent")
		f.hold <- struct{}{}
		require.NoError(t, (<-kept).err)

		// A shared request goes on while one of its callers waits, and is
		// cancelled when none does.
		ctx1, cancel1 := context.WithCancel(context.Background())
		ctx2, cancel2 := context.WithCancel(context.Background())
		blocker := goRead(context.Background(), b, "b:0")
		synctest.Wait()
		r1, r2 := goRead(ctx1, b, "b:1"), goRead(ctx2, b, "b:2")
		synctest.Wait()
		f.hold <- struct{}{}
		<-blocker
		synctest.Wait()
		require.Equal(t, fakeRequest{op: "ListAccounts", n: 2, at: time.Now()}, f.log()[3])
		cancel1()
		require.ErrorIs(t, (<-r1).err, context.Canceled)
		synctest.Wait()
		require.False(t, f.log()[3].ended, "the other caller still waits")
		cancel2()
		require.ErrorIs(t, (<-r2).err, context.Canceled)
		synctest.Wait()
		require.True(t, f.log()[3].ended, "nobody waits: cancelled")
	})
}

func TestBatcherConfig(t *testing.T) {
	t.Parallel()
	b := newBatcher(t, newFake(), ledgeradapter.BatcherConfig{})
	require.Equal(t, ledgeradapter.BatcherConfig{
		Window: ledgeradapter.DefaultBatchWindow, MaxBatch: ledgeradapter.DefaultBatchMax, MaxWriteBatch: ledgeradapter.DefaultWriteBatchMax,
		MaxInFlight: ledgeradapter.DefaultBatchInFlight,
		Limiter: ledgeradapter.LimiterConfig{
			Initial: ledgeradapter.DefaultLimiterInitial, Min: 1, Max: ledgeradapter.DefaultBatchInFlight, Floor: 1,
			Backoff: ledgeradapter.DefaultLimiterBackoff, FirstBatch: ledgeradapter.DefaultFirstBatch,
			Band: ledgeradapter.DefaultLimiterBand, ProbeRounds: ledgeradapter.DefaultProbeRounds,
		},
	}, b.Config())
	require.Equal(t, 4, newBatcher(t, newFake(), ledgeradapter.BatcherConfig{MaxInFlight: 4}).Config().Limiter.Max, "the limit's ceiling is MaxInFlight")
	err := ledgeradapter.BatcherConfig{Window: -1, MaxBatch: 101, MaxWriteBatch: 101, MaxInFlight: -1}.Validate()
	require.ErrorContains(t, err, "window")
	require.ErrorContains(t, err, "write batch max 101")
	require.ErrorContains(t, err, "ledgeradapter: batch max 101")
	require.ErrorContains(t, err, "in flight -1")
	err = ledgeradapter.BatcherConfig{MaxInFlight: 4, Limiter: ledgeradapter.LimiterConfig{Max: 8, Backoff: 2}}.Validate()
	require.ErrorContains(t, err, "limiter max 8 is above the requests in flight 4")
	require.ErrorContains(t, err, "backoff 2")
	_, err = ledgeradapter.NewBatcher(nil, ledgeradapter.BatcherConfig{})
	require.Error(t, err)
}

// TestBatcherUnderTheHandler runs many commands at once through the real
// handler, a Batcher, the client and the embedded ledger over HTTP: each
// command gets the outcome it gets alone, in far fewer requests.
func TestBatcherUnderTheHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var requests atomic.Int64
	c := testutil.StartLedger(t, testutil.LedgerOptions{InMemory: true, Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			next.ServeHTTP(w, r)
		})
	}}).Client
	require.NoError(t, c.EnsureLedger(ctx, conformanceLedger))
	b, err := ledgeradapter.NewBatcher(c, ledgeradapter.BatcherConfig{MaxInFlight: 2})
	require.NoError(t, err)
	h := &handlers.CreateBalance{Ledger: b, LedgerName: conformanceLedger}

	// Seed what a replay and a key reuse need, unbatched.
	seed := &handlers.CreateBalance{Ledger: c, LedgerName: conformanceLedger}
	for _, k := range []string{"replay", "reused"} {
		o, err := seed.Handle(ctx, k, messages.CreateBalance{WalletID: k, Name: "b"})
		require.NoError(t, err)
		require.NotNil(t, o.Created)
	}
	requests.Store(0)

	const n = 300
	type cmd struct {
		key  string
		cmd  messages.CreateBalance
		want string // created, replayed or a rejection code
	}
	var cmds []cmd
	for i := range n {
		cmds = append(cmds, cmd{fmt.Sprintf("k%d", i), messages.CreateBalance{WalletID: fmt.Sprintf("w%d", i), Name: "b"}, "created"})
	}
	cmds = append(cmds,
		cmd{"replay", messages.CreateBalance{WalletID: "replay", Name: "b"}, "replayed"},
		cmd{"reused", messages.CreateBalance{WalletID: "reused", Name: "b", Priority: 3}, string(messages.CodeKeyReused)},
		cmd{"other", messages.CreateBalance{WalletID: "replay", Name: "b"}, string(messages.CodeAlreadyExists)},
	)
	got := make([]string, len(cmds))
	var wg sync.WaitGroup
	for i, c := range cmds {
		wg.Go(func() {
			o, err := h.Handle(ctx, c.key, c.cmd)
			switch {
			case err != nil:
				got[i] = err.Error()
			case o.Created != nil && o.Created.Replayed:
				got[i] = "replayed"
			case o.Created != nil:
				got[i] = "created"
			default:
				got[i] = string(o.Code())
			}
		})
	}
	wg.Wait()
	for i, c := range cmds {
		require.Equal(t, c.want, got[i], c.key)
	}
	st := b.Stats()
	require.Equal(t, int64(len(cmds)), st.Reads)
	require.Equal(t, int64(n), st.Writes)
	require.Equal(t, st.ReadRequests+st.WriteRequests, requests.Load())
	require.Less(t, requests.Load(), int64(len(cmds))/4, "at most a quarter of a request per command")
	require.LessOrEqual(t, st.PeakInFlight, 2)
	logs, err := c.AllLogs(ctx, conformanceLedger)
	require.NoError(t, err)
	require.Len(t, logs, n+2, "one write per created balance")
}

// A write sent alone goes in a request of its own, whose answer says
// whether it was an idempotency hit, while the writes queued with it share
// a bulk (whose answer does not say).
func TestBatcherWriteAlone(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		ctx := context.Background()
		first := goWrite(ctx, b, "a:1", "k1") // in flight: the next ones queue
		synctest.Wait()
		goAlone := func(address, key string) <-chan error {
			ch := make(chan error, 1)
			go func() {
				_, err := b.AddAccountMetadataAlone(ctx, "l", address, map[string]string{"k": address}, key)
				ch <- err
			}()
			return ch
		}
		alone := goAlone("a:2", "k2")
		synctest.Wait() // in flight: the next one sent alone queues
		rest := []<-chan error{goAlone("a:5", "k5"), goAlone("a:6", "k6"), goWrite(ctx, b, "a:3", "k3"), goWrite(ctx, b, "a:4", "k4")}
		synctest.Wait()
		time.Sleep(ledgeradapter.DefaultBatchWindow)
		synctest.Wait()
		close(f.hold)
		for _, ch := range append(rest, first, alone) {
			require.NoError(t, <-ch)
		}
		var ops []fakeRequest
		for _, r := range f.log() {
			ops = append(ops, fakeRequest{op: r.op, n: r.n})
		}
		single := fakeRequest{op: "AddAccountMetadata", n: 1}
		require.ElementsMatch(t, []fakeRequest{single, single, single, single, {op: "Bulk", n: 2}}, ops,
			"the first write and each one sent alone in a request of its own, the other two in a bulk")
		require.Equal(t, int64(6), b.Stats().Writes)
	})
}

// A write sent alone that waited for the same write in flight, sent in the
// usual way, goes back to being sent alone when that one fails: not into a
// bulk with the writes queued meanwhile.
func TestBatcherWriteAloneStaysAloneAfterItsLeaderFails(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		f.hold = make(chan struct{})
		f.errOnce = &ledgeradapter.Error{Op: "AddAccountMetadata", StatusCode: http.StatusServiceUnavailable, ErrorCode: "INTERNAL"}
		b := newBatcher(t, f, ledgeradapter.BatcherConfig{})
		ctx := context.Background()
		leader := goWrite(ctx, b, "a:1", "k")
		synctest.Wait()
		follower := make(chan error, 1)
		go func() {
			_, err := b.AddAccountMetadataAlone(ctx, "l", "a:1", map[string]string{"k": "a:1"}, "k")
			follower <- err
		}()
		other := goWrite(ctx, b, "a:2", "k2")
		synctest.Wait()
		require.Len(t, f.log(), 1, "the follower waits for its leader, the other write for the window")
		close(f.hold)
		require.Error(t, <-leader)
		require.NoError(t, <-follower)
		require.NoError(t, <-other)
		for _, r := range f.log() {
			require.Equal(t, 1, r.n, "%s: every write in a request of its own", r.op)
		}
	})
}
