package ledgeradapter_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

const conformanceLedger = "wallets-002"

// TestConformanceListAccounts reads many accounts per request, through the
// validating transport: absent ones are left out, duplicates asked once,
// more than a page split over requests.
func TestConformanceListAccounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupConformance(t, nil)
	c := s.client
	require.NoError(t, c.EnsureLedger(ctx, conformanceLedger))

	var addrs []string
	for i := range 130 {
		a := fmt.Sprintf("wallets:w%03d:main", i)
		addrs = append(addrs, a)
		if i%2 == 0 {
			_, err := c.AddAccountMetadata(ctx, conformanceLedger, a, map[string]string{"n": strconv.Itoa(i)}, "")
			require.NoError(t, err)
		}
	}
	_, err := c.AddAccountMetadata(ctx, conformanceLedger, "wallets:w000:other", map[string]string{"n": "x"}, "")
	require.NoError(t, err)

	before := s.validator.Operations()["v2ListAccounts"]
	got, err := c.ListAccounts(ctx, conformanceLedger, append(addrs, addrs[0], addrs[1]))
	require.NoError(t, err)
	require.Equal(t, before+2, s.validator.Operations()["v2ListAccounts"], "130 distinct addresses: two requests")
	require.Len(t, got, 65, "absent accounts are left out")
	for i, a := range addrs {
		acc, ok := got[a]
		require.Equal(t, i%2 == 0, ok, a)
		if ok {
			require.Equal(t, a, acc.Address)
			require.Equal(t, map[string]string{"n": strconv.Itoa(i)}, acc.Metadata)
			require.False(t, acc.FirstUsage.IsZero())
		}
	}
	require.NotContains(t, got, "wallets:w000:other", "only full addresses match")

	// Each account as GetAccount reads it.
	one, found, err := c.GetAccount(ctx, conformanceLedger, addrs[4])
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, one, got[addrs[4]])

	got, err = c.ListAccounts(ctx, conformanceLedger, nil)
	require.NoError(t, err)
	require.Empty(t, got)

	_, err = c.ListAccounts(ctx, conformanceLedger, []string{"wallets:w1:main", "wallets::main"})
	require.ErrorIs(t, err, ledgeradapter.ErrInvalidAddress, "a pattern is never sent")
	require.False(t, ledgeradapter.IsRetryable(err))

	_, err = c.ListAccounts(ctx, "nope", addrs[:3])
	require.ErrorIs(t, err, ledgeradapter.ErrLedgerNotFound)
}

