package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// TestCountsAreHonest runs the bench end to end with a small workload and
// checks that what it reports adds up: every publish is accounted for, every
// stored command has exactly one outcome, and the report's figures are there.
func TestCountsAreHonest(t *testing.T) {
	t.Parallel()

	const n = 300
	tests := []struct {
		name string
		args []string
	}{
		{"live null", []string{"--mode", "live", "--ledger", "null", "--batch=false"}},
		{"drain embedded with latency", []string{"--mode", "drain", "--ledger", "embedded", "--ledger-latency", "1ms", "--batch=false"}},
		{"live at a rate", []string{"--mode", "live", "--rate", "2000", "--concurrency", "8", "--batch=false"}},
		{"live embedded batched", []string{"--mode", "live", "--ledger", "embedded", "--ledger-latency", "1ms", "--batch", "--concurrency", "64", "--ledger-concurrency", "2"}},
		{"drain null batched", []string{"--mode", "drain", "--batch", "--ledger-latency", "1ms", "--concurrency", "64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			args := append([]string{"--json", "--timeout", "30s", "--commands", "300", "--duplicates", "0.1", "--conflicts", "0.1", "--replays", "0.05"}, tt.args...)
			var out bytes.Buffer
			require.NoError(t, Command(t.Context(), args, &out, t.Output()))

			var res Result
			require.NoError(t, json.Unmarshal(out.Bytes(), &res), out.String())
			const dups, conflicts, replays = 30, 30, 15
			const stored = n - dups
			require.Equal(t, n-dups-conflicts-replays, res.Workload.Fresh)

			w := res.Worker
			require.Equal(t, n, w.Published)
			require.Equal(t, dups, w.Duplicates, "JetStream drops every duplicate")
			require.Equal(t, stored, w.Stored)
			require.Equal(t, stored, w.Outcomes, "one outcome per stored command")
			require.EqualValues(t, stored, res.EventsStored, "one event per stored command in %s", messages.StreamEvents)
			require.Zero(t, res.CommandsLeft, "every command acked")

			require.Equal(t, n-dups-conflicts-replays, res.Outcomes.Created)
			require.Equal(t, replays, res.Outcomes.Replayed)
			require.Equal(t, conflicts, res.Outcomes.AlreadyExists)
			require.Zero(t, res.Outcomes.Other)
			require.EqualValues(t, res.Outcomes.Created, res.WorkerStats.Created)
			require.EqualValues(t, replays, res.WorkerStats.Replayed)
			require.EqualValues(t, conflicts, res.WorkerStats.Rejected)
			require.Zero(t, res.WorkerStats.DeadLettered)

			lr := res.LedgerRequests
			require.Equal(t, lr.GetAccount+lr.AddMetadata, lr.Total)
			require.EqualValues(t, res.Outcomes.Created, lr.AddMetadata, "one write per created balance")
			require.InDelta(t, 2, lr.PerCreate, 0.5)
			require.InDelta(t, 1, lr.PerReplay, 1e-9, "a replay is one read")
			require.GreaterOrEqual(t, lr.PerConflict, 1.0)
			require.GreaterOrEqual(t, lr.ClaimsPerCreate, 1.0)
			if res.Ledger == LedgerEmbedded {
				require.Equal(t, lr.Requests, lr.HTTP)
			} else {
				require.Zero(t, lr.HTTP)
			}
			require.InDelta(t, float64(lr.Requests)/float64(stored), lr.RequestsPerCommand, 1e-9)
			if b := res.Batch; b != nil {
				require.EqualValues(t, lr.GetAccount, b.Reads, "every call at the seam went through the Batchers")
				require.EqualValues(t, lr.AddMetadata, b.Writes)
				require.Equal(t, b.ReadRequests+b.WriteRequests, lr.Requests, "the Batchers' requests are what reached the ledger")
				require.Less(t, lr.Requests, lr.Total, "batching saved requests")
				require.LessOrEqual(t, lr.PeakInFlight, int64(b.LedgerConcurrency))
			} else {
				require.Equal(t, lr.Total, lr.Requests, "one request per call")
				require.LessOrEqual(t, lr.PeakInFlight, int64(res.Concurrency))
			}

			b := res.Baseline
			require.NotNil(t, b)
			require.Equal(t, stored, b.Published)
			require.Zero(t, b.Duplicates)
			require.Equal(t, stored, b.Stored)
			require.Equal(t, stored, b.Outcomes)
			bc := res.BaselineWithClaim
			require.NotNil(t, bc)
			require.Equal(t, stored, bc.Stored)
			require.Equal(t, stored, bc.Outcomes)
			require.Equal(t, uint64(n-dups-conflicts-replays), res.BaselineClaims, "one claim per fresh command")

			for name, v := range map[string]float64{
				"worker.seconds": w.Seconds, "worker.commandsPerSecond": w.CommandsPerSecond,
				"worker.latency.p50": w.Latency.P50, "worker.latency.p90": w.Latency.P90,
				"worker.latency.p99": w.Latency.P99, "worker.latency.max": w.Latency.Max,
				"worker.peakHeap": float64(w.PeakHeapBytes), "worker.peakRSS": float64(w.PeakRSSBytes),
				"baseline.commandsPerSecond": b.CommandsPerSecond, "baseline.latency.p50": b.Latency.P50,
				"baseline.latency.max": b.Latency.Max, "baseline.peakHeap": float64(b.PeakHeapBytes),
				"baseline.peakRSS": float64(b.PeakRSSBytes), "workerToBaseline": res.WorkerToBaseline,
				"baselineWithClaim.commandsPerSecond": bc.CommandsPerSecond, "workerToBaselineWithClaim": res.WorkerToBaselineWithClaim,
				"ledgerRequests.perCommand": lr.PerCommand, "memory.idleHeap": float64(res.Memory.IdleHeapBytes),
				"memory.idleRSS": float64(res.Memory.IdleRSSBytes), "memory.processHWM": float64(res.Memory.ProcessHWMBytes),
			} {
				require.Positive(t, v, name)
			}
			require.LessOrEqual(t, w.Latency.P50, w.Latency.P90)
			require.LessOrEqual(t, w.Latency.P90, w.Latency.P99)
			require.LessOrEqual(t, w.Latency.P99, w.Latency.Max)

			// The JSON has the names the report documents.
			var raw map[string]any
			require.NoError(t, json.Unmarshal(out.Bytes(), &raw))
			for _, k := range []string{"worker", "baseline", "workerToBaseline", "baselineWithClaim", "workerToBaselineWithClaim",
				"baselineClaims", "ledgerRequests", "outcomes", "memory"} {
				require.Contains(t, raw, k)
			}
		})
	}
}

