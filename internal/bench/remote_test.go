package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// TestLedgerURL runs the bench against a ledger reached only by its URL (the
// embedded ledger behind a real HTTP server, standing in for a Formance
// ledger) and checks the counts: every new balance created once by the
// worker and once by each baseline, in a ledger of the run's own, what the
// ledger holds afterwards, and the requests each side reports.
func TestLedgerURL(t *testing.T) {
	t.Parallel()

	srv := testutil.StartLedger(t, testutil.LedgerOptions{})
	client := srv.Client

	run := func(t *testing.T, extra ...string) Result {
		t.Helper()
		args := append([]string{"--json", "--timeout", "60s", "--ledger-url", srv.URL, "--concurrency", "8", "--baseline=false"}, extra...)
		var out bytes.Buffer
		require.NoError(t, Command(t.Context(), args, &out, t.Output()))
		var res Result
		require.NoError(t, json.Unmarshal(out.Bytes(), &res), out.String())
		return res
	}
	// check verifies a run of n new balances among stored commands.
	check := func(t *testing.T, res Result, n, stored int) {
		t.Helper()
		require.Equal(t, LedgerURL, res.Ledger)
		require.Equal(t, n, res.Workload.Fresh)
		require.Equal(t, stored, res.Worker.Outcomes, "one outcome per stored command")
		require.Equal(t, n, res.Outcomes.Created)
		require.Zero(t, res.Outcomes.Other)
		require.Zero(t, res.CommandsLeft, "every command acked")

		u := res.AtURL
		require.NotNil(t, u)
		require.Zero(t, u.NewBalancesReplayed)
		require.InDelta(t, ms(ledgeradapter.DefaultTimeout), u.ClientTimeoutMs, 1e-9)
		require.InDelta(t, ms(DefaultBaselineTimeout), u.BaselineTimeoutMs, 1e-9)
		require.Zero(t, u.Timeouts)
		require.Positive(t, u.CreatesPerSecond)
		var answered int64
		for status, c := range u.Statuses {
			require.NotEqual(t, "0", status, "every request of the worker was answered")
			answered += c
		}
		require.Equal(t, u.Requests, answered, "each request has its status")
		require.Equal(t, u.Requests, res.LedgerRequests.HTTP)
		require.Equal(t, u.Requests, res.LedgerRequests.Requests)
		require.GreaterOrEqual(t, u.Requests, int64(1+(n-1)/ledgeradapter.MaxBulkSize), "at least one write request per bulk's worth")
		require.InDelta(t, float64(u.Requests)/float64(n), u.RequestsPerCreate, 1e-9)
		require.Positive(t, u.PeakInFlight)

		s, rtw, b := u.Single, u.ReadThenWrite, u.Bulk
		require.NotNil(t, s)
		require.NotNil(t, rtw)
		require.NotNil(t, b)
		for _, bl := range []*LedgerBaseline{s, rtw, b} {
			require.Equal(t, n, bl.Balances, bl.Name)
			require.Equal(t, n, bl.Created, bl.Name)
			require.Zero(t, bl.Failed, bl.Name)
			require.Zero(t, bl.Timeouts, bl.Name)
			require.Positive(t, bl.CreatesPerSecond, bl.Name)
		}
		require.Equal(t, map[string]int64{"204": int64(n)}, s.Statuses)
		require.Equal(t, ReadThenWriteInFlight, rtw.InFlight)
		require.Equal(t, map[string]int64{"404": int64(n), "204": int64(n)}, rtw.Statuses, "a GET of an absent account, then its write")
		require.Equal(t, BulkBaselineInFlight, b.InFlight)
		require.Equal(t, BulkBaselineSize, b.PerRequest)
		bulks := int64((n + BulkBaselineSize - 1) / BulkBaselineSize)
		require.Equal(t, map[string]int64{"200": bulks}, b.Statuses)
		require.Equal(t, bulks, b.Requests)

		// The run's ledger holds one metadata write per new balance and
		// side, and per replay seeded: nothing twice, nothing lost.
		logs, err := client.AllLogs(t.Context(), res.LedgerName)
		require.NoError(t, err)
		require.Len(t, logs, 4*n+res.Workload.Replays)
		addrs := map[string]bool{}
		for _, lg := range logs {
			require.Equal(t, "SET_METADATA", lg.Type)
			var d struct {
				TargetID string `json:"targetId"`
			}
			require.NoError(t, json.Unmarshal(lg.Data, &d))
			addrs[d.TargetID] = true
		}
		require.Len(t, addrs, 4*n+res.Workload.Replays, "every write on an address of its own")
		_, found, err := client.GetAccount(t.Context(), res.LedgerName, handlers.AccountAddress("", "bench-wallet-0000000", "savings"))
		require.NoError(t, err)
		require.True(t, found, "the worker wrote to the run's ledger")
	}

	t.Run("defaults", func(t *testing.T) {
		res := run(t, "--commands", "120")
		require.True(t, strings.HasPrefix(res.LedgerName, "bench-"), res.LedgerName)
		check(t, res, 120, 120)
		require.Equal(t, int(res.AtURL.PeakInFlight), res.AtURL.Single.InFlight, "single writes at the worker's most in flight")
		// A second run takes a ledger of its own: the same workload is new
		// again there.
		again := run(t, "--commands", "120")
		require.NotEqual(t, res.LedgerName, again.LedgerName)
		check(t, again, 120, 120)
	})
	t.Run("named ledger and a mixed workload", func(t *testing.T) {
		res := run(t, "--commands", "120", "--ledger-name", "bench-named", "--conflicts", "0.1", "--replays", "0.05", "--single-in-flight", "3")
		require.Equal(t, "bench-named", res.LedgerName)
		require.Equal(t, 12, res.Outcomes.AlreadyExists)
		require.Equal(t, 6, res.Outcomes.Replayed, "the seeded replays, not lost answers")
		check(t, res, 102, 120)
		require.Equal(t, 3, res.AtURL.Single.InFlight)
	})
	t.Run("unbatched", func(t *testing.T) {
		res := run(t, "--commands", "100", "--batch=false")
		check(t, res, 100, 100)
		require.Nil(t, res.Batch)
		require.Equal(t, int64(2*100), res.AtURL.Requests, "a GET and a write per new balance")
		require.LessOrEqual(t, res.AtURL.PeakInFlight, int64(8), "at most --concurrency requests in flight")
	})
	t.Run("batched", func(t *testing.T) {
		res := run(t, "--commands", "150", "--batch", "--concurrency", "64")
		check(t, res, 150, 150)
		require.NotNil(t, res.Batch)
		require.EqualValues(t, 150, res.Batch.Writes)
		require.Equal(t, res.Batch.ReadRequests+res.Batch.WriteRequests, res.AtURL.Requests, "one HTTP request per batch")
		require.Less(t, res.AtURL.Requests, int64(2*150), "reads and writes were coalesced")
	})
	t.Run("table", func(t *testing.T) {
		var out bytes.Buffer
		require.NoError(t, Command(t.Context(), []string{"--ledger-url", srv.URL, "--commands", "40", "--concurrency", "4"}, &out, t.Output()))
		for _, want := range []string{"creates/s", "single writes", "GET then write", "parallel bulks of 50", "worker ÷ best write", "ended replayed"} {
			require.Contains(t, out.String(), want)
		}
	})
}
