package ledgeradapter_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// validatingTransport checks every exchange against the subset OpenAPI
// description with kin-openapi, plus what OpenAPI cannot say (CONTRACT §0:
// every answer is application/json, a 204 has no body). Mismatches are
// collected, and fail the test at cleanup.
type validatingTransport struct {
	router routers.Router
	base   http.RoundTripper

	mu         sync.Mutex
	mismatches []string
	operations map[string]int // operationId -> exchanges
}

func newValidatingTransport(t *testing.T, base http.RoundTripper) *validatingTransport {
	t.Helper()
	doc := loadSpec(t, subsetSpec)
	doc.Servers = nil // match on the path alone, whatever the test server's port
	router, err := legacy.NewRouter(doc)
	require.NoError(t, err)
	return &validatingTransport{router: router, base: base, operations: map[string]int{}}
}

func (v *validatingTransport) mismatch(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.mismatches = append(v.mismatches, fmt.Sprintf(format, args...))
}

func (v *validatingTransport) Mismatches() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.mismatches...)
}

func (v *validatingTransport) Operations() map[string]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string]int{}
	for k, n := range v.operations {
		out[k] = n
	}
	return out
}

func (v *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	var body []byte
	if req.Body != nil {
		var err error
		if body, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		_ = req.Body.Close()
	}
	where := req.Method + " " + req.URL.Path

	route, pathParams, err := v.router.FindRoute(req)
	var in *openapi3filter.RequestValidationInput
	if err != nil {
		v.mismatch("%s: no such operation: %v", where, err)
	} else {
		v.mu.Lock()
		v.operations[route.Operation.OperationID]++
		v.mu.Unlock()
		vreq := req.Clone(ctx)
		vreq.Body = io.NopCloser(bytes.NewReader(body))
		in = &openapi3filter.RequestValidationInput{
			Request: vreq, PathParams: pathParams, Route: route,
			Options: &openapi3filter.Options{MultiError: true},
		}
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			v.mismatch("%s: request: %v", where, err)
		}
	}

	out := req.Clone(ctx)
	if body != nil {
		out.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := v.base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	respBody, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(respBody))

	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		v.mismatch("%s: %d: Content-Type %q, want application/json", where, resp.StatusCode, ct)
	}
	if resp.StatusCode == http.StatusNoContent && len(respBody) > 0 {
		v.mismatch("%s: 204 with a body %q", where, respBody)
	}
	if in != nil {
		rin := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
			Body:    io.NopCloser(bytes.NewReader(respBody)),
			Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
		}
		if err := openapi3filter.ValidateResponse(ctx, rin); err != nil {
			v.mismatch("%s: %d response %s: %v", where, resp.StatusCode, respBody, err)
		}
	}
	return resp, nil
}

type conformance struct {
	client    *ledgeradapter.Client
	validator *validatingTransport
	ledger    *embeddedledger.Ledger
	url       string
}