// TestWorkersShareTheConsumer runs two workers on the one durable consumer
// and checks that the counts stay exact: every stored command has exactly one
// outcome whichever worker settled it, conflicts are ALREADY_EXISTS across
// workers, and both workers took a share.
func TestWorkersShareTheConsumer(t *testing.T) {
	t.Parallel()

	const n, dups, conflicts, replays = 400, 40, 40, 20
	const stored = n - dups
	var out bytes.Buffer
	args := []string{"--json", "--timeout", "30s", "--workers", "2", "--concurrency", "4", "--baseline=false",
		"--ledger-latency", "1ms", "--commands", "400", "--duplicates", "0.1", "--conflicts", "0.1", "--replays", "0.05"}
	require.NoError(t, Command(t.Context(), args, &out, t.Output()))

	var res Result
	require.NoError(t, json.Unmarshal(out.Bytes(), &res), out.String())
	require.Equal(t, 2, res.Workers)
	require.Equal(t, stored, res.Worker.Stored)
	require.Equal(t, stored, res.Worker.Outcomes, "one outcome per stored command")
	require.EqualValues(t, stored, res.EventsStored, "one event per stored command in %s", messages.StreamEvents)
	require.Zero(t, res.CommandsLeft, "every command acked")
	require.Equal(t, n-dups-conflicts-replays, res.Outcomes.Created)
	require.Equal(t, replays, res.Outcomes.Replayed)
	require.Equal(t, conflicts, res.Outcomes.AlreadyExists)
	require.Zero(t, res.Outcomes.Other)
	require.EqualValues(t, res.Outcomes.Created, res.LedgerRequests.AddMetadata, "one write per created balance")

	require.Len(t, res.SettledByWorker, 2)
	var sum int64
	for i, s := range res.SettledByWorker {
		require.Positive(t, s, "worker %d settled nothing: the consumer is not shared", i)
		sum += s
	}
	require.EqualValues(t, stored, sum, "the workers' settles add up to the outcomes")
	require.Nil(t, res.Baseline)
}

