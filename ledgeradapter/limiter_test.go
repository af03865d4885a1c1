package ledgeradapter

import (
	"math"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

func newTestLimiter(t *testing.T, cfg LimiterConfig) *Limiter {
	t.Helper()
	l, err := NewLimiter(cfg)
	require.NoError(t, err)
	return l
}

// ledgerModel is a ledger that gets through throughput(inFlight) elements
// a second with inFlight requests of n elements in flight.
type ledgerModel func(inFlight int) float64

// drive runs the limiter for d of fake time (call it in a synctest bubble)
// against m, every request sent with the limit full and pressed, and
// returns the limits it went through, one per answer.
func drive(l *Limiter, d time.Duration, n int, m ledgerModel) []int {
	var seen []int
	for end := time.Now().Add(d); time.Now().Before(end); {
		in := l.Limit()
		l.Pressed()
		// With in requests in flight, one answer comes every latency/in.
		latency := time.Duration(float64(in*n) / m(in) * float64(time.Second))
		time.Sleep(latency / time.Duration(in))
		l.Observe(Sample{Latency: latency, Elements: n})
		seen = append(seen, l.Limit())
	}
	return seen
}

// within requires every limit of the last third of seen to be in [lo, hi].
func within(t *testing.T, seen []int, lo, hi int) {
	t.Helper()
	tail := seen[len(seen)*2/3:]
	least, most := slices.Min(tail), slices.Max(tail)
	require.True(t, least >= lo && most <= hi, "limits of the last third: want %d to %d, got %d to %d", lo, hi, least, most)
}

func TestLimiter(t *testing.T) {
	t.Parallel()

	t.Run("climbs while more in flight gets more through", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			l := newTestLimiter(t, LimiterConfig{Initial: 4, Max: 64})
			seen := drive(l, time.Minute, 10, func(in int) float64 { return 50 * float64(in) })
			within(t, seen, 48, 64)
		})
	})

	t.Run("holds where throughput stops growing", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			// The ledger's pool is full at 16 requests: more only queue.
			l := newTestLimiter(t, LimiterConfig{Initial: 4, Max: 64})
			seen := drive(l, time.Minute, 10, func(in int) float64 { return 50 * float64(min(in, 16)) })
			within(t, seen, 12, 21)
		})
	})

	t.Run("comes down to a ledger that thrashes", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			// Best at 12 in flight; beyond, each one more costs 5% of it,
			// as a pool fought over does.
			l := newTestLimiter(t, LimiterConfig{Initial: 32, Max: 64})
			seen := drive(l, 5*time.Minute, 10, func(in int) float64 {
				if in <= 12 {
					return 50 * float64(in)
				}
				return math.Max(100, 600*(1-0.05*float64(in-12)))
			})
			within(t, seen, 9, 16)
		})
	})

	t.Run("probes stop at the floor, overloads do not", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			// The thrashing ledger above, best at 2 in flight: the probes
			// come down to the floor of 6 and stay there.
			l := newTestLimiter(t, LimiterConfig{Initial: 16, Max: 64, Floor: 6})
			seen := drive(l, 5*time.Minute, 10, func(in int) float64 {
				return math.Max(100, 200*(1-0.05*float64(in-2)))
			})
			within(t, seen, 6, 9)
			l.Observe(Sample{Overload: true})
			require.Equal(t, 3, l.Limit(), "an overload goes under the floor")
		})
	})

	t.Run("a limit that is not reached is not judged", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			l := newTestLimiter(t, LimiterConfig{Initial: 8, Max: 64})
			for i := range 200 {
				time.Sleep(time.Duration(i%7) * time.Millisecond) // a demand that varies
				l.Observe(Sample{Latency: time.Millisecond, Elements: 1 + i%5})
			}
			require.Equal(t, 8, l.Limit())
		})
	})

	t.Run("overload halves at once, and the limit comes back within rounds", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			l := newTestLimiter(t, LimiterConfig{Initial: 32, Max: 64, Backoff: 0.5})
			m := func(in int) float64 { return 50 * float64(min(in, 32)) }
			drive(l, 10*time.Second, 10, m)
			before := l.Limit()
			require.GreaterOrEqual(t, before, 24)
			l.Observe(Sample{Overload: true, Latency: time.Hour, Elements: 50})
			require.Equal(t, before/2, l.Limit())
			// A round is about 200 ms here (10 elements at 50 a second
			// per request in flight).
			seen := drive(l, 3*time.Second, 10, m)
			require.GreaterOrEqual(t, seen[len(seen)-1], 24, "back within 3 s: %v", seen)
			for range 20 {
				l.Observe(Sample{Overload: true})
			}
			require.Equal(t, 1, l.Limit(), "never below Min")
		})
	})

	t.Run("a request near its timeout shrinks the limit, whatever the throughput", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 16, Max: 64})
		l.Observe(Sample{Latency: 4 * time.Second, Elements: 10, Timeout: 20 * time.Second})
		require.Equal(t, 16, l.Limit(), "4s is within a quarter of 20s")
		l.Observe(Sample{Latency: 2 * time.Second, Elements: 10, Timeout: 5 * time.Second})
		require.Equal(t, 10, l.Limit(), "2s is beyond a quarter of 5s: 16 × 1.25 ÷ 2")
		l = newTestLimiter(t, LimiterConfig{Initial: 16, Max: 64, TargetLatency: time.Second})
		l.Observe(Sample{Latency: 2 * time.Second, Elements: 10, Timeout: 20 * time.Second})
		require.Equal(t, 8, l.Limit(), "a TargetLatency set is a ceiling too")
	})

	t.Run("batches shrink once the limit is at its least, and grow back", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, batchesShrinkAndGrowBack)
	})

	t.Run("the requests in flight at a cut cut no further", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			l := newTestLimiter(t, LimiterConfig{Initial: 16, Max: 64, Backoff: 0.5})
			// Eight bulks sent together time out together: one cut.
			time.Sleep(20 * time.Second)
			for range 8 {
				l.Observe(Sample{Overload: true, Latency: 20 * time.Second, Elements: 10})
			}
			require.Equal(t, 8, l.Limit(), "halved once, not 16 to 1")
			// One sent after the cut that times out too cuts again.
			time.Sleep(20 * time.Second)
			l.Observe(Sample{Overload: true, Latency: 10 * time.Second, Elements: 10})
			require.Equal(t, 4, l.Limit())
		})
	})

	t.Run("a mild cut does not hide a deeper one of the requests in flight with it", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			l := newTestLimiter(t, LimiterConfig{Initial: 16, Max: 64, Backoff: 0.5})
			const timeout = 4 * time.Second // the target is 1 s
			time.Sleep(timeout)
			// An answer a little past the target: a cut of a tenth.
			l.Observe(Sample{Latency: 1100 * time.Millisecond, Elements: 10, Timeout: timeout})
			require.Equal(t, 14, l.Limit())
			// The requests in flight with it time out: halved in all, once.
			for range 15 {
				l.Observe(Sample{Overload: true, Latency: timeout, Elements: 10, Timeout: timeout})
			}
			require.Equal(t, 8, l.Limit())
		})
	})

	t.Run("expected latency follows the recent ones", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{})
		require.Zero(t, l.Expected())
		l.Observe(Sample{Latency: time.Second, Elements: 1})
		require.Equal(t, time.Second, l.Expected())
		for range 30 {
			l.Observe(Sample{Latency: 100 * time.Millisecond, Elements: 1})
		}
		require.InDelta(t, 100*time.Millisecond, l.Expected(), float64(time.Millisecond))
		l.Observe(Sample{Overload: true, Latency: time.Hour})
		require.InDelta(t, 100*time.Millisecond, l.Expected(), float64(time.Millisecond), "an overload's latency is not one")
	})
}

