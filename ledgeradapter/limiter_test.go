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
func drive(l *Limiter, n int, latency func(inFlight int) time.Duration) []int {
	var seen []int
	for range n {
		in := l.Limit()
		l.Observe(Sample{Latency: latency(in), Elements: 1, InFlight: in})
		seen = append(seen, l.Limit())
	}
	return seen
}

func TestLimiter(t *testing.T) {
	t.Parallel()

	t.Run("grows to its ceiling while latency holds", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 4, Max: 64})
		seen := drive(l, 200, saturating(time.Millisecond, 1000))
		require.Equal(t, 64, l.Limit())
		require.IsNonDecreasing(t, seen)
	})

	t.Run("a limit that is not used is not raised", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 8, Max: 64})
		for range 100 {
			l.Observe(Sample{Latency: time.Millisecond, Elements: 1, InFlight: 3})
		}
		require.Equal(t, 8, l.Limit())
	})

	t.Run("holds a saturated ledger near its latency target", func(t *testing.T) {
		t.Parallel()
		// Throughput is flat past 16 in flight and latency grows with the
		// queue: 250ms at 16, the 2.5s target at 160. The limit climbs past
		// the knee, where latency only doubles, and stops near the target.
		l := newTestLimiter(t, LimiterConfig{Initial: 1, Max: 1000})
		seen := drive(l, 1000, saturating(250*time.Millisecond, 16))
		tail := seen[800:]
		for _, v := range tail {
			require.GreaterOrEqual(t, v, 80, "limits of the last 200 samples: %v", tail)
			require.LessOrEqual(t, v, 170, "limits of the last 200 samples: %v", tail)
		}
	})

	t.Run("a slower ledger gets less load", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 32, Max: 64})
		drive(l, 50, saturating(time.Millisecond, 1000))
		before := l.Limit()
		// The same ledger now answers in 5s, twice the target.
		drive(l, 1, func(int) time.Duration { return 5 * time.Second })
		require.Equal(t, before/2, l.Limit())
		drive(l, 1, func(int) time.Duration { return 3 * time.Second })
		require.Equal(t, int(float64(before/2)*2.5/3), l.Limit(), "in proportion to the excess")
	})

	t.Run("the target is at most a quarter of the request's timeout", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 16, Max: 64})
		l.Observe(Sample{Latency: 2 * time.Second, Elements: 10, InFlight: 16, Timeout: 20 * time.Second})
		require.Equal(t, 17, l.Limit(), "2s is within 2.5s")
		l.Observe(Sample{Latency: 2 * time.Second, Elements: 10, InFlight: 16, Timeout: 5 * time.Second})
		require.Equal(t, 10, l.Limit(), "2s is beyond a quarter of 5s: 17 × 1.25 ÷ 2")
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

	t.Run("batches shrink once the limit is at its least, and grow back", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{Initial: 2, Max: 64})
		require.Equal(t, DefaultFirstBatch, l.BatchLimit(MaxBulkSize), "nothing seen yet: a small batch")
		require.Equal(t, 3, l.BatchLimit(3))
		l.Observe(Sample{Latency: time.Second, Elements: 10, InFlight: 2})
		require.Equal(t, MaxBulkSize, l.BatchLimit(MaxBulkSize), "within the target: the most")

		l.Observe(Sample{Latency: 5 * time.Second, Elements: 100, InFlight: 3})
		require.Equal(t, 1, l.Limit())
		require.Equal(t, MaxBulkSize, l.BatchLimit(MaxBulkSize), "the limit gave first")
		l.Observe(Sample{Latency: 5 * time.Second, Elements: 100, InFlight: 1})
		require.Equal(t, 50, l.BatchLimit(MaxBulkSize), "then the batch")
		l.Observe(Sample{Overload: true})
		require.Equal(t, 25, l.BatchLimit(MaxBulkSize))
		for range 100 {
			l.Observe(Sample{Overload: true})
		}
		require.Equal(t, 1, l.BatchLimit(MaxBulkSize), "never below one call")

		l.Observe(Sample{Latency: time.Second, Elements: 1, InFlight: 1})
		require.Equal(t, 11, l.BatchLimit(MaxBulkSize), "a tenth more per request within the target")
		for range 20 {
			l.Observe(Sample{Latency: time.Second, Elements: 1, InFlight: 1})
		}
		require.Equal(t, MaxBulkSize, l.BatchLimit(MaxBulkSize))
	})

	t.Run("expected latency follows the recent ones", func(t *testing.T) {
		t.Parallel()
		l := newTestLimiter(t, LimiterConfig{})
		require.Zero(t, l.Expected())
		l.Observe(Sample{Latency: time.Second, Elements: 1, InFlight: 1})
		require.Equal(t, time.Second, l.Expected())
		for range 30 {
			l.Observe(Sample{Latency: 100 * time.Millisecond, Elements: 1, InFlight: 1})
		}
		require.InDelta(t, 100*time.Millisecond, l.Expected(), float64(time.Millisecond))
		l.Observe(Sample{Overload: true, Latency: time.Hour})
		require.InDelta(t, 100*time.Millisecond, l.Expected(), float64(time.Millisecond), "an overload's latency is not one")
	})
}

func TestLimiterConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, LimiterConfig{}.Validate())
	err := LimiterConfig{Min: 4, Max: 2, Backoff: 1.5, TargetLatency: -time.Second, FirstBatch: -1}.Validate()
	require.Error(t, err)
	for _, want := range []string{"bounds", "initial", "backoff", "target latency", "first batch"} {
		require.ErrorContains(t, err, want)
	}
	_, err = NewLimiter(LimiterConfig{Initial: 100, Max: 10})
	require.ErrorContains(t, err, "initial 100")
}
