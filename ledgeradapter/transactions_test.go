package ledgeradapter_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// creditScript moves $amount from @world to $dest.
const creditScript = "vars {\n\tmonetary $amount\n\taccount $dest\n}\nsend $amount (\n\tsource = @world\n\tdestination = $dest\n)\n"

// debitScript moves $amount from $src to @world.
const debitScript = "vars {\n\tmonetary $amount\n\taccount $src\n}\nsend $amount (\n\tsource = $src\n\tdestination = @world\n)\n"

func credit(account, amount string) ledgeradapter.TransactionRequest {
	return ledgeradapter.TransactionRequest{Script: &ledgeradapter.Script{Plain: creditScript, Vars: map[string]string{"amount": "USD/2 " + amount, "dest": account}}}
}

func debit(account, amount string) ledgeradapter.TransactionRequest {
	return ledgeradapter.TransactionRequest{Script: &ledgeradapter.Script{Plain: debitScript, Vars: map[string]string{"amount": "USD/2 " + amount, "src": account}}}
}

func balance(t *testing.T, c *ledgeradapter.Client, ledger, account, asset string) *big.Int {
	t.Helper()
	a, ok, err := c.GetAccount(context.Background(), ledger, account)
	require.NoError(t, err)
	if !ok {
		return new(big.Int)
	}
	v, ok := a.Volumes[asset]
	if !ok {
		return new(big.Int)
	}
	return v.Balance
}

func TestCreateTransactionOutcomes(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	c, ctx := l.Client, context.Background()
	const ledger = "tx"
	require.NoError(t, c.EnsureLedger(ctx, ledger))

	res, err := c.CreateTransaction(ctx, ledger, credit("wallets:w1:main", "100"), "k1")
	require.NoError(t, err)
	require.False(t, res.IdempotencyHit)
	first := res.Transaction
	require.Equal(t, []ledgeradapter.Posting{{Source: "world", Destination: "wallets:w1:main", Amount: big.NewInt(100), Asset: "USD/2"}}, first.Postings)
	require.Equal(t, "100", first.PostCommitVolumes["wallets:w1:main"]["USD/2"].Balance.String())

	res, err = c.CreateTransaction(ctx, ledger, credit("wallets:w1:main", "100"), "k1")
	require.NoError(t, err)
	require.True(t, res.IdempotencyHit, "same key, same request")
	require.Equal(t, first.ID, res.Transaction.ID)
	require.Equal(t, "100", balance(t, c, ledger, "wallets:w1:main", "USD/2").String(), "a replay applies nothing")

	_, err = c.CreateTransaction(ctx, ledger, credit("wallets:w1:main", "101"), "k1")
	require.ErrorIs(t, err, ledgeradapter.ErrIdempotencyConflict)
	require.False(t, ledgeradapter.IsRetryable(err))

	_, err = c.CreateTransaction(ctx, ledger, debit("wallets:w1:main", "101"), "")
	require.ErrorIs(t, err, ledgeradapter.ErrInsufficientFunds, "one unit short")
	require.False(t, ledgeradapter.IsRetryable(err))
	_, err = c.CreateTransaction(ctx, ledger, debit("wallets:w1:main", "100"), "")
	require.NoError(t, err, "exactly enough")
	require.Equal(t, "0", balance(t, c, ledger, "wallets:w1:main", "USD/2").String())

	huge := credit("wallets:w2:main", "100000000000000000000000")
	res, err = c.CreateTransaction(ctx, ledger, huge, "")
	require.NoError(t, err, "an amount beyond 2^64")
	require.Equal(t, "100000000000000000000000", res.Transaction.Postings[0].Amount.String())

	withRef := credit("wallets:w3:main", "5")
	withRef.Reference = "ref-1"
	_, err = c.CreateTransaction(ctx, ledger, withRef, "")
	require.NoError(t, err)
	_, err = c.CreateTransaction(ctx, ledger, withRef, "")
	require.ErrorIs(t, err, ledgeradapter.ErrReferenceConflict)
	require.False(t, ledgeradapter.IsRetryable(err))

	_, err = c.CreateTransaction(ctx, ledger, ledgeradapter.TransactionRequest{Script: &ledgeradapter.Script{Plain: "send ("}}, "")
	require.ErrorIs(t, err, ledgeradapter.ErrCompilationFailed)
	_, err = c.CreateTransaction(ctx, ledger, ledgeradapter.TransactionRequest{Script: &ledgeradapter.Script{Plain: creditScript}}, "")
	require.ErrorIs(t, err, ledgeradapter.ErrCompilationFailed, "a missing var")

	override := credit("wallets:w3:main", "5")
	override.Script.Plain += "set_tx_meta(\"k\", \"script\")\n"
	override.Metadata = map[string]string{"k": "request"}
	_, err = c.CreateTransaction(ctx, ledger, override, "")
	require.ErrorIs(t, err, ledgeradapter.ErrMetadataOverride)

	postings := ledgeradapter.TransactionRequest{Postings: []ledgeradapter.Posting{{Source: "nobody", Destination: "a", Amount: big1(), Asset: "USD"}}}
	_, err = c.CreateTransaction(ctx, ledger, postings, "")
	require.ErrorIs(t, err, ledgeradapter.ErrInsufficientFunds, "postings from an account without funds")
	postings.Force = true
	_, err = c.CreateTransaction(ctx, ledger, postings, "")
	require.NoError(t, err, "forced")

	_, err = c.CreateTransaction(ctx, "missing", credit("a", "1"), "")
	require.ErrorIs(t, err, ledgeradapter.ErrLedgerNotFound)

	got, ok, err := c.GetTransaction(ctx, ledger, first.ID)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, first.Postings, got.Postings)
	_, ok, err = c.GetTransaction(ctx, ledger, 999999)
	require.NoError(t, err)
	require.False(t, ok)

	_, err = c.CreateTransaction(ctx, ledger, ledgeradapter.TransactionRequest{}, "")
	require.Error(t, err, "neither script nor postings")
	require.False(t, ledgeradapter.IsRetryable(err))
}