// TestConformanceListAccountsCappedPage: a server whose page is smaller
// than asked (MAX_PAGE_SIZE below 100) answers hasMore; the client asks
// again for what is missing, in requests that fit the page, rather than
// follow an offset cursor.
func TestConformanceListAccountsCappedPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupConformance(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/"+conformanceLedger+"/accounts" {
				q := r.URL.Query()
				if n, _ := strconv.Atoi(q.Get("pageSize")); n > 4 {
					q.Set("pageSize", "4")
					r.URL.RawQuery = q.Encode()
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	c := s.client
	require.NoError(t, c.EnsureLedger(ctx, conformanceLedger))
	var addrs []string
	for i := range 10 {
		a := fmt.Sprintf("a:%02d", i)
		addrs = append(addrs, a)
		if i != 5 {
			_, err := c.AddAccountMetadata(ctx, conformanceLedger, a, nil, "")
			require.NoError(t, err)
		}
	}
	got, err := c.ListAccounts(ctx, conformanceLedger, addrs)
	require.NoError(t, err)
	require.Len(t, got, 9)
	require.NotContains(t, got, "a:05")
	// 1 capped page of 4, then the 6 left in pages of 4: 1 + 2.
	require.Equal(t, 3, s.validator.Operations()["v2ListAccounts"])

	got, err = c.ListAccounts(ctx, conformanceLedger, addrs)
	require.NoError(t, err)
	require.Len(t, got, 9)
	require.Equal(t, 6, s.validator.Operations()["v2ListAccounts"], "the cap is remembered: 3 requests of 4")
}

// TestConformanceBulk writes through POST /v2/{ledger}/_bulk: each element
// with its own key, one key space with the single endpoint, per-element
// errors classified as the single call's; sequential bulks, whose results
// keep their order and carry the elements' log ids.
func TestConformanceBulk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupConformance(t, nil)
	c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: s.url, HTTPClient: &http.Client{Transport: s.validator}, SequentialBulk: true})
	require.NoError(t, err)
	require.NoError(t, c.EnsureLedger(ctx, conformanceLedger))

	md := func(i int) map[string]string { return map[string]string{"wallets/id": strconv.Itoa(i)} }
	_, err = c.AddAccountMetadata(ctx, conformanceLedger, "a:single", md(0), "k-single")
	require.NoError(t, err)

	elems := []ledgeradapter.BulkAddMetadata{
		{Address: "a:1", Metadata: md(1), IdempotencyKey: "k1"},
		{Address: "a:2", Metadata: md(2), IdempotencyKey: "k-single"},      // the key holds another input
		{Address: "a::3", Metadata: md(3), IdempotencyKey: "k3"},           // never sent
		{Address: "a:single", Metadata: md(0), IdempotencyKey: "k-single"}, // a replay of the single write
		{Address: "a:4", Metadata: nil},                                    // no key, nil sent as {}
		{Address: "a:1", Metadata: md(1), IdempotencyKey: "k1"},            // a replay within the bulk
	}
	res, err := c.Bulk(ctx, conformanceLedger, elems)
	require.NoError(t, err)
	require.Len(t, res, len(elems))
	require.Equal(t, 1, s.validator.Operations()["v2CreateBulk"])

	require.NoError(t, res[0].Err)
	require.Positive(t, res[0].LogID)

	le := requireLedgerError(t, res[1].Err)
	require.ErrorIs(t, res[1].Err, ledgeradapter.ErrIdempotencyConflict)
	require.ErrorIs(t, res[1].Err, ledgeradapter.ErrValidation)
	require.False(t, ledgeradapter.IsRetryable(res[1].Err))
	require.Equal(t, http.StatusBadRequest, le.StatusCode)
	require.Equal(t, 2, le.Element)
	require.Contains(t, le.Error(), "element 2: 400 VALIDATION: invalid idempotency hash when using idempotency key 'k-single'")

	require.ErrorIs(t, res[2].Err, ledgeradapter.ErrInvalidAddress)
	require.False(t, ledgeradapter.IsRetryable(res[2].Err))

	require.NoError(t, res[3].Err, "a replay succeeds, the hit is not reported")
	require.NoError(t, res[4].Err)
	require.NoError(t, res[5].Err)
	require.Equal(t, res[0].LogID, res[5].LogID, "a hit answers the stored log")

	got, err := c.ListAccounts(ctx, conformanceLedger, []string{"a:1", "a:2", "a:4", "a:single"})
	require.NoError(t, err)
	require.Equal(t, md(1), got["a:1"].Metadata)
	require.NotContains(t, got, "a:2")
	require.Equal(t, map[string]string{}, got["a:4"].Metadata)

	logs, err := c.AllLogs(ctx, conformanceLedger)
	require.NoError(t, err)
	require.Len(t, logs, 3, "the single write, a:1 and a:4: nothing else was applied")
	sm, err := logs[0].SetMetadata()
	require.NoError(t, err)
	require.Equal(t, ledgeradapter.SetMetadataData{TargetType: "ACCOUNT", TargetID: "a:4", Metadata: map[string]string{}}, sm)

	// The single endpoint sees the bulk's key as its own.
	r, err := c.AddAccountMetadata(ctx, conformanceLedger, "a:1", md(1), "k1")
	require.NoError(t, err)
	require.True(t, r.IdempotencyHit)

	// More than BULK_MAX_SIZE elements go in several requests.
	many := make([]ledgeradapter.BulkAddMetadata, 150)
	for i := range many {
		many[i] = ledgeradapter.BulkAddMetadata{Address: fmt.Sprintf("b:%d", i), Metadata: md(i), IdempotencyKey: fmt.Sprintf("kb%d", i)}
	}
	res, err = c.Bulk(ctx, conformanceLedger, many)
	require.NoError(t, err)
	require.Len(t, res, 150)
	for i, r := range res {
		require.NoError(t, r.Err, i)
	}
	require.Equal(t, 3, s.validator.Operations()["v2CreateBulk"])

	// A request that fails as a whole.
	_, err = c.Bulk(ctx, "nope", elems[:1])
	require.ErrorIs(t, err, ledgeradapter.ErrLedgerNotFound)
	require.False(t, ledgeradapter.IsRetryable(err))
}

