package ledgeradapter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTxConcurrency is how many transaction requests a Client has in
// flight to its ledger at most. The real ledger v2.4.12 stalls outright when
// 20 or more transactions touching one account (every credit touches @world)
// wait on it at once with its default pool of 20 PostgreSQL connections
// (POSTGRES_MAX_OPEN_CONNS): each waiter holds a connection, and the holder
// of the account's lock cannot get the one it needs to finish. Below that,
// transactions on one account run one after another anyway: measured on
// v2.4.12, 2,000 credits from @world ran at 27-34/s with 8, 16 or 18 in
// flight, but 8 halved the ledger's latency (p99 ~1 s against ~2 s, worst
// 2.3 s against 5 s) and had no timeout in 4 runs where 16 timed out in 4 of
// 9 (a fresh ledger's first requests queue behind each other), and bulks of
// 20 transactions, 8 in flight, committed where 16 in flight timed out. Keep
// it below POSTGRES_MAX_OPEN_CONNS, summed over the processes.
const DefaultTxConcurrency = 8

// Posting is V2Posting: Amount of Asset moved from Source to Destination.
type Posting struct {
	Source      string   `json:"source"`
	Destination string   `json:"destination"`
	Amount      *big.Int `json:"amount"`
	Asset       string   `json:"asset"`
}

// Script is a Numscript program and its variables, as the ledger takes them
// (monetaries as "ASSET AMOUNT", accounts without "@").
type Script struct {
	Plain string            `json:"plain"`
	Vars  map[string]string `json:"vars,omitempty"`
}

// TransactionRequest is V2PostTransaction: either a Script or Postings.
type TransactionRequest struct {
	Script   *Script
	Postings []Posting
	// Metadata of the transaction; a key the script also sets is refused
	// (METADATA_OVERRIDE).
	Metadata map[string]string
	// Reference, when set, is unique in the ledger (409 CONFLICT on reuse).
	Reference string
	// Timestamp, when set, is the transaction's date instead of now.
	Timestamp time.Time
	// Force lets the sources of plain postings overdraw.
	Force bool
	// DryRun asks the ledger to run the request and keep nothing. With an
	// Idempotency-Key the ledger looks the key up first, so a dry run tells
	// whether this very request was applied under it (IdempotencyHit, with
	// the transaction first created) without applying it now.
	DryRun bool
}

// Volumes are one account's volumes per asset.
type Volumes map[string]Volume

// Transaction is V2Transaction.
type Transaction struct {
	ID         uint64
	Postings   []Posting
	Metadata   map[string]string
	Reference  string
	Timestamp  time.Time
	InsertedAt time.Time
	Reverted   bool
	// PostCommitVolumes are the volumes of the accounts the transaction
	// moved, as it left them (set when the ledger sent them: on creation,
	// and on reads with expand=volumes).
	PostCommitVolumes map[string]Volumes
}

// TransactionResult is the outcome of CreateTransaction.
type TransactionResult struct {
	Transaction Transaction
	// IdempotencyHit: the ledger answered with the transaction it had
	// already created for this Idempotency-Key; nothing was applied now.
	IdempotencyHit bool
}

type transactionWire struct {
	ID                json.Number                   `json:"id"`
	Postings          []postingWire                 `json:"postings"`
	Metadata          map[string]string             `json:"metadata"`
	Reference         string                        `json:"reference"`
	Timestamp         time.Time                     `json:"timestamp"`
	InsertedAt        time.Time                     `json:"insertedAt"`
	Reverted          bool                          `json:"reverted"`
	PostCommitVolumes map[string]map[string]*Volume `json:"postCommitVolumes"`
}

type postingWire struct {
	Source      string          `json:"source"`
	Destination string          `json:"destination"`
	Amount      json.RawMessage `json:"amount"`
	Asset       string          `json:"asset"`
}