func big1() *big.Int { return big.NewInt(1) }

// TestConcurrentDebitsNeverOverdraw: 64 debits of one account in flight at
// once, together worth more than it holds, spend exactly what it holds.
func TestConcurrentDebitsNeverOverdraw(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{Client: ledgeradapter.Config{TxConcurrency: 64}})
	c, ctx := l.Client, context.Background()
	const ledger, account = "debits", "wallets:w1:main"
	require.NoError(t, c.EnsureLedger(ctx, ledger))
	_, err := c.CreateTransaction(ctx, ledger, credit(account, "1000"), "")
	require.NoError(t, err)

	const n = 64
	start := make(chan struct{})
	var ok, short atomic.Int32
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			_, err := c.CreateTransaction(ctx, ledger, debit(account, "30"), "")
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ledgeradapter.ErrInsufficientFunds):
				short.Add(1)
			default:
				errs[i] = err
			}
		})
	}
	close(start)
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.EqualValues(t, 33, ok.Load(), "1000 holds 33 debits of 30")
	require.EqualValues(t, n-33, short.Load())
	require.Equal(t, "10", balance(t, c, ledger, account, "USD/2").String())
}

// TestTxConcurrencyCap: however many callers, no more transaction requests
// reach the ledger at once than the cap.
func TestTxConcurrencyCap(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int32
	slow := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Path == "/v2/cap/transactions" {
				n := inFlight.Add(1)
				defer inFlight.Add(-1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(20 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}
	l := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: slow})
	c, ctx := l.Client, context.Background()
	require.Equal(t, ledgeradapter.DefaultTxConcurrency, c.TxConcurrency())
	require.NoError(t, c.EnsureLedger(ctx, "cap"))

	const callers = 200
	var wg sync.WaitGroup
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			_, errs[i] = c.CreateTransaction(ctx, "cap", credit("wallets:w1:main", "1"), "")
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.EqualValues(t, ledgeradapter.DefaultTxConcurrency, peak.Load(), "the cap is reached and never passed")
	require.Equal(t, "200", balance(t, c, "cap", "wallets:w1:main", "USD/2").String())
}