// batchesShrinkAndGrowBack: batches shrink once the limit is at its least,
// and grow back.
func batchesShrinkAndGrowBack(t *testing.T) {
	l := newTestLimiter(t, LimiterConfig{Initial: 2, Max: 64})
	const timeout = 4 * time.Second // the target is 1 s
	require.Equal(t, DefaultFirstBatch, l.BatchLimit(MaxBulkSize), "nothing seen yet: a small batch")
	require.Equal(t, 3, l.BatchLimit(3))
	l.Observe(Sample{Latency: 500 * time.Millisecond, Elements: 10, Timeout: timeout})
	require.Equal(t, MaxBulkSize, l.BatchLimit(MaxBulkSize), "within the target: the most")

	l.Observe(Sample{Latency: 2 * time.Second, Elements: 100, Timeout: timeout})
	require.Equal(t, 1, l.Limit())
	require.Equal(t, MaxBulkSize, l.BatchLimit(MaxBulkSize), "the limit gave first")
	time.Sleep(3 * time.Second) // the next one was sent after that cut
	l.Observe(Sample{Latency: 2 * time.Second, Elements: 100, Timeout: timeout})
	require.Equal(t, 50, l.BatchLimit(MaxBulkSize), "then the batch")
	l.Observe(Sample{Overload: true})
	require.Equal(t, 25, l.BatchLimit(MaxBulkSize))
	for range 100 {
		l.Observe(Sample{Overload: true})
	}
	require.Equal(t, 1, l.BatchLimit(MaxBulkSize), "never below one call")

	l.Observe(Sample{Latency: 500 * time.Millisecond, Elements: 1, Timeout: timeout})
	require.Equal(t, 11, l.BatchLimit(MaxBulkSize), "a tenth more per request within the target")
	for range 20 {
		l.Observe(Sample{Latency: 500 * time.Millisecond, Elements: 1, Timeout: timeout})
	}
	require.Equal(t, MaxBulkSize, l.BatchLimit(MaxBulkSize))
}

func TestLimiterConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, LimiterConfig{}.Validate())
	err := LimiterConfig{Min: 4, Max: 2, Backoff: 1.5, TargetLatency: -time.Second, FirstBatch: -1}.Validate()
	require.Error(t, err)
	for _, want := range []string{"bounds", "initial", "backoff", "target latency", "first batch", "floor"} {
		require.ErrorContains(t, err, want)
	}
	_, err = NewLimiter(LimiterConfig{Initial: 100, Max: 10})
	require.ErrorContains(t, err, "initial 100")
}