func (w transactionWire) transaction() (Transaction, error) {
	id, err := strconv.ParseUint(w.ID.String(), 10, 64)
	if err != nil {
		return Transaction{}, fmt.Errorf("transaction id %q: %w", w.ID, err)
	}
	tx := Transaction{
		ID: id, Metadata: w.Metadata, Reference: w.Reference, Timestamp: w.Timestamp,
		InsertedAt: w.InsertedAt, Reverted: w.Reverted,
	}
	if tx.Metadata == nil {
		tx.Metadata = map[string]string{}
	}
	for _, p := range w.Postings {
		amount, err := parseBigInt(p.Amount)
		if err != nil {
			return Transaction{}, fmt.Errorf("posting amount: %w", err)
		}
		tx.Postings = append(tx.Postings, Posting{Source: p.Source, Destination: p.Destination, Amount: amount, Asset: p.Asset})
	}
	if len(w.PostCommitVolumes) > 0 {
		tx.PostCommitVolumes = map[string]Volumes{}
		for account, byAsset := range w.PostCommitVolumes {
			vs := Volumes{}
			for asset, v := range byAsset {
				if v != nil {
					vs[asset] = *v
				}
			}
			tx.PostCommitVolumes[account] = vs
		}
	}
	return tx, nil
}

// transactionBody is the JSON the ledger takes for a TransactionRequest.
func (r TransactionRequest) body() ([]byte, error) {
	switch {
	case r.Script != nil && len(r.Postings) > 0:
		return nil, errors.New("a transaction request has a script or postings, not both")
	case r.Script == nil && len(r.Postings) == 0:
		return nil, errors.New("a transaction request needs a script or postings")
	}
	w := struct {
		Postings  []Posting         `json:"postings,omitempty"`
		Script    *Script           `json:"script,omitempty"`
		Metadata  map[string]string `json:"metadata"` // required by the API
		Reference string            `json:"reference,omitempty"`
		Timestamp string            `json:"timestamp,omitempty"`
		Force     bool              `json:"force,omitempty"`
	}{Postings: r.Postings, Script: r.Script, Metadata: r.Metadata, Reference: r.Reference, Force: r.Force}
	if w.Metadata == nil {
		w.Metadata = map[string]string{}
	}
	for i, p := range r.Postings {
		if p.Amount == nil {
			return nil, fmt.Errorf("posting %d has no amount", i)
		}
	}
	if !r.Timestamp.IsZero() {
		w.Timestamp = r.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	return json.Marshal(w)
}

// txGate caps the transaction requests in flight to one ledger at a limit
// that seeks throughput below the cap (a Limiter: fewer in flight when more
// get no more through, halved on a timeout, a 5xx or a 429), and reports a
// stall once.
type txGate struct {
	most    int
	limiter *Limiter
	log     *slog.Logger
	stalled atomic.Bool
	// lastTimeout is when a transaction last went unanswered (UnixNano).
	lastTimeout atomic.Int64
	mu          sync.Mutex // orders the stall's two reports

	smu     sync.Mutex
	held    int             // slots held
	waiters []chan struct{} // first come, first served; closed with a slot
}

func newTxGate(n int, log *slog.Logger) *txGate {
	l, err := NewLimiter(LimiterConfig{Initial: n, Min: 1, Max: n})
	if err != nil {
		panic(err) // n is at least 1: Config.Validate
	}
	return &txGate{most: n, limiter: l, log: log}
}

// acquire waits for a slot or the end of ctx.
func (g *txGate) acquire(ctx context.Context) error {
	g.smu.Lock()
	if len(g.waiters) == 0 && g.held < g.limiter.Limit() {
		g.held++
		g.smu.Unlock()
		return nil
	}
	g.limiter.Pressed()
	ch := make(chan struct{})
	g.waiters = append(g.waiters, ch)
	g.smu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		g.smu.Lock()
		defer g.smu.Unlock()
		if i := slices.Index(g.waiters, ch); i >= 0 {
			g.waiters = slices.Delete(g.waiters, i, i+1)
		} else {
			// The slot came with the end of ctx: hand it on.
			g.held--
			g.handOn()
		}
		return ctxError(ctx)
	}
}