// TestTxStallReportedOnce: transactions that get no answer are reported
// once, with the advice, not once per request; an answer ends the stall.
func TestTxStallReportedOnce(t *testing.T) {
	t.Parallel()
	var stall, fail atomic.Bool
	stall.Store(true)
	release := make(chan struct{})
	hold := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/stall/transactions" && fail.Load() {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = w.Write([]byte(`{"errorCode":"INTERNAL","errorMessage":"gave up"}`))
				return
			}
			if r.URL.Path == "/v2/stall/transactions" && stall.Load() {
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	}
	logs := &testutil.SyncBuffer{}
	l := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: hold, Client: ledgeradapter.Config{
		Timeout: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}})
	defer close(release)
	c, ctx := l.Client, context.Background()
	require.NoError(t, c.EnsureLedger(ctx, "stall"))

	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			_, err := c.CreateTransaction(ctx, "stall", credit("a", "1"), "")
			if !errors.Is(err, ledgeradapter.ErrTimeout) {
				t.Errorf("want a timeout, got %v", err)
			}
		})
	}
	wg.Wait()
	require.Equal(t, 1, countLines(logs.String(), "ledger stalled"), logs.String())
	require.Contains(t, logs.String(), "POSTGRES_MAX_OPEN_CONNS")

	// A transaction that gets through during the stall starts no new
	// report, and does not end it either.
	stall.Store(false)
	_, err := c.CreateTransaction(ctx, "stall", credit("a", "1"), "")
	require.NoError(t, err)
	stall.Store(true)
	_, err = c.CreateTransaction(ctx, "stall", credit("a", "1"), "")
	require.ErrorIs(t, err, ledgeradapter.ErrTimeout)
	require.Equal(t, 1, countLines(logs.String(), "ledger stalled"), logs.String())
	require.Zero(t, countLines(logs.String(), "ledger answers transactions again"), logs.String())

	// A 5xx, which a stalled ledger sends to the requests it gave up on, is
	// no answer, even with no timeout for twice the timeout.
	stall.Store(false)
	fail.Store(true)
	time.Sleep(700 * time.Millisecond)
	_, err = c.CreateTransaction(ctx, "stall", credit("a", "1"), "")
	require.Error(t, err)
	require.True(t, ledgeradapter.IsRetryable(err), "a 5xx: %v", err)
	require.Zero(t, countLines(logs.String(), "ledger answers transactions again"), logs.String())

	// Answers, and no timeout for twice the timeout: the stall is over.
	fail.Store(false)
	_, err = c.CreateTransaction(ctx, "stall", credit("a", "1"), "")
	require.NoError(t, err)
	require.Equal(t, 1, countLines(logs.String(), "ledger answers transactions again"), logs.String())
	require.Equal(t, 1, countLines(logs.String(), "ledger stalled"), logs.String())
}

