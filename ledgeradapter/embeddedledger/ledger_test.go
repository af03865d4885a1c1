package embeddedledger_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// ---- helpers ----

type bundle struct {
	ledger *embeddedledger.Ledger
	srv    *httptest.Server
	clock  *clock
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// setup serves a ledger over real HTTP; dir "" keeps it in memory.
func setup(t *testing.T, dir string) *bundle {
	t.Helper()
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)}
	l, err := embeddedledger.Open(dir, embeddedledger.WithClock(clk.now))
	require.NoError(t, err)
	srv := httptest.NewServer(l.Handler())
	t.Cleanup(func() {
		srv.Close()
		require.NoError(t, l.Close())
	})
	return &bundle{ledger: l, srv: srv, clock: clk}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(a.body, &m), "body %q", a.body)
	return m
}

// requireError checks the real ledger's error shape.
func (a answer) requireError(t *testing.T, status int, code string) map[string]any {
	t.Helper()
	require.Equal(t, status, a.status, "body %s", a.body)
	m := a.json(t)
	require.Equal(t, code, m["errorCode"], "body %s", a.body)
	require.NotEmpty(t, m["errorMessage"])
	return m
}

func (b *bundle) do(t *testing.T, method, path, body string, header ...string) answer {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, b.srv.URL+path, r)
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	a := answer{status: resp.StatusCode, header: resp.Header, body: raw}
	if !a.isRouteNotFound() {
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s %s", method, path)
	}
	return a
}

// isRouteNotFound reports the real router's answer to a path that is no
// route: Go's plain-text 404, not the ledger's error shape.
func (a answer) isRouteNotFound() bool {
	return a.status == http.StatusNotFound && string(a.body) == "404 page not found\n" &&
		a.header.Get("Content-Type") == "text/plain; charset=utf-8"
}

func (a answer) requireRouteNotFound(t *testing.T) {
	t.Helper()
	require.True(t, a.isRouteNotFound(), "status %d, Content-Type %q, body %q", a.status, a.header.Get("Content-Type"), a.body)
}

func (b *bundle) createLedger(t *testing.T, name string) {
	t.Helper()
	a := b.do(t, http.MethodPost, "/v2/"+name, "")
	require.Equal(t, http.StatusNoContent, a.status, "body %s", a.body)
}

func (b *bundle) addMetadata(t *testing.T, ledger, address, body, ik string) answer {
	t.Helper()
	var h []string
	if ik != "" {
		h = []string{"Idempotency-Key", ik}
	}
	return b.do(t, http.MethodPost, "/v2/"+ledger+"/accounts/"+address+"/metadata", body, h...)
}

type account struct {
	Address       string            `json:"address"`
	Metadata      map[string]string `json:"metadata"`
	FirstUsage    time.Time         `json:"firstUsage"`
	InsertionDate time.Time         `json:"insertionDate"`
	UpdatedAt     time.Time         `json:"updatedAt"`
	Volumes       json.RawMessage   `json:"volumes"`
}

func (b *bundle) account(t *testing.T, ledger, address string) account {
	t.Helper()
	a := b.do(t, http.MethodGet, "/v2/"+ledger+"/accounts/"+address+"?expand=volumes", "")
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	var body struct {
		Data account `json:"data"`
	}
	require.NoError(t, json.Unmarshal(a.body, &body))
	return body.Data
}

type logEntry struct {
	ID             int64           `json:"id"`
	Type           string          `json:"type"`
	Data           json.RawMessage `json:"data"`
	Date           time.Time       `json:"date"`
	IdempotencyKey string          `json:"idempotencyKey"`
	Hash           string          `json:"hash"`
}

type logsCursor struct {
	PageSize int        `json:"pageSize"`
	HasMore  bool       `json:"hasMore"`
	Previous string     `json:"previous"`
	Next     string     `json:"next"`
	Data     []logEntry `json:"data"`
}

func (b *bundle) logs(t *testing.T, ledger, query string) logsCursor {
	t.Helper()
	a := b.do(t, http.MethodGet, "/v2/"+ledger+"/logs"+query, "")
	require.Equal(t, http.StatusOK, a.status, "body %s", a.body)
	var body struct {
		Cursor *logsCursor `json:"cursor"`
	}
	require.NoError(t, json.Unmarshal(a.body, &body))
	require.NotNil(t, body.Cursor)
	return *body.Cursor
}