// release frees a slot and feeds the limiter what became of its request
// (nothing when its caller left: a request cut short says nothing of the
// ledger).
func (g *txGate) release(ctx context.Context, start time.Time, elements int, resp *response, e *Error, timeout time.Duration) {
	if ctx.Err() == nil {
		var overload bool
		switch {
		case e != nil:
			overload = isOverload(e)
		case resp != nil:
			overload = overloadStatus(resp.status)
		}
		g.limiter.Observe(Sample{Latency: time.Since(start), Elements: elements, Overload: overload, Timeout: timeout})
	}
	g.smu.Lock()
	defer g.smu.Unlock()
	g.held--
	g.handOn()
}

// handOn gives free slots to the first waiters; those left are held back
// by the limit. Called with smu held.
func (g *txGate) handOn() {
	for len(g.waiters) > 0 && g.held < g.limiter.Limit() {
		g.held++
		close(g.waiters[0])
		g.waiters = g.waiters[1:]
	}
	if len(g.waiters) > 0 {
		g.limiter.Pressed()
	}
}

// inFlight is how many transaction requests hold a slot now.
func (g *txGate) inFlight() int {
	g.smu.Lock()
	defer g.smu.Unlock()
	return g.held
}

// outcome records how a transaction request ended. A timeout starts a
// stall, reported once. The stall ends when a transaction is answered (a
// success or a refusal, not a 5xx, which a stalled ledger sends to the
// requests it gave up on) and none has gone unanswered for twice the
// timeout: during a stall a few transactions still get through, and each
// must not start a new report.
func (g *txGate) outcome(resp *response, e *Error, timeout time.Duration) {
	now := time.Now()
	if e != nil && errors.Is(e.Err, ErrTimeout) {
		g.lastTimeout.Store(now.UnixNano())
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.stalled.CompareAndSwap(false, true) {
			g.log.Warn("ledger stalled: a transaction got no answer within its timeout; "+
				"the real Formance ledger stalls when as many transactions touching one account wait as it has PostgreSQL connections. "+
				"Keep --ledger-tx-concurrency below the ledger's POSTGRES_MAX_OPEN_CONNS (default 20), summed over the workers",
				"timeout", timeout, "tx_in_flight", g.inFlight(), "tx_limit", g.limiter.Limit(), "tx_cap", g.most)
		}
		return
	}
	answered := e == nil && resp != nil && resp.status < 500 && resp.status != http.StatusTooManyRequests
	if !answered || !g.stalled.Load() || now.Sub(time.Unix(0, g.lastTimeout.Load())) < 2*timeout {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stalled.CompareAndSwap(true, false) {
		g.log.Info("ledger answers transactions again")
	}
}

// TxInFlight is how many transaction requests this client has in flight.
func (c *Client) TxInFlight() int { return c.tx.inFlight() }

// TxConcurrency is the cap on them (Config.TxConcurrency).
func (c *Client) TxConcurrency() int { return c.tx.most }

// TxLimit is how many transaction requests may be in flight now: it seeks
// throughput between 1 and TxConcurrency.
func (c *Client) TxLimit() int { return c.tx.limiter.Limit() }

// CreateTransaction posts a transaction: POST /v2/{ledger}/transactions.
// A non-empty idempotencyKey is sent as Idempotency-Key: a retry with the
// same key and request answers the transaction first created, with
// IdempotencyHit; the same key with another request is an error matching
// ErrIdempotencyConflict. At most Config.TxConcurrency calls are in flight
// per Client; the others wait for a slot (their context bounds the wait).
//
// Refusals match ErrInsufficientFunds, ErrCompilationFailed,
// ErrInterpreterRuntime, ErrMetadataOverride, ErrNoPostings,
// ErrReferenceConflict, ErrValidation or ErrLedgerNotFound, none of them
// retryable; 5xx, 429, timeouts and network errors are (Error.Retryable).
func (c *Client) CreateTransaction(ctx context.Context, ledger string, req TransactionRequest, idempotencyKey string) (TransactionResult, error) {
	const op = "CreateTransaction"
	if err := errors.Join(ValidateLedgerName(ledger), validateIdempotencyKey(idempotencyKey)); err != nil {
		return TransactionResult{}, notSent(op, err)
	}
	for _, p := range req.Postings {
		if err := errors.Join(ValidateAddress(p.Source), ValidateAddress(p.Destination)); err != nil {
			return TransactionResult{}, notSent(op, err)
		}
	}
	body, err := req.body()
	if err != nil {
		return TransactionResult{}, notSent(op, err)
	}
	if err := c.tx.acquire(ctx); err != nil {
		return TransactionResult{}, &Error{Op: op, Err: err}
	}
	var query url.Values
	if req.DryRun {
		query = url.Values{"dryRun": {"true"}}
	}
	start := time.Now()
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodPost, path: "/v2/" + url.PathEscape(ledger) + "/transactions",
		query: query, body: body, idempotencyKey: idempotencyKey,
	})
	c.tx.release(ctx, start, 1, resp, e, c.timeout)
	c.tx.outcome(resp, e, c.timeout)
	if e != nil {
		return TransactionResult{}, e
	}
	if resp.status != http.StatusOK {
		return TransactionResult{}, resp.fail()
	}
	tx, err := decodeTransaction(resp.body)
	if err != nil {
		return TransactionResult{}, resp.unexpected(err)
	}
	return TransactionResult{Transaction: tx, IdempotencyHit: strings.EqualFold(resp.header.Get(headerIdempotencyHit), "true")}, nil
}

