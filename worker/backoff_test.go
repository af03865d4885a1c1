package worker

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// nominal is the delay before delivery n+1 without jitter:
// Initial*Multiplier^(n-1), capped at Max.
func nominal(b Backoff, n uint64) time.Duration {
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(max(n, 1)-1))
	return time.Duration(min(d, float64(b.Max)))
}

func TestBackoffDelay(t *testing.T) {
	t.Parallel()
	for name, b := range map[string]Backoff{
		"defaults": Config{}.WithDefaults().Backoff,
		"tests":    testConfig().WithDefaults().Backoff,
		"gentle":   {Initial: 250 * time.Millisecond, Max: 45 * time.Second, Multiplier: 1.5, Jitter: 0.1},
		"steep":    {Initial: time.Second, Max: 24 * time.Hour, Multiplier: 10, Jitter: 0.5},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			inBounds := func(n uint64) time.Duration {
				t.Helper()
				want := nominal(b, n)
				got := b.Delay(n)
				// One nanosecond of slack for the float arithmetic.
				lo := time.Duration(float64(want)*(1-b.Jitter)) - 1
				hi := time.Duration(float64(want)*(1+b.Jitter)) + 1
				require.True(t, got >= lo && got <= hi, "Delay(%d) = %s, want %s ± %.0f%%", n, got, want, 100*b.Jitter)
				return got
			}
			for n := uint64(1); n <= 30; n++ {
				seen := map[time.Duration]bool{}
				for range 50 {
					seen[inBounds(n)] = true
				}
				require.Greater(t, len(seen), 1, "Delay(%d) has no jitter", n)
			}
			for _, n := range []uint64{0, 64, 65, 1000, 1 << 40, math.MaxUint64} {
				got := inBounds(n)
				require.Positive(t, got)
			}
			require.Equal(t, b.Max, nominal(b, math.MaxUint64), "huge counts are capped")
		})
	}
}

func TestBackoffBudget(t *testing.T) {
	t.Parallel()
	b := Backoff{Initial: time.Second, Max: 4 * time.Second, Multiplier: 2}
	require.Zero(t, b.Budget(1))
	require.Equal(t, time.Second, b.Budget(2))
	require.Equal(t, (1+2+4+4)*time.Second, b.Budget(5))

	// The outage requirement: with the defaults a command keeps being
	// retried for at least 5 minutes, even if every delay drew the lowest
	// jitter.
	def := Config{}.WithDefaults()
	require.Equal(t, def.Backoff.Budget(def.MaxDeliver), Config{}.RetryBudget())
	worst := time.Duration(float64(Config{}.RetryBudget()) * (1 - def.Backoff.Jitter))
	require.GreaterOrEqual(t, worst, 5*time.Minute)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, Config{}.Validate())
	require.NoError(t, testConfig().Validate())

	err := Config{
		AckWait:         500 * time.Millisecond,
		HandlerTimeout:  600 * time.Millisecond,
		Concurrency:     10,
		MaxAckPending:   5,
		DuplicateWindow: 500 * time.Millisecond,
		StreamReplicas:  6,
		Backoff:         Backoff{Initial: 2 * time.Second, Max: time.Second, Jitter: 1.5},
	}.Validate()
	require.Error(t, err)
	for _, want := range []string{
		"handler timeout 600ms must be shorter than ack wait 500ms",
		"ack wait 500ms is under 1s",
		"max ack pending 5 is below concurrency 10",
		"duplicate window 500ms is under 1s",
		"stream replicas 6",
		"backoff jitter must be below 1",
		"backoff max 1s is below its initial 2s",
	} {
		require.Contains(t, err.Error(), want)
	}
}

func TestClaimTTLMustCoverTheAckWait(t *testing.T) {
	t.Parallel()
	err := Config{AckWait: 30 * time.Second, ClaimTTL: 5 * time.Second}.Validate()
	require.ErrorContains(t, err, "claim TTL 5s is shorter than ack wait 30s")
	require.NoError(t, Config{AckWait: 30 * time.Second, ClaimTTL: 30 * time.Second}.Validate())
	require.Equal(t, 30*time.Second, Config{}.WithDefaults().ClaimTTL)
}
