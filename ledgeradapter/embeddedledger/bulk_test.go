package embeddedledger_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// call is do with the answer decoded.
func (b *bundle) call(t *testing.T, method, path, body string, header ...string) (int, map[string]any) {
	t.Helper()
	a := b.do(t, method, path, body, header...)
	var out map[string]any
	if len(a.body) > 0 {
		out = a.json(t)
	}
	return a.status, out
}

func (b *bundle) list(t *testing.T, query, filter string) (int, map[string]any) {
	t.Helper()
	return b.call(t, http.MethodGet, "/v2/l/accounts"+query, filter)
}

func addresses(t *testing.T, out map[string]any) []string {
	t.Helper()
	var got []string
	for _, a := range out["cursor"].(map[string]any)["data"].([]any) {
		got = append(got, a.(map[string]any)["address"].(string))
	}
	return got
}

func TestListAccountsFilters(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	status, _ := b.call(t, http.MethodPost, "/v2/l", "")
	require.Equal(t, http.StatusNoContent, status)
	for _, a := range []string{"users:1", "users:2", "users:2:main", "banks:1", "users:3"} {
		status, _ := b.call(t, http.MethodPost, "/v2/l/accounts/"+a+"/metadata", fmt.Sprintf(`{"kind":%q,"n":%q}`, strings.Split(a, ":")[0], a))
		require.Equal(t, http.StatusNoContent, status)
	}

	for _, tc := range []struct {
		name, filter string
		want         []string
	}{
		{"no filter", ``, []string{"banks:1", "users:1", "users:2", "users:2:main", "users:3"}},
		{"$match full address", `{"$match":{"address":"users:2"}}`, []string{"users:2"}},
		{"$match pattern", `{"$match":{"address":"users:"}}`, []string{"users:1", "users:2", "users:3"}},
		{"$match open pattern", `{"$match":{"address":"users:..."}}`, []string{"users:1", "users:2", "users:2:main", "users:3"}},
		{"$in", `{"$in":{"address":["users:3","banks:1","nobody:1"]}}`, []string{"banks:1", "users:3"}},
		{"$or of $match", `{"$or":[{"$match":{"address":"users:1"}},{"$match":{"address":"banks:1"}}]}`, []string{"banks:1", "users:1"}},
		{"$and", `{"$and":[{"$in":{"address":["users:1","users:2"]}},{"$match":{"metadata[n]":"users:2"}}]}`, []string{"users:2"}},
		{"$not", `{"$not":{"$match":{"metadata[kind]":"users"}}}`, []string{"banks:1"}},
		{"$exists", `{"$exists":{"metadata":"kind"}}`, []string{"banks:1", "users:1", "users:2", "users:2:main", "users:3"}},
	} {
		status, out := b.list(t, "", tc.filter)
		require.Equal(t, http.StatusOK, status, tc.name)
		require.Equal(t, tc.want, addresses(t, out), tc.name)
	}

	// The "query" parameter is read before the body, as in the real ledger.
	status, out := b.list(t, "?query="+url.QueryEscape(`{"$match":{"address":"banks:1"}}`), `{"$match":{"address":"users:1"}}`)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, []string{"banks:1"}, addresses(t, out))

	for _, filter := range []string{
		`{"$in":{"address":["users:"]}}`, // IN only takes full addresses
		`{"$lt":{"balance":3}}`,          // not implemented here
		`{"$match":{"address":3}}`,
		`{"$match":{"address":"a","x":"b"}}`,
		`[]`,
		`{"$or":{}}`,
	} {
		status, out := b.list(t, "", filter)
		require.Equal(t, http.StatusBadRequest, status, filter)
		require.Equal(t, "VALIDATION", out["errorCode"], filter)
	}
}

func TestListAccountsPages(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.call(t, http.MethodPost, "/v2/l", "")
	for i := range 7 {
		b.call(t, http.MethodPost, fmt.Sprintf("/v2/l/accounts/a:%d/metadata", i), `{}`)
	}
	status, out := b.list(t, "?pageSize=3&sort=address:desc", `{"$match":{"address":"a:"}}`)
	require.Equal(t, http.StatusOK, status)
	cur := out["cursor"].(map[string]any)
	require.Equal(t, []string{"a:6", "a:5", "a:4"}, addresses(t, out))
	require.Equal(t, true, cur["hasMore"])
	require.NotContains(t, cur, "previous")

	status, out = b.list(t, "?cursor="+cur["next"].(string), "")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, []string{"a:3", "a:2", "a:1"}, addresses(t, out), "the cursor carries the filter and the order")
	cur = out["cursor"].(map[string]any)
	status, out = b.list(t, "?cursor="+cur["next"].(string), "")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, []string{"a:0"}, addresses(t, out))
	require.Equal(t, false, out["cursor"].(map[string]any)["hasMore"])
	status, out = b.list(t, "?cursor="+out["cursor"].(map[string]any)["previous"].(string), "")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, []string{"a:3", "a:2", "a:1"}, addresses(t, out))

	status, _ = b.list(t, "?cursor=nonsense", "")
	require.Equal(t, http.StatusBadRequest, status)
	status, _ = b.list(t, "?sort=first_usage", "")
	require.Equal(t, http.StatusBadRequest, status)
	status, out = b.list(t, "?pageSize=1000", "")
	require.Equal(t, http.StatusOK, status)
	require.EqualValues(t, embeddedledger.MaxPageSize, out["cursor"].(map[string]any)["pageSize"], "capped")
	status, out = b.call(t, http.MethodGet, "/v2/nope/accounts", "")
	require.Equal(t, http.StatusNotFound, status)
	require.Equal(t, "LEDGER_NOT_FOUND", out["errorCode"])
}