// TestConformanceParallelBulk is TestConformanceBulk's first bulk with the
// default client, whose bulks ask for parallel=true: the same outcomes, the
// element that failed found by the key its error names, no log ids.
func TestConformanceParallelBulk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupConformance(t, nil)
	c := s.client
	require.NoError(t, c.EnsureLedger(ctx, conformanceLedger))
	md := func(i int) map[string]string { return map[string]string{"wallets/id": strconv.Itoa(i)} }
	_, err := c.AddAccountMetadata(ctx, conformanceLedger, "a:single", md(0), "k-single")
	require.NoError(t, err)

	elems := []ledgeradapter.BulkAddMetadata{
		{Address: "a:1", Metadata: md(1), IdempotencyKey: "k1"},
		{Address: "a:2", Metadata: md(2), IdempotencyKey: "k-single"},      // the key holds another input
		{Address: "a::3", Metadata: md(3), IdempotencyKey: "k3"},           // never sent
		{Address: "a:single", Metadata: md(0), IdempotencyKey: "k-single"}, // a replay of the single write
		{Address: "a:4", Metadata: nil, IdempotencyKey: "k4"},
	}
	res, err := c.Bulk(ctx, conformanceLedger, elems)
	require.NoError(t, err)
	require.Len(t, res, len(elems))
	// The failure names k-single, which two elements have: which one failed
	// is unknown, and the four sent go again, in order.
	require.Equal(t, 2, s.validator.Operations()["v2CreateBulk"])
	require.NoError(t, res[0].Err)
	require.ErrorIs(t, res[1].Err, ledgeradapter.ErrIdempotencyConflict)
	require.Equal(t, 2, requireLedgerError(t, res[1].Err).Element)
	require.ErrorIs(t, res[2].Err, ledgeradapter.ErrInvalidAddress)
	require.NoError(t, res[3].Err)
	require.NoError(t, res[4].Err)

	// A failure that names a key of its own needs no second request.
	res, err = c.Bulk(ctx, conformanceLedger, []ledgeradapter.BulkAddMetadata{
		{Address: "a:5", Metadata: md(5), IdempotencyKey: "k5"},
		{Address: "a:6", Metadata: md(6), IdempotencyKey: "k1"}, // k1 holds a:1's write
	})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.ErrorIs(t, res[1].Err, ledgeradapter.ErrIdempotencyConflict)
	require.Equal(t, 3, s.validator.Operations()["v2CreateBulk"])
	for _, r := range res {
		require.Zero(t, r.LogID)
	}
	got, err := c.ListAccounts(ctx, conformanceLedger, []string{"a:1", "a:2", "a:4"})
	require.NoError(t, err)
	require.Equal(t, md(1), got["a:1"].Metadata)
	require.NotContains(t, got, "a:2")
	require.Contains(t, got, "a:4")

	// Keys may hold quotes: a failure names the key it quotes whole, not
	// another key that is the start of it.
	_, err = c.AddAccountMetadata(ctx, conformanceLedger, "a:q", md(7), "k'q")
	require.NoError(t, err)
	res, err = c.Bulk(ctx, conformanceLedger, []ledgeradapter.BulkAddMetadata{
		{Address: "a:8", Metadata: md(8), IdempotencyKey: "k"},
		{Address: "a:9", Metadata: md(9), IdempotencyKey: "k'q"}, // k'q holds a:q's write
	})
	require.NoError(t, err)
	require.NoError(t, res[0].Err, "k was applied")
	require.ErrorIs(t, res[1].Err, ledgeradapter.ErrIdempotencyConflict, "k'q was refused")
	got, err = c.ListAccounts(ctx, conformanceLedger, []string{"a:8", "a:9"})
	require.NoError(t, err)
	require.Contains(t, got, "a:8")
	require.NotContains(t, got, "a:9")
}