func decodeTransaction(b []byte) (Transaction, error) {
	var body struct {
		Data *transactionWire `json:"data"`
	}
	if err := json.Unmarshal(b, &body); err != nil || body.Data == nil {
		return Transaction{}, fmt.Errorf("%w: not a transaction: %v", ErrUnexpectedResponse, err)
	}
	tx, err := body.Data.transaction()
	if err != nil {
		return Transaction{}, fmt.Errorf("%w: %v", ErrUnexpectedResponse, err)
	}
	return tx, nil
}

// GetTransaction reads a transaction with its post-commit volumes; a
// missing one is (Transaction{}, false, nil).
func (c *Client) GetTransaction(ctx context.Context, ledger string, id uint64) (Transaction, bool, error) {
	const op = "GetTransaction"
	if err := ValidateLedgerName(ledger); err != nil {
		return Transaction{}, false, notSent(op, err)
	}
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodGet,
		path:  "/v2/" + url.PathEscape(ledger) + "/transactions/" + strconv.FormatUint(id, 10),
		query: url.Values{"expand": {"volumes"}},
	})
	if e != nil {
		return Transaction{}, false, e
	}
	switch {
	case resp.status == http.StatusOK:
		tx, err := decodeTransaction(resp.body)
		if err != nil {
			return Transaction{}, false, resp.unexpected(err)
		}
		return tx, true, nil
	case resp.status == http.StatusNotFound && resp.errorCode() == CodeNotFound:
		return Transaction{}, false, nil
	}
	return Transaction{}, false, resp.fail()
}

// TransactionsPage is one page of ListTransactions, newest first.
type TransactionsPage struct {
	Data    []Transaction
	HasMore bool
	// Next is the cursor of the next page, "" on the last one.
	Next string
}