// setupConformance serves an embedded ledger over real HTTP (wrapped by
// middleware, when given) and returns a Client whose every exchange is
// validated; any mismatch fails the test.
func setupConformance(t *testing.T, middleware func(http.Handler) http.Handler) *conformance {
	t.Helper()
	l := testutil.StartLedger(t, testutil.LedgerOptions{InMemory: true, Wrap: middleware})
	v := newValidatingTransport(t, l.Server.Client().Transport)
	c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: l.URL, HTTPClient: &http.Client{Transport: v}})
	require.NoError(t, err)
	t.Cleanup(func() {
		require.Empty(t, v.Mismatches(), "exchanges that do not conform to %s", subsetSpec)
	})
	return &conformance{client: c, validator: v, ledger: l.Ledger, url: l.URL}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupConformance(t, nil)
	c := s.client

	require.NoError(t, c.Healthcheck(ctx))

	// Ensure twice: the first creates (GET 404 NOT_FOUND, POST 204), the
	// second finds it (GET 200).
	require.NoError(t, c.EnsureLedger(ctx, "wallets-002"))
	require.NoError(t, c.EnsureLedger(ctx, "wallets-002"))

	const addr = "wallets:w1:gift"
	_, found, err := c.GetAccount(ctx, "wallets-002", addr)
	require.NoError(t, err)
	require.False(t, found, "never-touched account is absent, not an error")

	md := map[string]string{"wallets/id": "w1", "wallets/balances": "true", "wallets/balances/name": "gift"}
	res, err := c.AddAccountMetadata(ctx, "wallets-002", addr, md, "ik-1")
	require.NoError(t, err)
	require.False(t, res.IdempotencyHit)

	acc, found, err := c.GetAccount(ctx, "wallets-002", addr)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, addr, acc.Address)
	require.Equal(t, md, acc.Metadata)
	require.Empty(t, acc.Volumes)
	require.False(t, acc.FirstUsage.IsZero())
	require.Equal(t, acc.FirstUsage, acc.InsertionDate)
	require.Equal(t, acc.FirstUsage, acc.UpdatedAt)

	res, err = c.AddAccountMetadata(ctx, "wallets-002", addr, md, "ik-1")
	require.NoError(t, err)
	require.True(t, res.IdempotencyHit, "same key, same input: a replay")

	_, err = c.AddAccountMetadata(ctx, "wallets-002", addr, map[string]string{"wallets/id": "other"}, "ik-1")
	var le *ledgeradapter.Error
	require.ErrorAs(t, err, &le)
	require.Equal(t, http.StatusBadRequest, le.StatusCode)
	require.Equal(t, ledgeradapter.CodeValidation, le.ErrorCode)
	require.Contains(t, le.ErrorMessage, "invalid idempotency hash when using idempotency key 'ik-1'")
	require.False(t, le.Retryable())
	require.False(t, ledgeradapter.IsRetryable(err))
	require.ErrorIs(t, err, ledgeradapter.ErrIdempotencyConflict)
	require.ErrorIs(t, err, ledgeradapter.ErrValidation)

	// Without a key, and with a nil map (sent as {}).
	for i := range 5 {
		_, err := c.AddAccountMetadata(ctx, "wallets-002", fmt.Sprintf("wallets:w%d:main", i), map[string]string{"n": fmt.Sprint(i)}, "")
		require.NoError(t, err)
	}
	_, err = c.AddAccountMetadata(ctx, "wallets-002", addr, nil, "")
	require.NoError(t, err)
	// Writes merge: a second key's marker does not erase the first's.
	_, err = c.AddAccountMetadata(ctx, "wallets-002", addr, map[string]string{"wallets/balances/idempotency/x": "{}"}, "")
	require.NoError(t, err)
	acc, _, err = c.GetAccount(ctx, "wallets-002", addr)
	require.NoError(t, err)
	require.Len(t, acc.Metadata, len(md)+1)
	require.Equal(t, "w1", acc.Metadata["wallets/id"])

	// Logs: 8 writes were applied (the replay and the conflict were not).
	first, err := c.ListLogs(ctx, "wallets-002", 3, "")
	require.NoError(t, err)
	require.Equal(t, 3, first.PageSize)
	require.True(t, first.HasMore)
	require.Empty(t, first.Previous)
	require.Equal(t, []uint64{8, 7, 6}, logIDs(first.Data))
	second, err := c.ListLogs(ctx, "wallets-002", 0, first.Next)
	require.NoError(t, err)
	require.Equal(t, []uint64{5, 4, 3}, logIDs(second.Data))
	require.NotEmpty(t, second.Previous)
	back, err := c.ListLogs(ctx, "wallets-002", 0, second.Previous)
	require.NoError(t, err)
	require.Equal(t, logIDs(first.Data), logIDs(back.Data))
	last, err := c.ListLogs(ctx, "wallets-002", 0, second.Next)
	require.NoError(t, err)
	require.Equal(t, []uint64{2, 1}, logIDs(last.Data))
	require.False(t, last.HasMore)

	all, err := c.AllLogs(ctx, "wallets-002")
	require.NoError(t, err)
	require.Equal(t, []uint64{8, 7, 6, 5, 4, 3, 2, 1}, logIDs(all))
	oldest := all[len(all)-1]
	require.Equal(t, ledgeradapter.LogTypeSetMetadata, oldest.Type)
	require.Equal(t, "ik-1", oldest.IdempotencyKey)
	require.NotEmpty(t, oldest.Hash)
	require.False(t, oldest.Date.IsZero())
	sm, err := oldest.SetMetadata()
	require.NoError(t, err)
	require.Equal(t, ledgeradapter.SetMetadataData{TargetType: "ACCOUNT", TargetID: addr, Metadata: md}, sm)
	sm, err = all[1].SetMetadata()
	require.NoError(t, err)
	require.Equal(t, map[string]string{}, sm.Metadata, "nil is sent as {}")

	// A ledger-scoped call on an unknown ledger: permanent LEDGER_NOT_FOUND.
	_, _, err = c.GetAccount(ctx, "nope", addr)
	require.ErrorIs(t, err, ledgeradapter.ErrLedgerNotFound)
	require.False(t, ledgeradapter.IsRetryable(err))
	_, err = c.AddAccountMetadata(ctx, "nope", addr, md, "")
	require.ErrorIs(t, err, ledgeradapter.ErrLedgerNotFound)

	// Transactions: created, replayed, refused, read and listed.
	credit := ledgeradapter.TransactionRequest{
		Script:   &ledgeradapter.Script{Plain: creditScript, Vars: map[string]string{"amount": "USD/2 100", "dest": "wallets:w1:main"}},
		Metadata: map[string]string{"wallets/transaction": "true"},
	}
	created, err := c.CreateTransaction(ctx, "wallets-002", credit, "tx-1")
	require.NoError(t, err)
	replayed, err := c.CreateTransaction(ctx, "wallets-002", credit, "tx-1")
	require.NoError(t, err)
	require.True(t, replayed.IdempotencyHit)
	require.Equal(t, created.Transaction.ID, replayed.Transaction.ID)
	_, err = c.CreateTransaction(ctx, "wallets-002", debit("wallets:w1:main", "101"), "")
	require.ErrorIs(t, err, ledgeradapter.ErrInsufficientFunds)
	withRef := ledgeradapter.TransactionRequest{Postings: []ledgeradapter.Posting{{Source: "world", Destination: "a", Amount: big1(), Asset: "USD"}}, Reference: "r"}
	_, err = c.CreateTransaction(ctx, "wallets-002", withRef, "")
	require.NoError(t, err)
	_, err = c.CreateTransaction(ctx, "wallets-002", withRef, "")
	require.ErrorIs(t, err, ledgeradapter.ErrReferenceConflict)
	_, err = c.CreateTransaction(ctx, "nope", credit, "")
	require.ErrorIs(t, err, ledgeradapter.ErrLedgerNotFound)
	got, found, err := c.GetTransaction(ctx, "wallets-002", created.Transaction.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, created.Transaction.Postings, got.Postings)
	_, found, err = c.GetTransaction(ctx, "wallets-002", 999)
	require.NoError(t, err)
	require.False(t, found)
	page, err := c.ListTransactions(ctx, "wallets-002", map[string]any{"$match": map[string]any{"account": "wallets:w1:main"}}, 0, "")
	require.NoError(t, err)
	require.Len(t, page.Data, 1)
	require.Equal(t, created.Transaction.ID, page.Data[0].ID)
	bulk, err := c.BulkTransactions(ctx, "wallets-002", []ledgeradapter.BulkTransaction{
		{Request: credit, IdempotencyKey: "tx-1"}, {Request: debit("wallets:w1:main", "1000")}, {Request: debit("wallets:w1:main", "1")},
	})
	require.NoError(t, err)
	require.Equal(t, created.Transaction.ID, bulk[0].Transaction.ID)
	require.ErrorIs(t, bulk[1].Err, ledgeradapter.ErrInsufficientFunds)
	require.NoError(t, bulk[2].Err)
	all, err = c.AllLogs(ctx, "wallets-002")
	require.NoError(t, err)
	require.Equal(t, ledgeradapter.LogTypeNewTransaction, all[0].Type)

	for _, op := range []string{"healthcheck", "v2GetLedger", "v2CreateLedger", "v2GetAccount", "v2AddMetadataToAccount", "v2ListLogs",
		"v2CreateTransaction", "v2GetTransaction", "v2ListTransactions", "v2CreateBulk"} {
		require.Positive(t, s.validator.Operations()[op], "operation %s was not exercised", op)
	}
}

