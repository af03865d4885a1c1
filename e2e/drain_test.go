//go:build unix

package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDrain: SIGTERM during load drains within --drain-timeout and exits 0;
// a second signal stops at once. After a restart nothing is lost or doubled.
func TestDrain(t *testing.T) {
	t.Run("SIGTERM", testDrainSIGTERM)
	t.Run("SecondSignal", testDrainSecondSignal)
}

func testDrainSIGTERM(t *testing.T) {
	const (
		n      = 400
		budget = 5 * time.Second
		// margin covers process exit and the race detector's slowness; a
		// drain that waits for anything beyond the commands in flight
		// (slowed to ~40ms each) overshoots it.
		margin = 3 * time.Second
	)
	started := time.Now()
	natsURL := startNATS(t)
	// Every ledger request takes 20ms more, so that commands are in flight
	// when the signal comes (not while the test reads the ledger at the end).
	var slow atomic.Bool
	slow.Store(true)
	ledger := startLedger(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if slow.Load() {
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	args := []string{
		"--nats-url", natsURL, "--ledger-url", ledger.URL, "--data-dir", t.TempDir(),
		"--concurrency", "16", "--ack-wait", "30s", "--drain-timeout", budget.String(),
	}
	first := startWorker(t, "first", args...)
	_, js := connectNATS(t, natsURL)
	col := startCollector(t, js, nil)
	pub := newPublisher(js)
	balances := simpleBalances("drain", n, 80)
	for _, b := range balances {
		require.NoError(t, pub.publish(b.Winner))
	}
	eventually(t, *waitFlag, "the worker busy", func() (bool, string) {
		n := col.settled()
		return n >= 40, fmt.Sprintf("%d outcomes", n)
	})

	signalled := time.Now()
	first.signal(t, syscall.SIGTERM)
	code := first.waitExit(t, budget+time.Minute)
	elapsed := time.Since(signalled)
	require.Equal(t, 0, code, "exit status after SIGTERM")
	require.Less(t, elapsed, budget+margin, "drain took longer than --drain-timeout %s", budget)
	require.True(t, first.logs.Contains("draining"), "the worker did not log its drain")

	s, err := readState(js)
	require.NoError(t, err)
	require.NotZero(t, s.commands, "the load was over before SIGTERM: nothing was drained")
	before := col.settled()

	// Nothing may stay leased to the stopped process: what it did not
	// finish it handed back, so the restart settles everything well before
	// the 30s ack wait. (NumAckPending cannot tell: JetStream keeps a
	// NAKed message pending until it is delivered again.)
	second := startWorker(t, "second", args...)
	waitSettled(t, 15*time.Second, js, pub, col, nil, aliveCheck(func() *workerProcess { return second }))
	f := verifyOutcomes(t, pub, col.events(), balances)
	slow.Store(false)
	logs := verifyLedger(t, ledger.Client, balances)
	second.stop(t)
	printFigures(t, fmt.Sprintf("drain: stored=%d before_stop=%d drain=%s budget=%s outcomes=%d lost=%d doubled=%d replayed=%d ledger_logs=%d elapsed=%s",
		f.stored, before, elapsed.Round(time.Millisecond), budget, f.outcomes, f.lost, f.doubled, f.replayed, logs, time.Since(started).Round(100*time.Millisecond)))
}

// holdWrites applies every metadata write it lets through but holds its
// answer until release is closed or the client gives up: the worker's
// commands hang in flight with their ledger write already made.
type holdWrites struct {
	release     chan struct{}
	releaseOnce sync.Once
	held        atomic.Int64
}

func (h *holdWrites) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/metadata") {
			next.ServeHTTP(w, r)
			return
		}
		select {
		case <-h.release:
			next.ServeHTTP(w, r)
			return
		default:
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		h.held.Add(1)
		select {
		case <-h.release:
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
		case <-r.Context().Done():
		}
	})
}

func (h *holdWrites) open() { h.releaseOnce.Do(func() { close(h.release) }) }

func testDrainSecondSignal(t *testing.T) {
	const (
		n           = 100
		concurrency = 8
		// A single SIGTERM would wait for the held commands: until the
		// ledger timeout (30s) fails them, within the drain budget (60s).
		// The second signal must not.
		prompt = 5 * time.Second
	)
	started := time.Now()
	natsURL := startNATS(t)
	hold := &holdWrites{release: make(chan struct{})}
	ledger := startLedger(t, hold.wrap)
	t.Cleanup(hold.open) // before the ledger's server closes (cleanups run last in, first out)
	args := []string{
		"--nats-url", natsURL, "--ledger-url", ledger.URL, "--data-dir", t.TempDir(),
		"--concurrency", fmt.Sprint(concurrency), "--ack-wait", "60s", "--ledger-timeout", "30s", "--drain-timeout", "60s",
		// One single write per command, so that holding the writes holds
		// every handler slot (a bulk would carry several).
		"--ledger-batch=false",
	}
	first := startWorker(t, "first", args...)
	_, js := connectNATS(t, natsURL)
	col := startCollector(t, js, nil)
	pub := newPublisher(js)
	balances := simpleBalances("abort", n, 20)
	for _, b := range balances {
		require.NoError(t, pub.publish(b.Winner))
	}
	eventually(t, *waitFlag, "every handler slot held by the ledger", func() (bool, string) {
		h := hold.held.Load()
		return h >= concurrency, fmt.Sprintf("%d writes held", h)
	})

	signalled := time.Now()
	first.signal(t, syscall.SIGTERM)
	eventually(t, 10*time.Second, "the first signal seen", func() (bool, string) {
		return first.logs.Contains("signal received"), "no \"signal received\" log line"
	})
	first.signal(t, syscall.SIGTERM)
	code := first.waitExit(t, time.Minute)
	elapsed := time.Since(signalled)
	require.Equal(t, 0, code, "exit status after two SIGTERMs")
	require.Less(t, elapsed, prompt, "a second signal must stop at once, not wait for the commands in flight")

	held := int(hold.held.Load())
	require.Zero(t, col.settled(), "no held command can have settled")

	hold.open()
	// The aborted commands were handed back, not left leased for the 60s
	// ack wait: the restart settles everything well before it.
	second := startWorker(t, "second", args...)
	waitSettled(t, 30*time.Second, js, pub, col, nil, aliveCheck(func() *workerProcess { return second }))
	f := verifyOutcomes(t, pub, col.events(), balances)
	logs := verifyLedger(t, ledger.Client, balances)
	// The held writes were made before the abort: their commands come back
	// as replays, not as second writes.
	require.Equal(t, held, f.replayed, "replayed outcomes: one per write made before the abort")
	second.stop(t)
	printFigures(t, fmt.Sprintf("drain-second-signal: stored=%d held=%d stop=%s outcomes=%d lost=%d doubled=%d replayed=%d ledger_logs=%d elapsed=%s",
		f.stored, held, elapsed.Round(time.Millisecond), f.outcomes, f.lost, f.doubled, f.replayed, logs, time.Since(started).Round(100*time.Millisecond)))
}