// ListTransactions reads one page of the transactions the filter selects
// (the ledger's query language, e.g. {"$match": {"destination": "a:b"}};
// nil selects all), newest first, with their post-commit volumes. pageSize
// 0 lets the ledger choose (15 by default). With a cursor from a previous
// page, filter and pageSize are not sent: the cursor carries them.
func (c *Client) ListTransactions(ctx context.Context, ledger string, filter map[string]any, pageSize int, cursor string) (TransactionsPage, error) {
	const op = "ListTransactions"
	if err := ValidateLedgerName(ledger); err != nil {
		return TransactionsPage{}, notSent(op, err)
	}
	if pageSize < 0 {
		return TransactionsPage{}, notSent(op, fmt.Errorf("pageSize must not be negative, got %d", pageSize))
	}
	q := url.Values{}
	body := []byte("{}")
	switch {
	case cursor != "":
		q.Set("cursor", cursor)
	default:
		q.Set("expand", "volumes")
		if pageSize > 0 {
			q.Set("pageSize", strconv.Itoa(pageSize))
		}
		if filter != nil {
			var err error
			if body, err = json.Marshal(filter); err != nil {
				return TransactionsPage{}, notSent(op, err)
			}
		}
	}
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodGet, path: "/v2/" + url.PathEscape(ledger) + "/transactions",
		query: q, body: body, limit: maxLogsResponseBytes,
	})
	if e != nil {
		return TransactionsPage{}, e
	}
	if resp.status != http.StatusOK {
		return TransactionsPage{}, resp.fail()
	}
	var w struct {
		Cursor *struct {
			HasMore bool              `json:"hasMore"`
			Next    string            `json:"next"`
			Data    []transactionWire `json:"data"`
		} `json:"cursor"`
	}
	if err := json.Unmarshal(resp.body, &w); err != nil || w.Cursor == nil {
		return TransactionsPage{}, resp.unexpected(fmt.Errorf("%w: not a transactions cursor: %v", ErrUnexpectedResponse, err))
	}
	page := TransactionsPage{HasMore: w.Cursor.HasMore, Next: w.Cursor.Next, Data: make([]Transaction, 0, len(w.Cursor.Data))}
	for _, tw := range w.Cursor.Data {
		tx, err := tw.transaction()
		if err != nil {
			return TransactionsPage{}, resp.unexpected(fmt.Errorf("%w: %v", ErrUnexpectedResponse, err))
		}
		page.Data = append(page.Data, tx)
	}
	return page, nil
}

// BulkTransaction is one CREATE_TRANSACTION element of a bulk: the same
// write as CreateTransaction(ledger, Request, IdempotencyKey).
type BulkTransaction struct {
	Request        TransactionRequest
	IdempotencyKey string
}

// BulkTransactionResult is what became of one element: its transaction
// (created now or, on a replayed key, first), or Err, an *Error classified
// like the same CreateTransaction call's (Error.Element is its position).
type BulkTransactionResult struct {
	Transaction Transaction
	Err         error
}

// BulkTransactions sends transactions as CREATE_TRANSACTION elements of one
// POST /v2/{ledger}/_bulk?continueOnFailure=true, without parallel: the
// ledger runs them one after another, in order, each atomic, and a refused
// one (insufficient funds, say) does not stop those after it. One request
// holds one of the Config.TxConcurrency slots, since it runs one
// transaction at a time. At most MaxBulkSize elements. The error returned
// is for the request as a whole; nil means each element's fate is in its
// result. The ledger does not say which elements were idempotency hits.
func (c *Client) BulkTransactions(ctx context.Context, ledger string, elems []BulkTransaction) ([]BulkTransactionResult, error) {
	return c.bulkTransactions(ctx, "BulkTransactions", ledger, elems, true)
}

// ErrNotRun is the Err of a ChainTransactions element the ledger did not
// run, because one before it failed.
var ErrNotRun = errors.New("ledgeradapter: not run: an earlier element of the bulk failed")

// ChainTransactions is BulkTransactions that stops at the first failure:
// POST /v2/{ledger}/_bulk without continueOnFailure or parallel. The
// elements run one after another, each atomic; once one fails, the ledger
// runs none after it, and their results match ErrNotRun. A chain of
// transactions that depend on one another (a debit covered by the credit
// before it) is thus applied as a prefix: what failed, and everything after
// it, can be sent again later in the same order.
func (c *Client) ChainTransactions(ctx context.Context, ledger string, elems []BulkTransaction) ([]BulkTransactionResult, error) {
	return c.bulkTransactions(ctx, "ChainTransactions", ledger, elems, false)
}