// TestConformanceEnsureLedgerRace: another process creates the ledger
// between our GET (404) and our POST, which then answers
// LEDGER_ALREADY_EXISTS; EnsureLedger reads the ledger again and takes that
// as success.
func TestConformanceEnsureLedgerRace(t *testing.T) {
	t.Parallel()
	var once sync.Once
	s := setupConformance(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r)
			if r.Method == http.MethodGet && r.URL.Path == "/v2/raced" {
				once.Do(func() {
					rec := httptest.NewRecorder()
					next.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v2/raced", strings.NewReader(`{}`)))
				})
			}
		})
	})
	require.NoError(t, s.client.EnsureLedger(context.Background(), "raced"))
	ops := s.validator.Operations()
	require.Equal(t, 2, ops["v2GetLedger"], "before the creation, and after it was refused")
	require.Equal(t, 1, ops["v2CreateLedger"])
}

// TestValidatorCatchesMismatches makes sure the validating transport is not
// a no-op: a server that drifts from the contract is reported.
func TestValidatorCatchesMismatches(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "/accounts/"):
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"data":{"address":"a"}}`) // metadata is required
		default:
			w.WriteHeader(http.StatusTeapot) // an error without the JSON error body
		}
	}))
	t.Cleanup(srv.Close)
	v := newValidatingTransport(t, srv.Client().Transport)
	c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: srv.URL, HTTPClient: &http.Client{Transport: v}})
	require.NoError(t, err)

	_, _, _ = c.GetAccount(context.Background(), "l", "a")
	_ = c.EnsureLedger(context.Background(), "l")
	m := strings.Join(v.Mismatches(), "\n")
	require.Contains(t, m, `property "metadata" is missing`)
	require.Contains(t, m, `Content-Type "", want application/json`)
	require.Contains(t, m, "response header Content-Type has unexpected value")

	// And a request outside the subset is reported too.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/l/volumes", nil)
	resp, err := (&http.Client{Transport: v}).Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Contains(t, strings.Join(v.Mismatches(), "\n"), "GET /v2/l/volumes: no such operation")
}

func logIDs(logs []ledgeradapter.Log) []uint64 {
	out := make([]uint64, 0, len(logs))
	for _, l := range logs {
		out = append(out, l.ID)
	}
	return out
}