func (b *bundle) allLogs(t *testing.T, ledger string) []logEntry {
	t.Helper()
	var all []logEntry
	q := "?pageSize=100"
	for {
		c := b.logs(t, ledger, q)
		all = append(all, c.Data...)
		if !c.HasMore {
			return all
		}
		q = "?cursor=" + c.Next
	}
}

// realHash is CONTRACT §3's formula, written independently of the server.
func realHash(t *testing.T, address string, metadata map[string]string) string {
	t.Helper()
	h := sha256.New()
	require.NoError(t, json.NewEncoder(h).Encode(struct {
		Address  string
		Metadata map[string]string
	}{address, metadata}))
	return base64.URLEncoding.EncodeToString(h.Sum(nil))
}

// ---- tests ----

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/_healthcheck", "").status)
	b.do(t, http.MethodPost, "/_healthcheck", "").requireError(t, http.StatusMethodNotAllowed, "VALIDATION")
}

func TestLedgers(t *testing.T) {
	t.Parallel()

	t.Run("missing ledger is 404 NOT_FOUND, then created, then already exists", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		m := b.do(t, http.MethodGet, "/v2/main", "").requireError(t, http.StatusNotFound, "NOT_FOUND")
		require.Equal(t, "not found", m["errorMessage"])

		b.createLedger(t, "main")
		b.do(t, http.MethodPost, "/v2/main", "{}").requireError(t, http.StatusBadRequest, "LEDGER_ALREADY_EXISTS")

		a := b.do(t, http.MethodGet, "/v2/main", "")
		require.Equal(t, http.StatusOK, a.status)
		data := a.json(t)["data"].(map[string]any)
		require.Equal(t, "main", data["name"])
		require.Equal(t, "_default", data["bucket"])
		require.EqualValues(t, 1, data["id"])
		require.Equal(t, map[string]any{}, data["metadata"])
		require.Equal(t, "2026-01-02T03:04:05.123456Z", data["addedAt"])
		require.Equal(t, map[string]any{
			"ACCOUNT_METADATA_HISTORY": "SYNC", "HASH_LOGS": "SYNC", "MOVES_HISTORY": "ON",
			"MOVES_HISTORY_POST_COMMIT_EFFECTIVE_VOLUMES": "SYNC", "TRANSACTION_METADATA_HISTORY": "SYNC",
		}, data["features"])
	})

	t.Run("body sets bucket and metadata", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		a := b.do(t, http.MethodPost, "/v2/wallets-002", `{"bucket":"wallets-002","metadata":{"owner":"me"},"features":{"HASH_LOGS":"SYNC"}}`)
		require.Equal(t, http.StatusNoContent, a.status, "body %s", a.body)
		data := b.do(t, http.MethodGet, "/v2/wallets-002", "").json(t)["data"].(map[string]any)
		require.Equal(t, "wallets-002", data["bucket"])
		require.Equal(t, map[string]any{"owner": "me"}, data["metadata"])
	})

	t.Run("invalid requests are 400 VALIDATION", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		for _, name := range []string{"_", "_info", "_healthcheck", strings.Repeat("a", 64), "a.b", "a%20b"} {
			b.do(t, http.MethodPost, "/v2/"+name, "").requireError(t, http.StatusBadRequest, "VALIDATION")
		}
		for _, body := range []string{`{`, `[]`, `{"bucket":"a b"}`, `{"features":{"NOPE":"ON"}}`, `{"features":{"HASH_LOGS":"DISABLED"}}`} {
			b.do(t, http.MethodPost, "/v2/ok", body).requireError(t, http.StatusBadRequest, "VALIDATION")
		}
		b.do(t, http.MethodGet, "/v2/ok", "").requireError(t, http.StatusNotFound, "NOT_FOUND")
		b.createLedger(t, strings.Repeat("a", 63))
	})
}