// TestConformanceBulkWire sends bulks the client never makes, to check the
// embedded ledger's answers against the subset: a body it cannot read, too
// many elements, continueOnFailure=false and atomic=true.
func TestConformanceBulkWire(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := setupConformance(t, nil)
	require.NoError(t, s.client.EnsureLedger(ctx, conformanceLedger))
	hc := &http.Client{Transport: s.validator}
	post := func(query string, elems []map[string]any) (int, map[string]any) {
		t.Helper()
		b, err := json.Marshal(elems)
		require.NoError(t, err)
		resp, err := hc.Post(s.url+"/v2/"+conformanceLedger+"/_bulk"+query, "application/json", bytes.NewReader(b))
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		var out map[string]any
		require.NoError(t, json.Unmarshal(raw, &out), "%s", raw)
		return resp.StatusCode, out
	}
	el := func(addr, ik string, md map[string]string) map[string]any {
		return map[string]any{"action": "ADD_METADATA", "ik": ik, "data": map[string]any{"targetType": "ACCOUNT", "targetId": addr, "metadata": md}}
	}
	x := map[string]string{"x": "1"}
	_, _ = post("", []map[string]any{el("c:0", "kc", x)})

	// A failure stops the rest unless continueOnFailure.
	status, out := post("", []map[string]any{el("c:1", "k1", x), el("c:2", "kc", map[string]string{"x": "2"}), el("c:3", "k3", x)})
	require.Equal(t, http.StatusBadRequest, status)
	data := out["data"].([]any)
	require.Equal(t, "ADD_METADATA", data[0].(map[string]any)["responseType"])
	require.Equal(t, "VALIDATION", data[1].(map[string]any)["errorCode"])
	require.Equal(t, map[string]any{"responseType": "ERROR", "logID": 0.0, "errorCode": "INTERNAL", "errorDescription": "context canceled"}, data[2])

	// atomic: a failure rolls everything back, results still say applied.
	status, out = post("?atomic=true&continueOnFailure=true", []map[string]any{el("d:1", "kd1", x), el("d:2", "kc", map[string]string{"x": "2"})})
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "ADD_METADATA", out["data"].([]any)[0].(map[string]any)["responseType"])
	got, err := s.client.ListAccounts(ctx, conformanceLedger, []string{"c:1", "c:3", "d:1"})
	require.NoError(t, err)
	require.Contains(t, got, "c:1")
	require.NotContains(t, got, "c:3", "not applied after the failure")
	require.NotContains(t, got, "d:1", "rolled back with its atomic bulk")

	status, out = post("?atomic=true&parallel=true", []map[string]any{el("e:1", "", x)})
	require.Equal(t, http.StatusPreconditionFailed, status)
	require.Equal(t, "VALIDATION", out["errorCode"])

	many := make([]map[string]any, 101)
	for i := range many {
		many[i] = el(fmt.Sprintf("e:%d", i), "", x)
	}
	status, out = post("", many)
	require.Equal(t, http.StatusRequestEntityTooLarge, status)
	require.Equal(t, "BULK_SIZE_EXCEEDED", out["errorCode"])

	// Outside the schema, so not through the validator.
	resp, err := http.Post(s.url+"/v2/"+conformanceLedger+"/_bulk", "application/json", strings.NewReader(`[{"action":"ADD_METADATA","data":{"targetType":"ACCOUNT","targetId":"a:1","metadata":{"n":1}}}]`))
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "a metadata value that is not a string refuses the whole bulk")

	require.Equal(t, 5, s.validator.Operations()["v2CreateBulk"])
}

// TestBulkAnswers classifies what a ledger may answer to a bulk: element
// errors of a ledger before v2.4.12 (all INTERNAL), and answers about the
// request as a whole.
func TestBulkAnswers(t *testing.T) {
	t.Parallel()
	elems := []ledgeradapter.BulkAddMetadata{{Address: "a:1", IdempotencyKey: "k1"}, {Address: "a:2", IdempotencyKey: "k2"}}

	t.Run("element errors of an older ledger", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{SequentialBulk: true}, answer(http.StatusBadRequest, `{"data":[
			{"responseType":"ERROR","logID":0,"errorCode":"INTERNAL","errorDescription":"invalid idempotency hash when using idempotency key 'k1', has computed 'a' but 'b' is stored"},
			{"responseType":"ERROR","logID":0,"errorCode":"INTERNAL","errorDescription":"context canceled"}]}`))
		res, err := s.client.Bulk(context.Background(), "l", elems)
		require.NoError(t, err)
		require.ErrorIs(t, res[0].Err, ledgeradapter.ErrIdempotencyConflict)
		require.False(t, ledgeradapter.IsRetryable(res[0].Err))
		require.True(t, ledgeradapter.IsRetryable(res[1].Err), "INTERNAL is retried, as on the single endpoint")
		require.Equal(t, http.StatusInternalServerError, requireLedgerError(t, res[1].Err).StatusCode)
	})

	for _, tc := range []struct {
		name      string
		status    int
		body      string
		retryable bool
		is        error
	}{
		{"a body the ledger could not read", 400, `{"errorCode":"VALIDATION","errorMessage":"invalid character"}`, false, ledgeradapter.ErrValidation},
		{"too many elements", 413, `{"errorCode":"BULK_SIZE_EXCEEDED","errorMessage":"bulk size exceeded, max size is 1"}`, false, nil},
		{"unknown ledger", 404, `{"errorCode":"LEDGER_NOT_FOUND","errorMessage":"ledger l not found"}`, false, ledgeradapter.ErrLedgerNotFound},
		{"a result short", 200, `{"data":[{"responseType":"ADD_METADATA","logID":1}]}`, true, ledgeradapter.ErrUnexpectedResponse},
		{"not a ledger's answer", 200, `<html></html>`, true, ledgeradapter.ErrUnexpectedResponse},
		{"an unknown result", 200, `{"data":[{"responseType":"ADD_METADATA","logID":1},{"responseType":"NEW","logID":2}]}`, true, ledgeradapter.ErrUnexpectedResponse},
		{"internal", 500, `{"errorCode":"INTERNAL","errorMessage":"Internal error."}`, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := setupStub(t, ledgeradapter.Config{}, answer(tc.status, tc.body))
			res, err := s.client.Bulk(context.Background(), "l", elems)
			require.Error(t, err)
			require.Nil(t, res)
			require.Equal(t, tc.retryable, ledgeradapter.IsRetryable(err), "%v", err)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
		})
	}
}