func TestTable(t *testing.T) {
	t.Parallel()

	var out bytes.Buffer
	require.NoError(t, Command(t.Context(), []string{"--commands", "50", "--concurrency", "4"}, &out, io.Discard))
	for _, want := range []string{"commands/s", "latency p99", "peak RSS*", "worker ÷ baseline", "per create", "embedded NATS server"} {
		require.Contains(t, out.String(), want)
	}
}

func TestWorkload(t *testing.T) {
	t.Parallel()

	w, err := newWorkload(1000, 0.1, 0.2, 0.05, 7)
	require.NoError(t, err)
	require.Equal(t, [4]int{fresh: 650, duplicate: 100, conflict: 200, replay: 50}, w.counts)
	require.Len(t, w.stored, 900)
	require.Len(t, w.byKey, 900, "stored keys are distinct")
	require.Equal(t, fresh, w.items[0].kind)

	balances := map[string]int{} // wallet → index of its first command
	seenKeys := map[string]bool{}
	for i, it := range w.items {
		switch it.kind {
		case fresh, replay:
			require.NotContains(t, balances, it.cmd.WalletID)
			balances[it.cmd.WalletID] = i
		case duplicate:
			require.True(t, seenKeys[it.key], "a duplicate repeats an earlier key")
			orig := w.items[w.byKey[it.key]]
			require.Equal(t, orig.body, it.body)
		case conflict:
			first, ok := balances[it.cmd.WalletID]
			require.True(t, ok, "a conflict targets an earlier balance")
			require.Equal(t, fresh, w.items[first].kind)
			require.False(t, seenKeys[it.key], "with a new key")
		}
		seenKeys[it.key] = true
	}

	again, err := newWorkload(1000, 0.1, 0.2, 0.05, 7)
	require.NoError(t, err)
	require.Equal(t, w.items, again.items, "one seed, one workload")
}

func TestFlags(t *testing.T) {
	t.Parallel()

	ctx := context.Background()
	for _, args := range [][]string{
		{"--mode", "sideways"},
		{"--ledger", "paper"},
		{"--duplicates", "0.5", "--conflicts", "0.5"},
		{"--commands", "-3"},
		{"--workers", "-1"},
		{"--workers", "65"},
		{"--batch", "--batch-max", "101"},
		{"--batch", "--ledger-concurrency", "-1"},
		{"--ledger-url", "ftp://ledger"},
		{"--ledger-url", "http://127.0.0.1:1", "--ledger", "embedded"},
		{"--ledger-url", "http://127.0.0.1:1", "--ledger-latency", "1ms"},
		{"--ledger-url", "http://127.0.0.1:1", "--ledger-name", "not a name"},
		{"--ledger-url", "http://127.0.0.1:1", "--single-in-flight", "-1"},
		{"--ledger-url", "http://127.0.0.1:1", "--baseline-timeout", "-1s"},
		{"--ledger", "url"},
		{"--order", "random"},
		{"extra"},
	} {
		err := Command(ctx, args, io.Discard, io.Discard)
		require.ErrorIs(t, err, ErrUsage, "%v", args)
	}
	require.ErrorIs(t, Command(ctx, []string{"--help"}, io.Discard, io.Discard), flag.ErrHelp)
	require.False(t, errors.Is(flag.ErrHelp, ErrUsage))
}