func TestLedgerScopedRoutesOnUnknownLedger(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.do(t, http.MethodGet, "/v2/nope/accounts/a", "").requireError(t, http.StatusNotFound, "LEDGER_NOT_FOUND")
	b.do(t, http.MethodPost, "/v2/nope/accounts/a/metadata", "{}").requireError(t, http.StatusNotFound, "LEDGER_NOT_FOUND")
	b.do(t, http.MethodDelete, "/v2/nope/accounts/a/metadata/k", "").requireError(t, http.StatusNotFound, "LEDGER_NOT_FOUND")
	b.do(t, http.MethodGet, "/v2/nope/logs", "").requireError(t, http.StatusNotFound, "LEDGER_NOT_FOUND")
	// The ledger check comes before the body check, as in the real middleware.
	b.do(t, http.MethodPost, "/v2/nope/accounts/a/metadata", "[]").requireError(t, http.StatusNotFound, "LEDGER_NOT_FOUND")
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.createLedger(t, "l")
	b.do(t, http.MethodGet, "/nope", "").requireRouteNotFound(t)
	b.do(t, http.MethodGet, "/v2/l/nope", "").requireRouteNotFound(t)
	b.do(t, http.MethodGet, "/v2/l/volumes", "").requireRouteNotFound(t)
	b.do(t, http.MethodGet, "/v2/l/accounts//metadata", "").requireRouteNotFound(t)

	a := b.do(t, http.MethodPut, "/v2/l/accounts/a/metadata", "{}")
	a.requireError(t, http.StatusMethodNotAllowed, "VALIDATION")
	require.Equal(t, "POST", a.header.Get("Allow"))
	b.do(t, http.MethodDelete, "/v2/l", "").requireError(t, http.StatusMethodNotAllowed, "VALIDATION")
	b.do(t, http.MethodPost, "/v2/l/logs", "").requireError(t, http.StatusMethodNotAllowed, "VALIDATION")

	// Path segments are percent-decoded; an escaped "/" stays in its segment.
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "users%3A001", `{"k":"v"}`, "").status)
	require.Equal(t, "users:001", b.account(t, "l", "users:001").Address)
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a%2Fb", `{}`, "").status)
	require.Equal(t, "a/b", b.account(t, "l", "a%2Fb").Address)
}

func TestGetAccount(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.createLedger(t, "l")

	m := b.do(t, http.MethodGet, "/v2/l/accounts/users:1", "").requireError(t, http.StatusNotFound, "NOT_FOUND")
	require.Equal(t, "not found", m["errorMessage"])

	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "users:1", `{"a":"1"}`, "").status)
	a := b.do(t, http.MethodGet, "/v2/l/accounts/users:1?expand=volumes&expand=effectiveVolumes&pit=2030-01-01T00:00:00Z", "")
	require.Equal(t, http.StatusOK, a.status)
	data := a.json(t)["data"].(map[string]any)
	require.Equal(t, map[string]any{
		"address": "users:1", "metadata": map[string]any{"a": "1"},
		"firstUsage": "2026-01-02T03:04:05.123456Z", "insertionDate": "2026-01-02T03:04:05.123456Z",
		"updatedAt": "2026-01-02T03:04:05.123456Z",
	}, data, "no volumes: the account never moved funds")

	b.do(t, http.MethodGet, "/v2/l/accounts/users:1?pit=yesterday", "").requireError(t, http.StatusBadRequest, "VALIDATION")
}

func TestAddMetadataMergesAndCreates(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.createLedger(t, "l")
	created := b.clock.now().Truncate(time.Microsecond)

	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "w:1:main", `{"a":"1","b":"2"}`, "").status)
	acc := b.account(t, "l", "w:1:main")
	require.Equal(t, map[string]string{"a": "1", "b": "2"}, acc.Metadata)
	require.Equal(t, created, acc.FirstUsage)
	require.Equal(t, created, acc.InsertionDate)
	require.Equal(t, created, acc.UpdatedAt)
	require.Empty(t, acc.Volumes)

	b.clock.advance(time.Minute)
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "w:1:main", `{"b":"3","c":"4"}`, "").status)
	acc = b.account(t, "l", "w:1:main")
	require.Equal(t, map[string]string{"a": "1", "b": "3", "c": "4"}, acc.Metadata, "shallow merge: sent keys overwrite, others stay")
	require.Equal(t, created, acc.FirstUsage)
	require.Equal(t, created.Add(time.Minute), acc.UpdatedAt)

	// A write the account already contains changes nothing but is logged.
	b.clock.advance(time.Minute)
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "w:1:main", `{"a":"1"}`, "").status)
	require.Equal(t, created.Add(time.Minute), b.account(t, "l", "w:1:main").UpdatedAt)

	logs := b.allLogs(t, "l")
	require.Len(t, logs, 3)
	for _, l := range logs {
		require.Equal(t, "SET_METADATA", l.Type)
	}
	require.JSONEq(t, `{"targetType":"ACCOUNT","targetId":"w:1:main","metadata":{"a":"1"}}`, string(logs[0].Data))
}

