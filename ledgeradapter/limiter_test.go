package ledgeradapter

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func newTestLimiter(t *testing.T, cfg LimiterConfig) *Limiter {
	t.Helper()
	l, err := NewLimiter(cfg)
	require.NoError(t, err)
	return l
}

// saturating is a ledger model: requests take base while at most knee are
// in flight, and beyond it they queue, so that latency grows with the
// requests in flight (throughput stays at its ceiling).
func saturating(base time.Duration, knee int) func(inFlight int) time.Duration {
	return func(inFlight int) time.Duration {
		if inFlight <= knee {
			return base
		}
		return base * time.Duration(inFlight) / time.Duration(knee)
	}
}

// drive runs the limiter for n samples, each request sent with the limit
// full, and returns the limits it went through.
func drive(l *Limiter, n, elements int, latency func(inFlight int) time.Duration) []int {
	var seen []int
	for range n {
		in := l.Limit()
		l.Observe(Sample{Latency: latency(in) * time.Duration(elements), Elements: elements, InFlight: in})
		seen = append(seen, l.Limit())
	}
	return seen
}

func TestLimiter(t *testing.T) {
	t.Parallel()

	t.Run("grows to its ceiling while latency holds", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 4, Max: 64})
		seen := drive(l, 200, 1, saturating(time.Millisecond, 1000))
		require.Equal(t, 64, l.Limit())
		require.IsNonDecreasing(t, seen)
	})

	t.Run("a fast ledger's noise is not congestion", func(t *testing.T) {
		t.Parallel()
		// Tens of microseconds, some ten times the best: the scheduler's
		// noise, not a queue at the ledger.
		l := newTestLimiter(t, LimiterConfig{Initial: 8, Max: 64})
		for i := range 200 {
			lat := 20 * time.Microsecond
			if i%3 == 0 {
				lat = 300 * time.Microsecond
			}
			l.Observe(Sample{Latency: lat, Elements: 1, InFlight: l.Limit()})
		}
		require.Equal(t, 64, l.Limit())
	})

	t.Run("a limit that is not used is not raised", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 8, Max: 64})
		for range 100 {
			l.Observe(Sample{Latency: time.Millisecond, Elements: 1, InFlight: 3})
		}
		require.Equal(t, 8, l.Limit())
	})

	t.Run("settles near the knee of a saturated ledger", func(t *testing.T) {
		t.Parallel()
		// Throughput is flat past 16 in flight: more only queues. The limit
		// must stop within Tolerance of the knee, not run to its ceiling.
		l := newTestLimiter(t, LimiterConfig{Initial: 1, Max: 256})
		seen := drive(l, 400, 1, saturating(25*time.Millisecond, 16))
		tail := seen[300:]
		for _, v := range tail {
			require.GreaterOrEqual(t, v, 12, "limits of the last 100 samples: %v", tail)
			require.LessOrEqual(t, v, 2*16+8, "limits of the last 100 samples: %v", tail)
		}
	})

	t.Run("a slower ledger gets less load", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 32, Max: 64})
		drive(l, 50, 1, saturating(time.Millisecond, 1000))
		before := l.Limit()
		// The same ledger now takes four times as long under the same load.
		drive(l, 10, 1, func(int) time.Duration { return 4 * time.Millisecond })
		require.Less(t, l.Limit(), before/2)
	})

	t.Run("a floor that rose for good is measured again", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 1, Max: 64})
		drive(l, 200, 1, saturating(time.Millisecond, 16))
		// The ledger is now ten times slower at any load, its knee the same.
		seen := drive(l, 400, 1, saturating(10*time.Millisecond, 16))
		require.Contains(t, seen, 1, "throttled down to one request, which measures the new floor")
		require.GreaterOrEqual(t, seen[len(seen)-1], 12, "then back near the knee: %v", seen[300:])
	})

	t.Run("overload cuts by the backoff at once", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 40, Max: 64, Backoff: 0.5})
		l.Observe(Sample{Overload: true, Latency: time.Hour, Elements: 50, InFlight: 40})
		require.Equal(t, 20, l.Limit())
		for range 20 {
			l.Observe(Sample{Overload: true})
		}
		require.Equal(t, 1, l.Limit(), "never below Min")
	})

	t.Run("bulks and single requests are judged each against their own size", func(t *testing.T) {
		t.Parallel()
		// A ledger with a fixed cost per request: a single call takes 20ms,
		// a bulk of 50 takes 100ms, 2ms per element. Mixed, neither is
		// congestion.
		l := newTestLimiter(t, LimiterConfig{Initial: 8, Max: 64})
		for i := range 200 {
			in := l.Limit()
			if i%2 == 0 {
				l.Observe(Sample{Latency: 100 * time.Millisecond, Elements: 50, InFlight: in})
			} else {
				l.Observe(Sample{Latency: 20 * time.Millisecond, Elements: 1, InFlight: in})
			}
		}
		require.Equal(t, 64, l.Limit())
	})

	t.Run("batches are sized to the target latency", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{TargetLatency: time.Second})
		require.Equal(t, firstBatch, l.BatchLimit(MaxBulkSize), "nothing seen yet: a small batch")
		require.Equal(t, 3, l.BatchLimit(3))
		for range 20 {
			l.Observe(Sample{Latency: 50 * 40 * time.Millisecond, Elements: 50, InFlight: 1})
		}
		require.Equal(t, 25, l.BatchLimit(MaxBulkSize), "40ms per element: 25 in a second")
		for range 20 {
			l.Observe(Sample{Latency: 10 * time.Millisecond, Elements: 10, InFlight: 1})
		}
		require.Equal(t, MaxBulkSize, l.BatchLimit(MaxBulkSize))
		require.Equal(t, 1, l.BatchLimit(1))
	})
}

func TestLimiterConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, LimiterConfig{}.Validate())
	err := LimiterConfig{Min: 4, Max: 2, Tolerance: 0.5, Backoff: 1.5, TargetLatency: -time.Second, LatencyFloor: -1}.Validate()
	require.Error(t, err)
	for _, want := range []string{"bounds", "initial", "tolerance", "backoff", "target latency", "latency floor"} {
		require.ErrorContains(t, err, want)
	}
	_, err = NewLimiter(LimiterConfig{Initial: 100, Max: 10})
	require.ErrorContains(t, err, "initial 100")
}