func (c *Client) bulkTransactions(ctx context.Context, op, ledger string, elems []BulkTransaction, continueOnFailure bool) ([]BulkTransactionResult, error) {
	if err := ValidateLedgerName(ledger); err != nil {
		return nil, notSent(op, err)
	}
	if len(elems) == 0 || len(elems) > MaxBulkSize {
		return nil, notSent(op, fmt.Errorf("a bulk holds 1 to %d transactions, got %d", MaxBulkSize, len(elems)))
	}
	type element struct {
		Action string          `json:"action"`
		IK     string          `json:"ik,omitempty"`
		Data   json.RawMessage `json:"data"`
	}
	wire := make([]element, len(elems))
	for i, el := range elems {
		if err := validateIdempotencyKey(el.IdempotencyKey); err != nil {
			return nil, notSent(op, fmt.Errorf("element %d: %w", i+1, err))
		}
		for _, p := range el.Request.Postings {
			if err := errors.Join(ValidateAddress(p.Source), ValidateAddress(p.Destination)); err != nil {
				return nil, notSent(op, fmt.Errorf("element %d: %w", i+1, err))
			}
		}
		data, err := el.Request.body()
		if err != nil {
			return nil, notSent(op, fmt.Errorf("element %d: %w", i+1, err))
		}
		wire[i] = element{Action: "CREATE_TRANSACTION", IK: el.IdempotencyKey, Data: data}
	}
	body, err := json.Marshal(wire)
	if err != nil {
		return nil, notSent(op, err)
	}
	if err := c.tx.acquire(ctx); err != nil {
		return nil, &Error{Op: op, Err: err}
	}
	var query url.Values
	if continueOnFailure {
		query = url.Values{"continueOnFailure": {"true"}}
	}
	start := time.Now()
	resp, e := c.do(ctx, request{
		op: op, method: http.MethodPost, path: "/v2/" + url.PathEscape(ledger) + "/_bulk",
		query: query, body: body, elements: len(elems), limit: int64(max(1, len(elems))) * maxBulkElementResponseBytes,
	})
	c.tx.release(ctx, start, len(elems), resp, e, c.TimeoutFor(len(elems)))
	c.tx.outcome(resp, e, c.TimeoutFor(len(elems)))
	if e != nil {
		return nil, e
	}
	if resp.status != http.StatusOK && resp.status != http.StatusBadRequest {
		return nil, resp.fail()
	}
	var out struct {
		Data *[]struct {
			bulkResultWire
			Data *transactionWire `json:"data"`
		} `json:"data"`
	}
	if err := json.Unmarshal(resp.body, &out); err != nil || out.Data == nil {
		if resp.status == http.StatusBadRequest {
			return nil, resp.fail()
		}
		return nil, resp.unexpected(fmt.Errorf("%w: not a bulk response: %v", ErrUnexpectedResponse, err))
	}
	if len(*out.Data) != len(elems) {
		return nil, resp.unexpected(fmt.Errorf("%w: %d results for %d elements", ErrUnexpectedResponse, len(*out.Data), len(elems)))
	}
	results := make([]BulkTransactionResult, len(elems))
	failed := false
	for i, w := range *out.Data {
		switch {
		case failed && !continueOnFailure:
			// Run one after another: after the first failure the ledger
			// answers the rest "context canceled" without running them.
			results[i].Err = &Error{Op: op, Element: i + 1, Err: ErrNotRun}
		case w.ResponseType == bulkResultError:
			failed = true
			results[i].Err = resp.elementError(i, w.bulkResultWire)
		case w.Data == nil:
			return nil, resp.unexpected(fmt.Errorf("%w: element %d has no transaction", ErrUnexpectedResponse, i+1))
		default:
			tx, err := w.Data.transaction()
			if err != nil {
				return nil, resp.unexpected(fmt.Errorf("%w: element %d: %v", ErrUnexpectedResponse, i+1, err))
			}
			results[i].Transaction = tx
		}
	}
	return results, nil
}