func TestAddMetadataBody(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.createLedger(t, "l")
	for _, body := range []string{``, `{"a":1}`, `{"a":{"b":"c"}}`, `["a"]`, `"a"`, `{`} {
		b.addMetadata(t, "l", "x", body, "").requireError(t, http.StatusBadRequest, "VALIDATION")
	}
	b.do(t, http.MethodGet, "/v2/l/accounts/x", "").requireError(t, http.StatusNotFound, "NOT_FOUND")

	// null is {}: it creates the account with no metadata.
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "x", `null`, "").status)
	require.Equal(t, map[string]string{}, b.account(t, "l", "x").Metadata)

	// schemaVersion: no schema exists here, so every version is unknown.
	b.do(t, http.MethodPost, "/v2/l/accounts/x/metadata?schemaVersion=v1", `{}`).requireError(t, http.StatusNotFound, "NOT_FOUND")
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()

	t.Run("replay is a hit that re-applies nothing and logs nothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		b.createLedger(t, "l")
		first := b.addMetadata(t, "l", "a", `{"x":"1","y":"2"}`, "k1")
		require.Equal(t, http.StatusNoContent, first.status)
		require.Empty(t, first.header.Get("Idempotency-Hit"))
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a", `{"x":"9"}`, "").status)

		// Key order does not matter: the hash is over sorted keys.
		replay := b.addMetadata(t, "l", "a", `{"y":"2","x":"1"}`, "k1")
		require.Equal(t, http.StatusNoContent, replay.status)
		require.Equal(t, "true", replay.header.Get("Idempotency-Hit"))
		require.Empty(t, replay.body)
		require.Equal(t, map[string]string{"x": "9", "y": "2"}, b.account(t, "l", "a").Metadata)

		logs := b.allLogs(t, "l")
		require.Len(t, logs, 2)
		require.Equal(t, "", logs[0].IdempotencyKey)
		require.Equal(t, "k1", logs[1].IdempotencyKey)
	})

	t.Run("reuse with other input is 400 VALIDATION with the real message", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		b.createLedger(t, "l")
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a", `{"x":"1"}`, "k1").status)
		stored := realHash(t, "a", map[string]string{"x": "1"})

		cases := []struct {
			name, address, body string
			computed            string
		}{
			{"other body", "a", `{"x":"2"}`, realHash(t, "a", map[string]string{"x": "2"})},
			{"other address", "b", `{"x":"1"}`, realHash(t, "b", map[string]string{"x": "1"})},
			{"null is not {}", "a", `null`, realHash(t, "a", nil)},
		}
		for _, c := range cases {
			m := b.addMetadata(t, "l", c.address, c.body, "k1").requireError(t, http.StatusBadRequest, "VALIDATION")
			require.Equal(t, fmt.Sprintf(
				"invalid idempotency hash when using idempotency key 'k1', has computed '%s' but '%s' is stored",
				c.computed, stored), m["errorMessage"], c.name)
		}
		// One key space per ledger shared by every write: a delete with it too.
		b.do(t, http.MethodDelete, "/v2/l/accounts/a/metadata/x", "", "Idempotency-Key", "k1").
			requireError(t, http.StatusBadRequest, "VALIDATION")
		b.do(t, http.MethodGet, "/v2/l/accounts/b", "").requireError(t, http.StatusNotFound, "NOT_FOUND")
		require.Len(t, b.allLogs(t, "l"), 1)

		// {} and null hash differently, in both directions.
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "c", `null`, "k2").status)
		b.addMetadata(t, "l", "c", `{}`, "k2").requireError(t, http.StatusBadRequest, "VALIDATION")
	})

	t.Run("ledgers do not share keys", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		b.createLedger(t, "l1")
		b.createLedger(t, "l2")
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l1", "a", `{"x":"1"}`, "k").status)
		a := b.addMetadata(t, "l2", "a", `{"x":"2"}`, "k")
		require.Equal(t, http.StatusNoContent, a.status)
		require.Empty(t, a.header.Get("Idempotency-Hit"))
	})

	t.Run("dry run neither applies nor consumes the key", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		b.createLedger(t, "l")
		for _, q := range []string{"?dryRun=true", "?dryRun=1", "?dryRun=TRUE"} {
			a := b.do(t, http.MethodPost, "/v2/l/accounts/a/metadata"+q, `{"x":"1"}`, "Idempotency-Key", "k")
			require.Equal(t, http.StatusNoContent, a.status)
		}
		b.do(t, http.MethodGet, "/v2/l/accounts/a", "").requireError(t, http.StatusNotFound, "NOT_FOUND")
		require.Empty(t, b.allLogs(t, "l"))

		a := b.addMetadata(t, "l", "a", `{"x":"1"}`, "k")
		require.Equal(t, http.StatusNoContent, a.status)
		require.Empty(t, a.header.Get("Idempotency-Hit"))
		require.Len(t, b.allLogs(t, "l"), 1)
	})

	t.Run("keys over 255 characters are a 500 like the real one", func(t *testing.T) {
		t.Parallel()
		b := setup(t, "")
		b.createLedger(t, "l")
		b.addMetadata(t, "l", "a", `{}`, strings.Repeat("k", 256)).requireError(t, http.StatusInternalServerError, "INTERNAL")
		b.do(t, http.MethodGet, "/v2/l/accounts/a", "").requireError(t, http.StatusNotFound, "NOT_FOUND")
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a", `{}`, strings.Repeat("é", 255)).status)
	})

	t.Run("concurrent first writes with one key make one log; losers answer 500 or a hit", func(t *testing.T) {
		t.Parallel()
		b := setup(t, t.TempDir())
		b.createLedger(t, "l")
		const n = 20
		hits := make([]string, n)
		statuses := make([]int, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/v2/l/accounts/w:1:gift/metadata", strings.NewReader(`{"a":"1"}`))
				req.Header.Set("Idempotency-Key", "same")
				resp, err := b.srv.Client().Do(req)
				if err != nil {
					return
				}
				defer resp.Body.Close()
				statuses[i], hits[i] = resp.StatusCode, resp.Header.Get("Idempotency-Hit")
			})
		}
		close(start)
		wg.Wait()
		applied := 0
		for i := range n {
			switch {
			case statuses[i] == http.StatusNoContent && hits[i] == "":
				applied++
			case statuses[i] == http.StatusNoContent && hits[i] == "true":
			case statuses[i] == http.StatusInternalServerError:
				// A loser of the race, as in the real ledger: its retry
				// is a hit.
				retry := b.addMetadata(t, "l", "w:1:gift", `{"a":"1"}`, "same")
				require.Equal(t, http.StatusNoContent, retry.status, "body %s", retry.body)
				require.Equal(t, "true", retry.header.Get("Idempotency-Hit"))
			default:
				require.Failf(t, "unexpected answer", "status %d, hit %q", statuses[i], hits[i])
			}
		}
		require.Equal(t, 1, applied, "exactly one request applied the write")
		require.Len(t, b.allLogs(t, "l"), 1)
	})
}