func TestBulkElements(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.call(t, http.MethodPost, "/v2/l", "")
	status, _ := b.call(t, http.MethodPost, "/v2/l/accounts/a:1/metadata", `{"x":"1","y":"2"}`, "Idempotency-Key", "single")
	require.Equal(t, http.StatusNoContent, status)

	status, out := b.call(t, http.MethodPost, "/v2/l/_bulk?continueOnFailure=true", `[
		{"action":"DELETE_METADATA","ik":"del","data":{"targetType":"ACCOUNT","targetId":"a:1","key":"y"}},
		{"action":"ADD_METADATA","ik":"single","data":{"targetType":"ACCOUNT","targetId":"a:1","metadata":{"x":"1","y":"2"}}},
		{"action":"ADD_METADATA","ik":"del","data":{"targetType":"ACCOUNT","targetId":"a:1","metadata":{}}},
		{"action":"ADD_METADATA","data":{"targetType":"TRANSACTION","targetId":3,"metadata":{}}},
		{"action":"ADD_METADATA","data":{"targetType":"LEDGER","targetId":"x","metadata":{}}},
		{"action":"ADD_METADATA","data":{"targetType":"ACCOUNT","targetId":7,"metadata":{}}},
		{"action":"REVERT_TRANSACTION","data":{"id":4}},
		{"action":"CREATE_TRANSACTION","data":{"postings":[]}}
	]`)
	require.Equal(t, http.StatusBadRequest, status)
	data := out["data"].([]any)
	result := func(i int) map[string]any { return data[i].(map[string]any) }
	require.Equal(t, map[string]any{"responseType": "DELETE_METADATA", "logID": 2.0}, result(0))
	require.Equal(t, map[string]any{"responseType": "ADD_METADATA", "logID": 1.0}, result(1), "a hit on the single write's key answers its log")
	require.Equal(t, "VALIDATION", result(2)["errorCode"], "a key of another operation")
	require.Contains(t, result(2)["errorDescription"], "invalid idempotency hash when using idempotency key 'del'")
	require.Equal(t, "NOT_FOUND", result(3)["errorCode"])
	require.Equal(t, "INTERNAL", result(4)["errorCode"])
	require.Equal(t, "INTERNAL", result(5)["errorCode"])
	require.Equal(t, "NOT_FOUND", result(6)["errorCode"])
	require.Equal(t, "NO_POSTINGS", result(7)["errorCode"], "as the single endpoint answers it")
	for i := 2; i < len(data); i++ {
		require.Equal(t, "ERROR", result(i)["responseType"])
		require.Zero(t, result(i)["logID"])
	}

	status, out = b.call(t, http.MethodGet, "/v2/l/accounts/a:1", "")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, map[string]any{"x": "1"}, out["data"].(map[string]any)["metadata"])

	// The single endpoint shares the bulk's key space.
	status, _ = b.call(t, http.MethodDelete, "/v2/l/accounts/a:1/metadata/y", "", "Idempotency-Key", "del")
	require.Equal(t, http.StatusNoContent, status)

	for _, tc := range []struct {
		name, query, body, contentType string
		status                         int
		code                           string
	}{
		{"unknown action", "", `[{"action":"FLY","data":{}}]`, "", 400, "VALIDATION"},
		{"no data", "", `[{"action":"ADD_METADATA"}]`, "", 400, "VALIDATION"},
		{"not an array", "", `{}`, "", 400, "VALIDATION"},
		{"streamed", "", `[]`, "application/vnd.formance.ledger.api.v2.bulk+json-stream", 400, "VALIDATION"},
		{"atomic and parallel", "?atomic=true&parallel=1", `[]`, "", 412, "VALIDATION"},
	} {
		status, out := b.call(t, http.MethodPost, "/v2/l/_bulk"+tc.query, tc.body, "Content-Type", tc.contentType)
		require.Equal(t, tc.status, status, tc.name)
		require.Equal(t, tc.code, out["errorCode"], tc.name)
	}
	status, out = b.call(t, http.MethodPost, "/v2/l/_bulk?schemaVersion=v1", `[{"action":"ADD_METADATA","data":{"targetType":"ACCOUNT","targetId":"a:9","metadata":{}}}]`)
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "NOT_FOUND", out["data"].([]any)[0].(map[string]any)["errorCode"])
	status, out = b.call(t, http.MethodPost, "/v2/l/_bulk", `[]`)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, []any{}, out["data"])
}