// TestParallelBulkAnswers: a parallel bulk's results come in the order the
// elements finished. All applied needs no order; a failure that names its
// key is its element's; any other failure makes the elements whose fate is
// unknown go again at once in a sequential bulk, whose results are in order.
func TestParallelBulkAnswers(t *testing.T) {
	t.Parallel()
	elems := []ledgeradapter.BulkAddMetadata{
		{Address: "a:1", IdempotencyKey: "k1"}, {Address: "a:2", IdempotencyKey: "k2"}, {Address: "a:3", IdempotencyKey: "k3"},
	}
	type exchange struct {
		query string
		n     int
	}
	serve := func(answers ...string) (*stub, *[]exchange) {
		var mu sync.Mutex
		var seen []exchange
		s := setupStub(t, ledgeradapter.Config{}, func(w http.ResponseWriter, r *http.Request) {
			var body []json.RawMessage
			_ = json.NewDecoder(r.Body).Decode(&body)
			mu.Lock()
			i := len(seen)
			seen = append(seen, exchange{r.URL.RawQuery, len(body)})
			mu.Unlock()
			status := http.StatusOK
			if strings.Contains(answers[i], `"ERROR"`) {
				status = http.StatusBadRequest
			}
			answer(status, answers[i])(w, r)
		})
		return s, &seen
	}
	const ok = `{"responseType":"ADD_METADATA","logID":7}`

	t.Run("all applied", func(t *testing.T) {
		t.Parallel()
		s, seen := serve(`{"data":[` + ok + `,` + ok + `,` + ok + `]}`)
		res, err := s.client.Bulk(context.Background(), "l", elems)
		require.NoError(t, err)
		for _, r := range res {
			require.NoError(t, r.Err)
			require.Zero(t, r.LogID, "which log is whose is unknown")
		}
		require.Equal(t, []exchange{{"continueOnFailure=true&parallel=true", 3}}, *seen)
	})

	t.Run("a failure that names its key", func(t *testing.T) {
		t.Parallel()
		s, seen := serve(`{"data":[` + ok + `,{"responseType":"ERROR","logID":0,"errorCode":"VALIDATION","errorDescription":"invalid idempotency hash when using idempotency key 'k3', has computed 'a' but 'b' is stored"},` + ok + `]}`)
		res, err := s.client.Bulk(context.Background(), "l", elems)
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.NoError(t, res[1].Err)
		require.ErrorIs(t, res[2].Err, ledgeradapter.ErrIdempotencyConflict, "k3's, wherever the ledger put it")
		require.Equal(t, 3, requireLedgerError(t, res[2].Err).Element)
		require.Len(t, *seen, 1)
	})

	t.Run("a failure of unknown element", func(t *testing.T) {
		t.Parallel()
		s, seen := serve(
			`{"data":[{"responseType":"ERROR","logID":0,"errorCode":"INTERNAL","errorDescription":"conflict on insert"},`+ok+`,`+ok+`]}`,
			`{"data":[`+ok+`,{"responseType":"ERROR","logID":0,"errorCode":"INTERNAL","errorDescription":"conflict on insert"},`+ok+`]}`,
		)
		res, err := s.client.Bulk(context.Background(), "l", elems)
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.Equal(t, "INTERNAL", requireLedgerError(t, res[1].Err).ErrorCode)
		require.True(t, ledgeradapter.IsRetryable(res[1].Err))
		require.NoError(t, res[2].Err)
		require.Equal(t, []exchange{{"continueOnFailure=true&parallel=true", 3}, {"continueOnFailure=true", 3}}, *seen,
			"asked again in order, every element: any may be the one that failed")
	})
}