func TestDeleteMetadata(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.createLedger(t, "l")
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a", `{"x":"1","y":"2"}`, "").status)
	b.clock.advance(time.Second)
	require.Equal(t, http.StatusNoContent, b.do(t, http.MethodDelete, "/v2/l/accounts/a/metadata/x", "").status)
	acc := b.account(t, "l", "a")
	require.Equal(t, map[string]string{"y": "2"}, acc.Metadata)
	require.True(t, acc.UpdatedAt.After(acc.InsertionDate))

	// A missing account or key is a 204 too, and is logged.
	require.Equal(t, http.StatusNoContent, b.do(t, http.MethodDelete, "/v2/l/accounts/ghost/metadata/x", "").status)
	b.do(t, http.MethodGet, "/v2/l/accounts/ghost", "").requireError(t, http.StatusNotFound, "NOT_FOUND")

	a := b.do(t, http.MethodDelete, "/v2/l/accounts/a/metadata/y", "", "Idempotency-Key", "d")
	require.Equal(t, http.StatusNoContent, a.status)
	a = b.do(t, http.MethodDelete, "/v2/l/accounts/a/metadata/y", "", "Idempotency-Key", "d")
	require.Equal(t, "true", a.header.Get("Idempotency-Hit"))

	logs := b.allLogs(t, "l")
	require.Len(t, logs, 4)
	require.Equal(t, "DELETE_METADATA", logs[0].Type)
	require.JSONEq(t, `{"targetType":"ACCOUNT","targetId":"a","key":"y"}`, string(logs[0].Data))
}