func countLines(s, sub string) int {
	n := 0
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

func TestListTransactionsPages(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	c, ctx := l.Client, context.Background()
	require.NoError(t, c.EnsureLedger(ctx, "pages"))
	for i := range 5 {
		_, err := c.CreateTransaction(ctx, "pages", credit("wallets:w1:main", strconv.Itoa(i+1)), "")
		require.NoError(t, err)
	}
	_, err := c.CreateTransaction(ctx, "pages", credit("wallets:w2:main", "9"), "")
	require.NoError(t, err)

	filter := map[string]any{"$match": map[string]any{"destination": "wallets:w1:main"}}
	var ids []uint64
	page, err := c.ListTransactions(ctx, "pages", filter, 2, "")
	for {
		require.NoError(t, err)
		for _, tx := range page.Data {
			ids = append(ids, tx.ID)
			require.NotEmpty(t, tx.PostCommitVolumes, "listed with expand=volumes")
		}
		if !page.HasMore {
			break
		}
		page, err = c.ListTransactions(ctx, "pages", nil, 0, page.Next)
	}
	require.Equal(t, []uint64{5, 4, 3, 2, 1}, ids, "newest first, the filter kept across pages")
}

// fundsBulk sends, as one bulk through send, a credit of 100 to w, a debit
// of 80, a debit of 30 (20 left: refused) and a debit of 20, and checks what
// both kinds of bulk share: they run in order, and the refusal is an
// INSUFFICIENT_FUNDS of element 3.
func fundsBulk(t *testing.T, w string, send func([]ledgeradapter.BulkTransaction) ([]ledgeradapter.BulkTransactionResult, error)) []ledgeradapter.BulkTransactionResult {
	t.Helper()
	res, err := send([]ledgeradapter.BulkTransaction{
		{Request: credit(w, "100"), IdempotencyKey: "c1"},
		{Request: debit(w, "80"), IdempotencyKey: "d1"},
		{Request: debit(w, "30"), IdempotencyKey: "d2"},
		{Request: debit(w, "20"), IdempotencyKey: "d3"},
	})
	require.NoError(t, err)
	require.Len(t, res, 4)
	require.NoError(t, res[0].Err)
	require.NoError(t, res[1].Err, "the debit sees the credit before it")
	require.ErrorIs(t, res[2].Err, ledgeradapter.ErrInsufficientFunds)
	require.False(t, ledgeradapter.IsRetryable(res[2].Err))
	var le *ledgeradapter.Error
	require.ErrorAs(t, res[2].Err, &le)
	require.Equal(t, 3, le.Element)
	require.Less(t, res[0].Transaction.ID, res[1].Transaction.ID)
	return res
}

// TestBulkTransactionsInOrder: the elements of a bulk run in order, a
// refused one does not stop the ones after it, and a replayed key answers
// the transaction first created.
func TestBulkTransactionsInOrder(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	c, ctx := l.Client, context.Background()
	require.NoError(t, c.EnsureLedger(ctx, "bulk"))
	const w = "wallets:w1:main"
	res := fundsBulk(t, w, func(e []ledgeradapter.BulkTransaction) ([]ledgeradapter.BulkTransactionResult, error) {
		return c.BulkTransactions(ctx, "bulk", e)
	})
	require.NoError(t, res[3].Err, "a refused element does not stop the ones after it")
	require.Less(t, res[1].Transaction.ID, res[3].Transaction.ID)
	require.Equal(t, "0", balance(t, c, "bulk", w, "USD/2").String())

	again, err := c.BulkTransactions(ctx, "bulk", []ledgeradapter.BulkTransaction{{Request: credit(w, "100"), IdempotencyKey: "c1"}})
	require.NoError(t, err)
	require.NoError(t, again[0].Err)
	require.Equal(t, res[0].Transaction.ID, again[0].Transaction.ID, "a replayed key answers the first transaction")
	require.Equal(t, "0", balance(t, c, "bulk", w, "USD/2").String())
}

// TestChainTransactionsStopsAtTheFirstFailure: a chain runs in order and
// stops at its first failure; the elements after it are not run, and can
// be sent again.
func TestChainTransactionsStopsAtTheFirstFailure(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	c, ctx := l.Client, context.Background()
	require.NoError(t, c.EnsureLedger(ctx, "chain"))
	const w = "wallets:w1:main"
	res := fundsBulk(t, w, func(e []ledgeradapter.BulkTransaction) ([]ledgeradapter.BulkTransactionResult, error) {
		return c.ChainTransactions(ctx, "chain", e)
	})
	require.ErrorIs(t, res[3].Err, ledgeradapter.ErrNotRun)
	require.NotErrorIs(t, res[2].Err, ledgeradapter.ErrNotRun)
	require.Equal(t, "20", balance(t, c, "chain", w, "USD/2").String(), "the element after the failure did not run")

	again, err := c.ChainTransactions(ctx, "chain", []ledgeradapter.BulkTransaction{{Request: debit(w, "20"), IdempotencyKey: "d3"}})
	require.NoError(t, err)
	require.NoError(t, again[0].Err, "an element not run can be sent again")
	require.Greater(t, again[0].Transaction.ID, res[1].Transaction.ID)
	require.Equal(t, "0", balance(t, c, "chain", w, "USD/2").String())
}

// TestBulkAnswersCarryLargeTransactions: a bulk's answer echoes every
// transaction with its metadata, so a chain of commands of tens of KiB of
// metadata each answers megabytes, and is read whole.
func TestBulkAnswersCarryLargeTransactions(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	c, ctx := l.Client, context.Background()
	require.NoError(t, c.EnsureLedger(ctx, "large"))
	big := strings.Repeat("x", 40<<10)
	var elems []ledgeradapter.BulkTransaction
	for i := range 32 {
		req := credit("wallets:w1:main", "1")
		req.Metadata = map[string]string{"big": big}
		elems = append(elems, ledgeradapter.BulkTransaction{Request: req, IdempotencyKey: fmt.Sprintf("c%d", i)})
	}
	for name, send := range map[string]func(context.Context, string, []ledgeradapter.BulkTransaction) ([]ledgeradapter.BulkTransactionResult, error){
		"chain": c.ChainTransactions, "bulk": c.BulkTransactions,
	} {
		res, err := send(ctx, "large", elems)
		require.NoError(t, err, name)
		require.Len(t, res, len(elems))
		for _, r := range res {
			require.NoError(t, r.Err, name)
			require.Equal(t, big, r.Transaction.Metadata["big"], name)
		}
	}
}

// TestDryRunTellsWhetherAKeyApplied: a dry run with a key answers the
// transaction that key applied (a hit), and applies nothing otherwise.
func TestDryRunTellsWhetherAKeyApplied(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	c, ctx := l.Client, context.Background()
	require.NoError(t, c.EnsureLedger(ctx, "dry"))
	probe := credit("wallets:w1:main", "10")
	probe.DryRun = true
	res, err := c.CreateTransaction(ctx, "dry", probe, "k1")
	require.NoError(t, err)
	require.False(t, res.IdempotencyHit)
	require.Equal(t, "0", balance(t, c, "dry", "wallets:w1:main", "USD/2").String(), "a dry run applies nothing")

	applied, err := c.CreateTransaction(ctx, "dry", credit("wallets:w1:main", "10"), "k1")
	require.NoError(t, err, "the key was not used up by the dry run")
	require.False(t, applied.IdempotencyHit)
	res, err = c.CreateTransaction(ctx, "dry", probe, "k1")
	require.NoError(t, err)
	require.True(t, res.IdempotencyHit)
	require.Equal(t, applied.Transaction.ID, res.Transaction.ID)
	require.Equal(t, "10", balance(t, c, "dry", "wallets:w1:main", "USD/2").String())
}

// TestTxLimitBacksOffAndComesBack: a ledger that answers transactions 503
// gets fewer of them in flight; once it answers again, and more in flight
// get more through, the limit climbs back to the cap.
func TestTxLimitBacksOffAndComesBack(t *testing.T) {
	t.Parallel()
	var failing atomic.Bool
	failing.Store(true)
	wrap := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Path == "/v2/back/transactions" {
				if failing.Load() {
					http.Error(w, `{"errorCode":"INTERNAL","errorMessage":"overloaded"}`, http.StatusServiceUnavailable)
					return
				}
				// A ledger whose throughput grows with what is in flight, well
				// past the cap: the embedded ledger's own time per
				// transaction is small beside this.
				time.Sleep(60 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}
	l := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: wrap})
	c, ctx := l.Client, context.Background()
	require.NoError(t, c.EnsureLedger(ctx, "back"))
	load := func(n int) error {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				_, errs[i] = c.CreateTransaction(ctx, "back", credit(fmt.Sprintf("wallets:w%d:main", i), "1"), "")
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	require.Error(t, load(16))
	require.Less(t, c.TxLimit(), ledgeradapter.DefaultTxConcurrency, "503s halve the limit")
	failing.Store(false)
	// A steady backlog, as a worker keeps: 32 callers, each sending one
	// transaction after another, until the limit is back at the cap.
	start, done := time.Now(), make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 32 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				if _, err := c.CreateTransaction(ctx, "back", credit(fmt.Sprintf("wallets:v%d-%d:main", w, i), "1"), ""); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	// The limit is read while the load lasts: once it stops, the last
	// round may take a step back that gained too little, as it should.
	peak := 0
	for peak < ledgeradapter.DefaultTxConcurrency && time.Since(start) < 20*time.Second {
		peak = max(peak, c.TxLimit())
		time.Sleep(10 * time.Millisecond)
	}
	back := time.Since(start)
	close(done)
	wg.Wait()
	require.Zero(t, failed.Load())
	require.Equal(t, ledgeradapter.DefaultTxConcurrency, peak, "back to the cap, never past it")
	require.LessOrEqual(t, c.TxLimit(), ledgeradapter.DefaultTxConcurrency)
	t.Logf("back at the cap %s after the ledger answered again", back.Round(time.Millisecond))
}