// BenchmarkBulk is the embedded ledger's cost of a bulk of 100 balance
// writes, each with its own key, as the worker's Batcher sends them.
func BenchmarkBulk(b *testing.B) {
	l, err := embeddedledger.Open(b.TempDir())
	require.NoError(b, err)
	h := l.Handler()
	defer func() { _ = l.Close() }()
	serve := func(method, path, body string) int {
		req, _ := http.NewRequest(method, path, strings.NewReader(body))
		rec := &recorder{header: http.Header{}}
		h.ServeHTTP(rec, req)
		return rec.status
	}
	require.Equal(b, http.StatusNoContent, serve(http.MethodPost, "/v2/bench", ""))
	n := 0
	for b.Loop() {
		var sb strings.Builder
		sb.WriteByte('[')
		for i := range 100 {
			n++
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `{"action":"ADD_METADATA","ik":"k%d","data":{"targetType":"ACCOUNT","targetId":"w:%d:main","metadata":{"wallets/balances":"true","wallets/id":"%d"}}}`, n, n, n)
		}
		sb.WriteByte(']')
		require.Equal(b, http.StatusOK, serve(http.MethodPost, "/v2/bench/_bulk?continueOnFailure=true", sb.String()))
	}
}

// recorder is a minimal ResponseWriter that keeps the status only.
type recorder struct {
	header http.Header
	status int
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(s int)   { r.status = s }
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return len(p), nil
}

// TestBulkChainsLogsAsSingleWrites: a bulk appends the same logs, hashes
// included, as its elements sent one by one; a failed element leaves no
// gap in the chain.
func TestBulkChainsLogsAsSingleWrites(t *testing.T) {
	t.Parallel()
	bulk, single := setup(t, ""), setup(t, "")
	for _, b := range []*bundle{bulk, single} {
		b.createLedger(t, "l")
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a:0", `{"n":"0"}`, "k0").status)
	}
	status, _ := bulk.call(t, http.MethodPost, "/v2/l/_bulk?continueOnFailure=true", `[
		{"action":"ADD_METADATA","ik":"k1","data":{"targetType":"ACCOUNT","targetId":"a:1","metadata":{"n":"1"}}},
		{"action":"ADD_METADATA","ik":"k0","data":{"targetType":"ACCOUNT","targetId":"a:2","metadata":{"n":"2"}}},
		{"action":"ADD_METADATA","ik":"k3","data":{"targetType":"ACCOUNT","targetId":"a:3","metadata":{"n":"3"}}}
	]`)
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, http.StatusNoContent, single.addMetadata(t, "l", "a:1", `{"n":"1"}`, "k1").status)
	require.Equal(t, http.StatusNoContent, single.addMetadata(t, "l", "a:3", `{"n":"3"}`, "k3").status)
	// And a single write after the bulk chains on its last log.
	for _, b := range []*bundle{bulk, single} {
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a:4", `{"n":"4"}`, "k4").status)
	}
	a := bulk.do(t, http.MethodGet, "/v2/l/logs", "")
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, string(single.do(t, http.MethodGet, "/v2/l/logs", "").body), string(a.body))
	require.Len(t, a.json(t)["cursor"].(map[string]any)["data"], 4)
}

// An atomic bulk that fails after replaying a key answers the replayed
// transaction's old id; the ids the bulk took stay taken, but the sequence
// must not go back to that old id: the next transaction would take an id
// already used, and every one after it fail.
func TestFailedAtomicBulkKeepsTheSequence(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.call(t, http.MethodPost, "/v2/l", "")
	credit := `{"postings":[{"source":"world","destination":"a:1","amount":10,"asset":"USD"}]}`
	for i := 1; i <= 3; i++ {
		status, _ := b.call(t, http.MethodPost, "/v2/l/transactions", credit, "Idempotency-Key", fmt.Sprintf("k%d", i))
		require.Equal(t, http.StatusOK, status)
	}
	status, _ := b.call(t, http.MethodPost, "/v2/l/_bulk?atomic=true", `[
		{"action":"CREATE_TRANSACTION","ik":"k1","data":{"postings":[{"source":"world","destination":"a:1","amount":10,"asset":"USD"}]}},
		{"action":"CREATE_TRANSACTION","data":{"postings":[{"source":"empty","destination":"a:1","amount":10,"asset":"USD"}]}}
	]`)
	require.Equal(t, http.StatusBadRequest, status)
	status, out := b.call(t, http.MethodPost, "/v2/l/transactions", credit, "Idempotency-Key", "k4")
	require.Equal(t, http.StatusOK, status, "%v", out)
	require.Greater(t, out["data"].(map[string]any)["id"].(float64), 3.0)
}