func TestLogsPagination(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.createLedger(t, "l")
	b.createLedger(t, "other")
	require.Equal(t, logsCursor{PageSize: 15, Data: []logEntry{}}, b.logs(t, "l", ""))
	for i := 1; i <= 35; i++ {
		require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", fmt.Sprintf("a:%d", i), `{"k":"v"}`, fmt.Sprintf("ik-%d", i)).status)
	}
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "other", "a", `{}`, "").status)

	ids := func(c logsCursor) []int64 {
		var out []int64
		for _, l := range c.Data {
			out = append(out, l.ID)
		}
		return out
	}
	seq := func(from, to int64) []int64 {
		var out []int64
		for i := from; i >= to; i-- {
			out = append(out, i)
		}
		return out
	}

	first := b.logs(t, "l", "")
	require.Equal(t, 15, first.PageSize)
	require.Equal(t, seq(35, 21), ids(first), "newest first")
	require.True(t, first.HasMore)
	require.Empty(t, first.Previous, "the first page has no previous")

	p1 := b.logs(t, "l", "?pageSize=10")
	require.Equal(t, seq(35, 26), ids(p1))
	p2 := b.logs(t, "l", "?cursor="+p1.Next)
	require.Equal(t, seq(25, 16), ids(p2))
	require.Equal(t, 10, p2.PageSize)
	require.NotEmpty(t, p2.Previous)
	back := b.logs(t, "l", "?cursor="+p2.Previous)
	require.Equal(t, seq(35, 26), ids(back))
	require.Empty(t, back.Previous)
	p3 := b.logs(t, "l", "?cursor="+p2.Next+"&pageSize=2")
	require.Equal(t, seq(15, 6), ids(p3), "a cursor carries its page size")
	p4 := b.logs(t, "l", "?cursor="+p3.Next)
	require.Equal(t, seq(5, 1), ids(p4))
	require.False(t, p4.HasMore)
	require.Empty(t, p4.Next)

	require.Equal(t, 100, b.logs(t, "l", "?pageSize=1000").PageSize, "capped at the max page size")
	require.Equal(t, 15, b.logs(t, "l", "?pageSize=0").PageSize)
	b.do(t, http.MethodGet, "/v2/l/logs?pageSize=-1", "").requireError(t, http.StatusBadRequest, "VALIDATION")
	b.do(t, http.MethodGet, "/v2/l/logs?pageSize=x", "").requireError(t, http.StatusBadRequest, "VALIDATION")
	b.do(t, http.MethodGet, "/v2/l/logs?cursor=garbage", "").requireError(t, http.StatusBadRequest, "VALIDATION")
	b.do(t, http.MethodGet, "/v2/l/logs?sort=id:asc", "").requireError(t, http.StatusBadRequest, "VALIDATION")

	// Log shape, and a chained hash that differs from log to log.
	l := first.Data[0]
	require.Equal(t, "SET_METADATA", l.Type)
	require.Equal(t, "ik-35", l.IdempotencyKey)
	require.Equal(t, b.clock.now().Truncate(time.Microsecond), l.Date)
	require.JSONEq(t, `{"targetType":"ACCOUNT","targetId":"a:35","metadata":{"k":"v"}}`, string(l.Data))
	hashes := map[string]bool{}
	for _, l := range b.allLogs(t, "l") {
		raw, err := base64.StdEncoding.DecodeString(l.Hash)
		require.NoError(t, err)
		require.Len(t, raw, sha256.Size)
		hashes[l.Hash] = true
	}
	require.Len(t, hashes, 35)

	other := b.logs(t, "other", "")
	require.Equal(t, []int64{1}, ids(other), "log ids are per ledger")
}

