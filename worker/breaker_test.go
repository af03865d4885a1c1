package worker

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// switchableLedger answers 503 to every request while down, and counts them.
type switchableLedger struct {
	down        atomic.Bool
	whileDown   atomic.Int64
	healthWhile atomic.Int64
}

func (s *switchableLedger) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.down.Load() {
			s.whileDown.Add(1)
			if strings.HasSuffix(r.URL.Path, "/_healthcheck") {
				s.healthWhile.Add(1)
			}
			ledgerError(w, http.StatusServiceUnavailable, "INTERNAL", "storage unavailable")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func breakerMetrics(t *testing.T) *Metrics {
	t.Helper()
	return NewMetrics(prometheus.NewRegistry())
}

// While the ledger is down the worker holds its commands (no retry budget
// spent, nothing dead-lettered), sends it only probes, says so once, and
// settles everything at once when it is back.
func TestBreakerHoldsCommandsWhileLedgerDown(t *testing.T) {
	t.Parallel()
	const n = 20
	ledger := &switchableLedger{}
	m := breakerMetrics(t)
	logs := &testutil.SyncBuffer{}
	b := setup(t,
		withConfig(func(c *Config) {
			c.MaxDeliver = 2 // without the breaker, dead letters within a second
			c.Metrics = m
		}),
		withBreaker(Breaker{Threshold: 1, ProbeInterval: 20 * time.Millisecond, ProbeMaxInterval: 200 * time.Millisecond}),
		withLedgerMiddleware(ledger.middleware),
		withLog(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))))

	ledger.down.Store(true)
	for i := range n {
		b.publish(t, cmd(fmt.Sprintf("w%d", i), fmt.Sprintf("k%d", i), body(fmt.Sprintf("w%d", i), "savings")))
	}
	// Every slot holds a command, and the ledger has been probed for longer
	// than the retry budget lasts.
	require.Eventually(t, func() bool {
		l := b.worker.Ledger()
		return !l.Available && l.Held == b.cfg.Concurrency &&
			promtest.ToFloat64(m.probes.WithLabelValues(probeFailed)) >= 8
	}, waitFor, tick)
	require.Empty(t, b.events.all(), "no outcome while the ledger is down")
	require.Empty(t, b.dlq.all())
	require.Equal(t, float64(breakerOpen), promtest.ToFloat64(m.breaker))
	require.Equal(t, float64(b.cfg.Concurrency), promtest.ToFloat64(m.held))
	ci := b.consumerInfo(t)
	// No pulling while open: what fills the slots and the queue, and the
	// commands retried on their own before the breaker opened.
	require.LessOrEqual(t, ci.Delivered.Consumer, uint64(2*b.cfg.Concurrency+b.cfg.Breaker.Threshold-1))
	l := b.worker.Ledger()
	require.Contains(t, l.Error, "503")
	require.False(t, l.Since.IsZero())
	// The failures that opened it, then only probes.
	probes := ledger.healthWhile.Load()
	require.LessOrEqual(t, ledger.whileDown.Load()-probes, int64(2*b.cfg.Concurrency))

	ledger.down.Store(false)
	b.settled(t)
	evs := b.events.wait(t, n)
	require.Len(t, evs, n)
	for _, ev := range evs {
		require.True(t, strings.HasPrefix(ev.Subject, createdPrefix), ev.Subject)
	}
	require.Empty(t, b.dlq.all(), "an outage longer than the retry budget dead-letters nothing")
	require.Equal(t, n, b.setMetadataLogs(t))
	require.True(t, b.worker.Ledger().Available)
	require.Zero(t, promtest.ToFloat64(m.breaker))
	require.Zero(t, promtest.ToFloat64(m.held))
	require.Equal(t, 1.0, promtest.ToFloat64(m.transitions.WithLabelValues("open")))
	require.Equal(t, 1.0, promtest.ToFloat64(m.transitions.WithLabelValues("closed")))
	require.Positive(t, b.worker.Stats().Held.Load())

	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "level=WARN"), out)
	require.Equal(t, 1, strings.Count(out, "ledger unavailable"), out)
	require.Equal(t, 1, strings.Count(out, "ledger available again"), out)
	require.Contains(t, out, "commands_held=")

	// A short second outage right after the first (a ledger struggling
	// under load) is held the same way, but not logged at INFO or WARN.
	ledger.down.Store(true)
	b.publish(t, cmd("again", "again", body("again", "savings")))
	require.Eventually(t, func() bool {
		return promtest.ToFloat64(m.transitions.WithLabelValues("open")) == 2
	}, waitFor, tick)
	ledger.down.Store(false)
	b.settled(t)
	require.Len(t, b.events.wait(t, n+1), n+1)
	require.Equal(t, 2.0, promtest.ToFloat64(m.transitions.WithLabelValues("closed")))
	require.Equal(t, out, logs.String(), "nothing more logged")
}