// TestDefaultsFollowRun checks that a bench without ledger flags measures the
// stack `run` builds without them: batched or not as run's --ledger-batch,
// at run's --concurrency for that choice.
func TestDefaultsFollowRun(t *testing.T) {
	t.Parallel()

	var out bytes.Buffer
	require.NoError(t, Command(t.Context(), []string{"--json", "--commands", "40", "--baseline=false", "--timeout", "30s"}, &out, t.Output()))
	var res Result
	require.NoError(t, json.Unmarshal(out.Bytes(), &res), out.String())
	require.Equal(t, ledgeradapter.DefaultBatching, res.Batch != nil, "batched as run is by default")
	if ledgeradapter.DefaultBatching {
		require.Equal(t, ledgeradapter.DefaultInProcessConcurrency, res.Concurrency, "the null ledger is in process")
		require.Equal(t, ledgeradapter.DefaultBatchInFlight, res.Batch.LedgerConcurrency)
		require.Positive(t, res.Batch.WriteLimit, "the adaptive limits are reported")
		require.Positive(t, res.Batch.ReadLimit)
	} else {
		require.Equal(t, worker.Config{}.WithDefaults().Concurrency, res.Concurrency)
	}

	// A null ledger with a latency stands for a remote one.
	out.Reset()
	require.NoError(t, Command(t.Context(), []string{"--json", "--commands", "40", "--baseline=false", "--timeout", "30s", "--ledger-latency", "1ms"}, &out, t.Output()))
	res = Result{}
	require.NoError(t, json.Unmarshal(out.Bytes(), &res), out.String())
	if ledgeradapter.DefaultBatching {
		require.Equal(t, ledgeradapter.DefaultBatchingConcurrency, res.Concurrency)
	}
}

func TestTransactionsWorkload(t *testing.T) {
	t.Parallel()
	var out, log bytes.Buffer
	err := Command(context.Background(), []string{"--workload", "transactions", "--commands", "60", "--bulk-size", "20", "--concurrency", "32", "--json"}, &out, &log)
	require.NoError(t, err, log.String())
	var res TxResult
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	require.Len(t, res.Phases, 4)
	for _, p := range res.Phases {
		require.EqualValues(t, 60, p.OK, "%s: %s", p.Name, p.FirstError)
		require.EqualValues(t, 60, p.Committed, "%s: the ledger holds every credit", p.Name)
		require.Zero(t, p.Failed, p.Name)
		require.Positive(t, p.PerSec, p.Name)
	}
	require.Error(t, Command(context.Background(), []string{"--workload=transactions", "--ledger", "null"}, &out, &log), "the null ledger has no transactions")
	require.Error(t, Command(context.Background(), []string{"--workload", "nope"}, &out, &log))
}