func TestRestartKeepsEverything(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	l, err := embeddedledger.Open(dir)
	require.NoError(t, err)
	srv := httptest.NewServer(l.Handler())
	b := &bundle{ledger: l, srv: srv}
	b.createLedger(t, "l")
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "w:1:gift", `{"a":"1"}`, "k1").status)
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "w:1:gift", `{"b":"2"}`, "").status)
	before := b.allLogs(t, "l")
	srv.Close()
	require.NoError(t, l.Close())

	b = setup(t, dir)
	require.Equal(t, map[string]string{"a": "1", "b": "2"}, b.account(t, "l", "w:1:gift").Metadata)
	require.Equal(t, before, b.allLogs(t, "l"))

	replay := b.addMetadata(t, "l", "w:1:gift", `{"a":"1"}`, "k1")
	require.Equal(t, http.StatusNoContent, replay.status)
	require.Equal(t, "true", replay.header.Get("Idempotency-Hit"), "the key survives a restart")
	b.addMetadata(t, "l", "w:1:gift", `{"a":"2"}`, "k1").requireError(t, http.StatusBadRequest, "VALIDATION")

	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "w:1:gift", `{"c":"3"}`, "").status)
	after := b.allLogs(t, "l")
	require.Len(t, after, 3)
	require.EqualValues(t, 3, after[0].ID, "log ids continue after a restart")
	b.do(t, http.MethodPost, "/v2/l", "").requireError(t, http.StatusBadRequest, "LEDGER_ALREADY_EXISTS")
}

func TestOpenRejectsNewerSchema(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l, err := embeddedledger.Open(dir)
	require.NoError(t, err)
	require.NoError(t, l.Close())
	require.NoError(t, bumpUserVersion(dir))
	_, err = embeddedledger.Open(dir)
	require.ErrorContains(t, err, "newer than this build")
}

var idRe = regexp.MustCompile(`^[0-9]+$`)

func TestLogIDsAreIntegers(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	b.createLedger(t, "l")
	require.Equal(t, http.StatusNoContent, b.addMetadata(t, "l", "a", `{}`, "").status)
	raw := b.do(t, http.MethodGet, "/v2/l/logs", "").body
	var body struct {
		Cursor struct {
			Data []map[string]json.RawMessage `json:"data"`
		} `json:"cursor"`
	}
	require.NoError(t, json.Unmarshal(raw, &body))
	require.Regexp(t, idRe, string(body.Cursor.Data[0]["id"]))
	for _, k := range []string{"id", "type", "data", "date", "hash", "idempotencyKey"} {
		require.Contains(t, body.Cursor.Data[0], k)
	}
}

func BenchmarkAddAccountMetadata(b *testing.B) {
	l, err := embeddedledger.Open(b.TempDir())
	require.NoError(b, err)
	srv := httptest.NewServer(l.Handler())
	defer func() {
		srv.Close()
		_ = l.Close()
	}()
	hc := srv.Client()
	post := func(path, body, ik string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
		if ik != "" {
			req.Header.Set("Idempotency-Key", ik)
		}
		resp, err := hc.Do(req)
		require.NoError(b, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		require.Equal(b, http.StatusNoContent, resp.StatusCode)
	}
	post("/v2/bench", "", "")
	b.ResetTimer()
	i := 0
	for b.Loop() {
		i++
		post(fmt.Sprintf("/v2/bench/accounts/w:%d:main/metadata", i), `{"wallets/balances":"true","wallets/id":"x"}`, fmt.Sprint("k", i))
	}
}