// Permanent answers (4xx) are the ledger at work: any number of them in a row
// leave the breaker closed, whether the command ends at once (a write refused
// with VALIDATION: LEDGER_REJECTED) or is retried within its budget (the
// ledger not found: it may be created meanwhile).
func TestBreakerIgnoresPermanentErrors(t *testing.T) {
	t.Parallel()
	m := breakerMetrics(t)
	b := setup(t,
		withConfig(func(c *Config) {
			c.MaxDeliver = 3
			c.Metrics = m
		}),
		withBreaker(Breaker{Threshold: 2, ProbeInterval: 20 * time.Millisecond}),
		withLedgerMiddleware(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case isMetadataWrite(r) && strings.Contains(r.URL.Path, ":refused"):
					ledgerError(w, http.StatusBadRequest, "VALIDATION", "refused for this command")
				case isMetadataWrite(r) && strings.Contains(r.URL.Path, ":gone"):
					ledgerError(w, http.StatusNotFound, "LEDGER_NOT_FOUND", "ledger not found")
				default:
					next.ServeHTTP(w, r)
				}
			})
		}))
	const each = 3
	for i := range each {
		b.publish(t, cmd(fmt.Sprintf("refused%d", i), fmt.Sprintf("refused-%d", i), body(fmt.Sprintf("refused%d", i), "savings")))
		b.publish(t, cmd(fmt.Sprintf("gone%d", i), fmt.Sprintf("gone-%d", i), body(fmt.Sprintf("gone%d", i), "savings")))
	}
	b.publish(t, cmd("good", "good", body("good", "savings")))
	b.settled(t)

	codes := map[string]int{}
	for _, ev := range b.events.all() {
		if strings.HasPrefix(ev.Subject, createdPrefix) {
			codes["created"]++
		} else {
			codes[ev.json(t)["code"].(string)]++
		}
	}
	require.Equal(t, map[string]int{
		"created":                             1,
		string(messages.CodeLedgerRejected):   each,
		string(messages.CodeRetriesExhausted): each,
	}, codes)
	require.Len(t, b.dlq.all(), 2*each)
	require.Zero(t, b.worker.Stats().Held.Load(), "nothing held")
	require.Zero(t, promtest.ToFloat64(m.transitions.WithLabelValues("open")), "never opened")
	require.True(t, b.worker.Ledger().Available)
}

// One command the ledger always fails opens the breaker when it is alone,
// but cannot keep it open: the probes pass, the command fails its trials and
// goes back to its own retries, and the commands behind it are created.
func TestPoisonedCommandDoesNotStopTheOthers(t *testing.T) {
	t.Parallel()
	m := breakerMetrics(t)
	b := setup(t,
		withConfig(func(c *Config) {
			c.MaxDeliver = 12
			c.Metrics = m
		}),
		withBreaker(Breaker{Threshold: 3, ProbeInterval: 20 * time.Millisecond, ProbeMaxInterval: 100 * time.Millisecond}),
		withLedgerMiddleware(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, ":poison:") {
					ledgerError(w, http.StatusInternalServerError, "INTERNAL", "poisoned")
					return
				}
				next.ServeHTTP(w, r)
			})
		}))
	b.publish(t, cmd("poison", "poison", body("poison", "savings")))
	require.Eventually(t, func() bool {
		return promtest.ToFloat64(m.transitions.WithLabelValues("open")) >= 1
	}, waitFor, tick, "alone, the poisoned command opens the breaker")

	const good = 10
	for i := range good {
		b.publish(t, cmd(fmt.Sprintf("w%d", i), fmt.Sprintf("k%d", i), body(fmt.Sprintf("w%d", i), "savings")))
	}
	b.settled(t)
	created := 0
	for _, ev := range b.events.all() {
		if strings.HasPrefix(ev.Subject, createdPrefix) {
			created++
		}
	}
	require.Equal(t, good, created, "the others are created")
	dl := single(t, b.dlq.all())
	require.Equal(t, "poison", dl.Header.Get(messages.HeaderMsgID))
	require.Equal(t, string(messages.CodeRetriesExhausted), dl.Header.Get(messages.HeaderDLQCode))
	// The poisoned command's last trial may have reopened the breaker; with
	// nothing held, the next passing probe closes it.
	require.Eventually(t, func() bool { return b.worker.Ledger().Available }, waitFor, tick,
		"the breaker closes once the poisoned command is gone")
}

// A trial that panics (its kind failing on an answer of a ledger still
// recovering, say) reopens the breaker, whose prober lets another trial
// through: the commands held behind it are not held for good.
func TestTrialThatPanicsDoesNotHoldTheOthers(t *testing.T) {
	t.Parallel()
	ledger := &switchableLedger{}
	var panicked atomic.Bool
	b := setup(t,
		withBreaker(Breaker{Threshold: 1, ProbeInterval: 20 * time.Millisecond, ProbeMaxInterval: 100 * time.Millisecond}),
		withLedgerMiddleware(ledger.middleware),
		withHandler(func(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
			return handlerFunc(func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
				if !ledger.down.Load() && panicked.CompareAndSwap(false, true) {
					panic("the first trial after the outage")
				}
				return h.Handle(ctx, key, cmd)
			})
		}))
	ledger.down.Store(true)
	const n = 3
	for i := range n {
		b.publish(t, cmd(fmt.Sprintf("w%d", i), fmt.Sprintf("k%d", i), body(fmt.Sprintf("w%d", i), "savings")))
	}
	require.Eventually(t, func() bool { return b.worker.Ledger().Held == n }, waitFor, tick, "every command held")
	ledger.down.Store(false)
	require.Eventually(t, func() bool { return len(b.events.all()) == n }, waitFor, tick,
		"every command settled after the trial panicked: %+v", b.worker.Ledger())
	require.True(t, panicked.Load())
	require.EqualValues(t, 1, b.worker.Stats().Panics.Load())
	for _, ev := range b.events.all() {
		require.True(t, strings.HasPrefix(ev.Subject, createdPrefix), ev.Subject)
	}
}