// TestOrderWorkload: a small order run applies every credit in each phase,
// on the embedded ledger, and the hot wallet's commands wait for one
// another (they are ordered) while the spread ones run.
func TestOrderWorkload(t *testing.T) {
	res, err := RunOrder(context.Background(), OrderConfig{LedgerName: "bench-order-test", Commands: 200, Wallets: 50,
		HotCommands: 40, Workers: 2, Concurrency: 8, TxConcurrency: 8, Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.Len(t, res.Phases, 5)
	for _, p := range res.Phases {
		require.Equal(t, p.Commands, p.Applied, "%s: every credit applied", p.Name)
		require.Zero(t, p.Rejected, p.Name)
	}
	require.Positive(t, res.Phases[2].Waits, "hot-ordered: no command waited for its wallet's line")
	require.Positive(t, res.SpreadRatio)
}

// TestMixedWorkload: a small mixed run applies every command of every kind
// through the worker (two workers, ordered by default) and through the
// handlers called directly, on the embedded ledger; and the command prints
// the table with its ratio.
func TestMixedWorkload(t *testing.T) {
	res, err := RunMixed(context.Background(), MixedConfig{LedgerName: "bench-mixed-test", Wallets: 30, Workers: 2,
		Concurrency: 16, TxConcurrency: 8, Batch: true, Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.Len(t, res.Phases, 2)
	for _, p := range res.Phases {
		require.Equal(t, 30*9, p.Commands, p.Name)
		require.Equal(t, p.Commands, p.Applied, "%s: every command applied, none rejected (%v)", p.Name, p.Rejected)
		require.Positive(t, p.PerSec, p.Name)
	}
	require.Positive(t, res.WorkerToDirect)

	var out, log bytes.Buffer
	require.NoError(t, Command(context.Background(), []string{"--workload", "mixed", "--wallets", "5", "--concurrency", "8"}, &out, &log), log.String())
	require.Contains(t, out.String(), "worker ÷ handlers called directly")
}

// TestUserWorkload: `run` started as its own process, on its defaults,
// creates every balance this process publishes to it, reports its peak RSS,
// and the raw JetStream loop runs on its server; the command prints the
// ratio.
func TestUserWorkload(t *testing.T) {
	bin, err := testutil.BuildWorker(t.TempDir(), false)
	require.NoError(t, err)
	res, err := RunUser(context.Background(), UserConfig{Binary: bin, Commands: 500, InFlight: 64})
	require.NoError(t, err)
	require.Equal(t, 500, res.Run.Created, "every balance created: %+v", res.Run)
	require.Zero(t, res.Run.Replayed)
	require.Zero(t, res.Run.Rejected)
	require.Zero(t, res.Run.LedgerNoAnswer, "the embedded ledger answers every request")
	require.Positive(t, res.Run.PerSec)
	require.Positive(t, res.Run.PeakRSSMiB, "the run process's peak RSS")
	sum := 0
	for _, n := range res.Run.PerSecond {
		sum += n
	}
	require.Equal(t, 500, sum, "outcomes per second add up: %v", res.Run.PerSecond)
	require.Positive(t, res.RawJetStream)
	require.InDelta(t, res.Run.PerSec/res.RawJetStream, res.ToRaw, 1e-9)
	require.Positive(t, res.RawJetStreamWithClaim)
	require.InDelta(t, res.Run.PerSec/res.RawJetStreamWithClaim, res.ToRawWithClaim, 1e-9)
	require.Empty(t, res.Baselines, "no ledger baselines without --ledger-url")

	var out, log bytes.Buffer
	require.NoError(t, Command(context.Background(), []string{"--workload", "user", "--binary", bin, "--commands", "200"}, &out, &log), log.String())
	require.Contains(t, out.String(), "run ÷ raw JetStream")
	require.Contains(t, out.String(), "run ÷ raw JetStream with a claim per message")

	// --runs: every run, each with its own run process, and their spread.
	out.Reset()
	require.NoError(t, Command(context.Background(), []string{"--workload", "user", "--binary", bin, "--commands", "100", "--runs", "2", "--json"}, &out, &log), log.String())
	var runs UserRuns
	require.NoError(t, json.Unmarshal(out.Bytes(), &runs), out.String())
	require.Len(t, runs.Runs, 2)
	for _, r := range runs.Runs {
		require.Equal(t, 100, r.Run.Created, "every balance of every run created: %+v", r.Run)
		require.Positive(t, r.ToRaw)
	}
	require.Equal(t, summarize(runs.Runs), runs.Summary)
	require.Equal(t, 2, runs.Summary.Runs)
	require.Equal(t, min(runs.Runs[0].ToRaw, runs.Runs[1].ToRaw), runs.Summary.ToRaw.Min)
	require.Equal(t, max(runs.Runs[0].ToRaw, runs.Runs[1].ToRaw), runs.Summary.ToRaw.Max)
	require.ErrorIs(t, Command(context.Background(), []string{"--workload", "user", "--runs", "0"}, &out, &log), ErrUsage)
}

// The summary of several user runs: the least, the median and the most of
// each figure, and the sums of what a healthy run has none of.
func TestSummarizeUserRuns(t *testing.T) {
	run := func(perSec, toRaw, toBest float64, first, replayed int, timeouts int64) UserResult {
		var r UserResult
		r.Run.PerSec, r.ToRaw, r.ToRawWithClaim, r.ToBestWrite, r.ToReadThenWrite = perSec, toRaw, toRaw+0.1, toBest, 2*toBest
		r.Run.PerSecond, r.Run.Replayed, r.Run.PeakRSSMiB = []int{first, 300}, replayed, perSec/10
		r.Baselines = []LedgerBaseline{{Name: "bulk", Timeouts: timeouts}}
		return r
	}
	s := summarize([]UserResult{run(300, 0.3, 0.8, 100, 0, 0), run(400, 0.2, 0.95, 250, 1, 2), run(350, 0.4, 0.9, 200, 0, 1), run(380, 0.25, 0.85, 150, 2, 0)})
	require.Equal(t, 4, s.Runs)
	require.Equal(t, Spread{Min: 300, Median: 365, Max: 400}, s.PerSecond)
	require.InDelta(t, 0.2, s.ToRaw.Min, 1e-9)
	require.InDelta(t, 0.275, s.ToRaw.Median, 1e-9)
	require.InDelta(t, 0.4, s.ToRaw.Max, 1e-9)
	require.InDelta(t, 0.5, s.ToRawWithClaim.Max, 1e-9)
	require.InDelta(t, 0.8, s.ToBestWrite.Min, 1e-9)
	require.InDelta(t, 0.875, s.ToBestWrite.Median, 1e-9)
	require.InDelta(t, 1.9, s.ToReadThenWrite.Max, 1e-9)
	require.Equal(t, Spread{Min: 100, Median: 175, Max: 250}, s.FirstSecond)
	require.Equal(t, Spread{Min: 30, Median: 36.5, Max: 40}, s.PeakRSSMiB)
	require.Equal(t, 3, s.Replayed)
	require.Equal(t, int64(3), s.BaselineTimeouts)
	// Odd: the middle one. Without baselines: no ledger ratios.
	one := run(500, 0.3, 0, 10, 0, 0)
	one.Baselines = nil
	s = summarize([]UserResult{run(300, 0.3, 0.8, 100, 0, 0), one, run(200, 0.1, 0.7, 50, 0, 0)})
	require.Equal(t, Spread{Min: 200, Median: 300, Max: 500}, s.PerSecond)
	require.Equal(t, Spread{Min: 0.7, Median: 0.75, Max: 0.8}, s.ToBestWrite)
	require.Equal(t, Spread{}, summarize(nil).PerSecond)
}

// The user workload reads the run's ledger requests without an answer and
// its retries from its metrics, whatever their other labels.
func TestRunCounters(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `# HELP wallets_worker_ledger_requests_total Ledger requests.
# TYPE wallets_worker_ledger_requests_total counter
wallets_worker_ledger_requests_total{endpoint="Bulk",status="0"} 2
wallets_worker_ledger_requests_total{endpoint="Bulk",status="200"} 40
wallets_worker_ledger_requests_total{endpoint="ListAccounts",status="0"} 1
wallets_worker_retries_total{reason="transient"} 3
wallets_worker_retries_total{reason="order"} 4
wallets_worker_redeliveries_total 9
`)
	}))
	defer srv.Close()
	var res UserResult
	require.NoError(t, runCounters(context.Background(), srv.URL, &res))
	require.Equal(t, 3, res.Run.LedgerNoAnswer)
	require.Equal(t, 7, res.Run.Retries)
	require.Error(t, runCounters(context.Background(), srv.URL+"/nowhere\x7f", &res))
}

// The measured run gets this process's environment but for what would take
// it off its defaults unseen.
func TestRunEnvLeavesOutSettings(t *testing.T) {
	t.Parallel()
	got := runEnv([]string{"PATH=/bin", "WALLETS_WORKER_LEDGER_NAME=other", "GOMEMLIMIT=1GiB", "GOGC=off", "HOME=/root", "WALLETS_NATS_WORKER_PASSWORD=x"})
	require.Equal(t, []string{"PATH=/bin", "HOME=/root", "WALLETS_NATS_WORKER_PASSWORD=x"}, got)
}
