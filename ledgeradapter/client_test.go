package ledgeradapter_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// stub is a small ledger double: it counts requests and new connections.
type stub struct {
	srv      *httptest.Server
	client   *ledgeradapter.Client
	requests atomic.Int32
	conns    atomic.Int32
}

func setupStub(t *testing.T, cfg ledgeradapter.Config, h http.HandlerFunc) *stub {
	t.Helper()
	s := &stub{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		h(w, r)
	}))
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	if cfg.BaseURL == "" {
		cfg.BaseURL = s.srv.URL
	}
	var err error
	s.client, err = ledgeradapter.NewClient(cfg)
	require.NoError(t, err)
	return s
}

func answer(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func requireLedgerError(t *testing.T, err error) *ledgeradapter.Error {
	t.Helper()
	var le *ledgeradapter.Error
	require.ErrorAs(t, err, &le)
	return le
}

func TestClassification(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		status    int
		body      string
		retryable bool
		code      string
		is        error
	}{
		{"500 INTERNAL (racing first writes)", 500, `{"errorCode":"INTERNAL","errorMessage":"Internal error. Consult logs/traces to have more details."}`, true, "INTERNAL", nil},
		{"500 with an empty body (handler panic)", 500, ``, true, "", nil},
		{"503 too many clients", 503, `{"errorCode":"INTERNAL","errorMessage":"too many clients"}`, true, "INTERNAL", nil},
		{"502 from a proxy", 502, `<html>bad gateway</html>`, true, "", nil},
		{"429", 429, ``, true, "", nil},
		{"408", 408, ``, true, "", nil},
		{"401 with an empty body", 401, ``, true, "", ledgeradapter.ErrUnauthorized},
		{"403", 403, ``, true, "", ledgeradapter.ErrUnauthorized},
		{"400 VALIDATION", 400, `{"errorCode":"VALIDATION","errorMessage":"bad body","details":"more"}`, false, "VALIDATION", ledgeradapter.ErrValidation},
		{"400 OUTDATED_SCHEMA", 400, `{"errorCode":"OUTDATED_SCHEMA","errorMessage":"You need to upgrade your ledger schema"}`, false, "OUTDATED_SCHEMA", nil},
		{"404 LEDGER_NOT_FOUND", 404, `{"errorCode":"LEDGER_NOT_FOUND","errorMessage":"ledger not found"}`, false, "LEDGER_NOT_FOUND", ledgeradapter.ErrLedgerNotFound},
		{"409 CONFLICT", 409, `{"errorCode":"CONFLICT","errorMessage":"conflict"}`, false, "CONFLICT", nil},
		{"400 without an error code (not the ledger)", 400, `bad request`, true, "", ledgeradapter.ErrUnexpectedResponse},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := setupStub(t, ledgeradapter.Config{}, answer(c.status, c.body))
			_, err := s.client.AddAccountMetadata(context.Background(), "l", "a:b", map[string]string{"k": "v"}, "ik")
			le := requireLedgerError(t, err)
			require.Equal(t, c.status, le.StatusCode)
			require.Equal(t, c.code, le.ErrorCode)
			require.Equal(t, c.retryable, le.Retryable())
			require.Equal(t, c.retryable, le.Temporary())
			require.Equal(t, c.retryable, ledgeradapter.IsRetryable(err))
			require.Equal(t, c.retryable, ledgeradapter.IsRetryable(wrap(err)), "through wrapping")
			require.Equal(t, "AddAccountMetadata", le.Op)
			require.Equal(t, http.MethodPost, le.Method)
			require.Equal(t, s.srv.URL+"/v2/l/accounts/a:b/metadata", le.URL)
			if c.is != nil {
				require.ErrorIs(t, err, c.is)
			}
		})
	}

	t.Run("the ledger's message and details are kept", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(400, `{"errorCode":"VALIDATION","errorMessage":"bad body","details":"more"}`))
		_, err := s.client.AddAccountMetadata(context.Background(), "l", "a", nil, "")
		le := requireLedgerError(t, err)
		require.Equal(t, "bad body", le.ErrorMessage)
		require.Equal(t, "more", le.Details)
		require.Contains(t, err.Error(), "400 VALIDATION: bad body (details: more)")
		require.NotErrorIs(t, err, ledgeradapter.ErrIdempotencyConflict)
	})

	t.Run("a body that is not the ledger's is excerpted", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(502, "<html>\n"+strings.Repeat("x", 5000)+"</html>"))
		_, err := s.client.AddAccountMetadata(context.Background(), "l", "a", nil, "")
		le := requireLedgerError(t, err)
		require.True(t, strings.HasPrefix(le.ErrorMessage, "<html> xxx"))
		require.Less(t, len(le.ErrorMessage), 300)
	})
}

func wrap(err error) error { return errors.Join(errors.New("handler"), err) }

func TestGetAccountAnswers(t *testing.T) {
	t.Parallel()

	t.Run("404 NOT_FOUND is absent", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(404, `{"errorCode":"NOT_FOUND","errorMessage":"not found"}`))
		acc, found, err := s.client.GetAccount(context.Background(), "l", "a")
		require.NoError(t, err)
		require.False(t, found)
		require.Equal(t, ledgeradapter.Account{}, acc)
	})

	t.Run("404 without the ledger's code is an error, not absent", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(404, `404 page not found`))
		_, found, err := s.client.GetAccount(context.Background(), "l", "a")
		require.False(t, found)
		le := requireLedgerError(t, err)
		require.Equal(t, 404, le.StatusCode)
		require.Equal(t, "404 page not found", le.ErrorMessage)
		require.ErrorIs(t, err, ledgeradapter.ErrUnexpectedResponse)
		require.True(t, le.Retryable(), "a gateway's 404 is no refusal by the ledger")
	})

	t.Run("volumes are big integers, as numbers or strings", func(t *testing.T) {
		t.Parallel()
		var query string
		s := setupStub(t, ledgeradapter.Config{}, func(w http.ResponseWriter, r *http.Request) {
			query = r.URL.RawQuery
			answer(200, `{"data":{"address":"a","metadata":null,"firstUsage":"2026-01-02T03:04:05.123456Z",
				"volumes":{"USD/2":{"input":123456789012345678901234567890,"output":1,"balance":123456789012345678901234567889},
				"EUR":{"input":"10","output":"3"}}}}`)(w, r)
		})
		acc, found, err := s.client.GetAccount(context.Background(), "l", "a")
		require.NoError(t, err)
		require.True(t, found)
		require.Equal(t, "expand=volumes", query)
		require.Equal(t, map[string]string{}, acc.Metadata, "never nil")
		require.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC), acc.FirstUsage)
		require.Equal(t, "123456789012345678901234567889", acc.Volumes["USD/2"].Balance.String())
		require.Equal(t, "7", acc.Volumes["EUR"].Balance.String(), "balance computed when absent")
	})

	t.Run("a 200 that is not an account is retryable", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(200, `<html>`))
		_, _, err := s.client.GetAccount(context.Background(), "l", "a")
		require.ErrorIs(t, err, ledgeradapter.ErrUnexpectedResponse)
		require.True(t, ledgeradapter.IsRetryable(err))
	})

	t.Run("an oversized answer is refused", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(200, `{"data":{"address":"a","metadata":{"k":"`+strings.Repeat("x", 2<<20)+`"}}}`))
		_, _, err := s.client.GetAccount(context.Background(), "l", "a")
		require.ErrorIs(t, err, ledgeradapter.ErrUnexpectedResponse)
		require.ErrorContains(t, err, "larger than")
	})
}

func TestAddAccountMetadataRequest(t *testing.T) {
	t.Parallel()
	var got struct {
		path, query, ik, ct string
		body                map[string]string
	}
	hit := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.path, got.query, got.ik, got.ct = r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("Idempotency-Key"), r.Header.Get("Content-Type")
		_ = json.NewDecoder(r.Body).Decode(&got.body)
		if hit != "" {
			w.Header().Set("Idempotency-Hit", hit)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	// A base URL with a path prefix (a gateway) and a trailing slash.
	c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: srv.URL + "/api/ledger/"})
	require.NoError(t, err)

	res, err := c.AddAccountMetadata(context.Background(), "wallets-002", "wallets:w1:gift", map[string]string{"a": "1"}, "k-1")
	require.NoError(t, err)
	require.False(t, res.IdempotencyHit)
	require.Equal(t, "/api/ledger/v2/wallets-002/accounts/wallets:w1:gift/metadata", got.path)
	require.Empty(t, got.query, "a write is no dry run")
	require.Equal(t, "k-1", got.ik)
	require.Equal(t, "application/json", got.ct)
	require.Equal(t, map[string]string{"a": "1"}, got.body)

	hit = "true"
	res, err = c.AddAccountMetadata(context.Background(), "wallets-002", "wallets:w1:gift", map[string]string{"a": "1"}, "")
	require.NoError(t, err)
	require.True(t, res.IdempotencyHit)
	require.Empty(t, got.ik, "no header without a key")

	// The dry run is the same request with dryRun=true.
	res, err = c.DryRunAccountMetadata(context.Background(), "wallets-002", "wallets:w1:gift", map[string]string{"a": "2"}, "k-2")
	require.NoError(t, err)
	require.True(t, res.IdempotencyHit)
	require.Equal(t, "/api/ledger/v2/wallets-002/accounts/wallets:w1:gift/metadata", got.path)
	require.Equal(t, "dryRun=true", got.query)
	require.Equal(t, "k-2", got.ik)
	require.Equal(t, map[string]string{"a": "2"}, got.body)
}

func TestNothingIsSentForInvalidInput(t *testing.T) {
	t.Parallel()
	s := setupStub(t, ledgeradapter.Config{}, answer(204, ""))
	ctx := context.Background()
	for _, addr := range []string{"", "a::b", "a:", ":a", "a b", "a/b", "users:001...", "a:*", "é", "a'b"} {
		_, _, err := s.client.GetAccount(ctx, "l", addr)
		require.ErrorIs(t, err, ledgeradapter.ErrInvalidAddress, "%q", addr)
		require.False(t, ledgeradapter.IsRetryable(err))
		_, err = s.client.AddAccountMetadata(ctx, "l", addr, nil, "")
		require.ErrorIs(t, err, ledgeradapter.ErrInvalidAddress, "%q", addr)
	}
	for _, name := range []string{"", "_", "_info", "_healthcheck", "a b", strings.Repeat("a", 64), "a/b"} {
		require.ErrorIs(t, s.client.EnsureLedger(ctx, name), ledgeradapter.ErrInvalidLedgerName, "%q", name)
		_, _, err := s.client.GetAccount(ctx, name, "a")
		require.ErrorIs(t, err, ledgeradapter.ErrInvalidLedgerName)
		_, err = s.client.ListLogs(ctx, name, 0, "")
		require.ErrorIs(t, err, ledgeradapter.ErrInvalidLedgerName)
	}
	for _, ik := range []string{strings.Repeat("k", 256), "a\nb", " k", "k\x00", "k\xff"} {
		_, err := s.client.AddAccountMetadata(ctx, "l", "a", nil, ik)
		require.ErrorIs(t, err, ledgeradapter.ErrInvalidIdempotencyKey, "%q", ik)
		require.False(t, ledgeradapter.IsRetryable(err))
	}
	require.Zero(t, s.requests.Load(), "a request reached the ledger")

	_, err := s.client.AddAccountMetadata(ctx, "l", "a", nil, strings.Repeat("é", 255))
	require.NoError(t, err)
	require.EqualValues(t, 1, s.requests.Load())
}

func TestTimeoutsAndCancellation(t *testing.T) {
	t.Parallel()
	// block answers nothing until the client goes away. It reads the body
	// first: net/http only notices a client hanging up once it has.
	block := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}

	t.Run("the client's timeout is retryable", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{Timeout: 50 * time.Millisecond}, block)
		_, _, err := s.client.GetAccount(context.Background(), "l", "a")
		require.ErrorIs(t, err, ledgeradapter.ErrTimeout)
		require.NotErrorIs(t, err, context.DeadlineExceeded, "not mistaken for the caller's deadline")
		require.True(t, ledgeradapter.IsRetryable(err))
		require.Zero(t, requireLedgerError(t, err).StatusCode)
	})

	t.Run("a request's timeout grows with its elements", func(t *testing.T) {
		t.Parallel()
		// A dialer of its own: the default one is bounded by Timeout (50ms
		// here), which a loaded machine can exceed on loopback; this test is
		// about the request's deadline.
		dial := &http.Transport{DialContext: (&net.Dialer{}).DialContext}
		s := setupStub(t, ledgeradapter.Config{Timeout: 50 * time.Millisecond, TimeoutPerElement: 25 * time.Millisecond,
			HTTPClient: &http.Client{Transport: dial}}, block)
		ctx := context.Background()
		start := time.Now()
		_, err := s.client.AddAccountMetadata(ctx, "l", "a", nil, "k")
		require.ErrorIs(t, err, ledgeradapter.ErrTimeout)
		require.ErrorContains(t, err, "after 50ms")
		_, err = s.client.Bulk(ctx, "l", []ledgeradapter.BulkAddMetadata{{Address: "a:1"}, {Address: "a:2"}, {Address: "a:3"}})
		require.ErrorIs(t, err, ledgeradapter.ErrTimeout)
		require.ErrorContains(t, err, "after 100ms", "50ms and 2 × 25ms")
		_, err = s.client.ListAccounts(ctx, "l", []string{"a:1", "a:2"})
		require.ErrorContains(t, err, "after 75ms")
		require.GreaterOrEqual(t, time.Since(start), 225*time.Millisecond, "each waited its own timeout")
		require.Equal(t, 100*time.Millisecond, ledgeradapter.Config{Timeout: 50 * time.Millisecond, TimeoutPerElement: 25 * time.Millisecond}.TimeoutFor(3))
		require.Equal(t, ledgeradapter.DefaultTimeout+99*ledgeradapter.DefaultTimeoutPerElement, ledgeradapter.Config{}.TimeoutFor(ledgeradapter.MaxBulkSize))
	})

	t.Run("the caller's cancellation surfaces as the context error, with its cause", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, block)
		errShutdown := errors.New("shutting down")
		ctx, cancel := context.WithCancelCause(context.Background())
		var wg sync.WaitGroup
		var err error
		wg.Go(func() { _, err = s.client.AddAccountMetadata(ctx, "l", "a", nil, "k") })
		require.Eventually(t, func() bool { return s.requests.Load() == 1 }, 5*time.Second, time.Millisecond)
		cancel(errShutdown)
		wg.Wait()
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, err, errShutdown)
		require.NotErrorIs(t, err, ledgeradapter.ErrTimeout)
		require.True(t, ledgeradapter.IsRetryable(err), "the command will be redelivered")

		_, _, err = s.client.GetAccount(ctx, "l", "a")
		require.ErrorIs(t, err, context.Canceled, "an ended context sends nothing")
		require.EqualValues(t, 1, s.requests.Load())
	})

	t.Run("the caller's deadline is the caller's", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{Timeout: time.Minute}, block)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, _, err := s.client.GetAccount(ctx, "l", "a")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NotErrorIs(t, err, ledgeradapter.ErrTimeout)
		require.True(t, ledgeradapter.IsRetryable(err))
	})

	t.Run("connection refused is retryable", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close())
		c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: "http://" + addr})
		require.NoError(t, err)
		_, err = c.AddAccountMetadata(context.Background(), "l", "a", nil, "")
		le := requireLedgerError(t, err)
		require.Zero(t, le.StatusCode)
		require.True(t, le.Retryable())
		var opErr *net.OpError
		require.ErrorAs(t, err, &opErr)
		require.Error(t, c.Healthcheck(context.Background()))
	})
}

func TestConnectionsAreReused(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	s := setupStub(t, ledgeradapter.Config{}, func(w http.ResponseWriter, r *http.Request) {
		// Alternate successes and errors with bodies: both must leave the
		// connection reusable.
		if n.Add(1)%2 == 0 {
			answer(400, `{"errorCode":"VALIDATION","errorMessage":"`+strings.Repeat("x", 10000)+`"}`)(w, r)
			return
		}
		answer(404, `{"errorCode":"NOT_FOUND","errorMessage":"not found"}`)(w, r)
	})
	for range 50 {
		_, _, _ = s.client.GetAccount(context.Background(), "l", "a")
	}
	require.EqualValues(t, 50, s.requests.Load())
	require.EqualValues(t, 1, s.conns.Load(), "one connection for sequential requests")
}

func TestEnsureLedgerAnswers(t *testing.T) {
	t.Parallel()

	t.Run("an error on GET is returned", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(503, `{"errorCode":"INTERNAL","errorMessage":"x"}`))
		err := s.client.EnsureLedger(context.Background(), "l")
		require.True(t, ledgeradapter.IsRetryable(err))
		require.EqualValues(t, 1, s.requests.Load())
	})

	t.Run("a 200 that is not this ledger is unexpected", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, answer(200, `<html>welcome</html>`))
		require.ErrorIs(t, s.client.EnsureLedger(context.Background(), "l"), ledgeradapter.ErrUnexpectedResponse)
	})

	t.Run("creation is sent with the ledger's name as bucket", func(t *testing.T) {
		t.Parallel()
		var body string
		s := setupStub(t, ledgeradapter.Config{}, func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet {
				answer(404, `{"errorCode":"NOT_FOUND","errorMessage":"not found"}`)(w, r)
				return
			}
			b, _ := io.ReadAll(r.Body)
			body = string(b)
			answer(400, `{"errorCode":"VALIDATION","errorMessage":"experimental features are disabled"}`)(w, r)
		})
		err := s.client.EnsureLedger(context.Background(), "wallets-002")
		require.ErrorIs(t, err, ledgeradapter.ErrValidation)
		require.JSONEq(t, `{"bucket":"wallets-002"}`, body)
	})

	// LEDGER_ALREADY_EXISTS is another process's creation only if the
	// ledger can then be read: a deleted ledger keeps its name, reads
	// NOT_FOUND, and would fail every write.
	exists := func(readable func() bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.Method == http.MethodPost:
				answer(400, `{"errorCode":"LEDGER_ALREADY_EXISTS","errorMessage":"ledger already exists"}`)(w, r)
			case readable():
				answer(200, `{"data":{"name":"l","bucket":"l"}}`)(w, r)
			default:
				answer(404, `{"errorCode":"NOT_FOUND","errorMessage":"ledger not found"}`)(w, r)
			}
		}
	}
	t.Run("created meanwhile by another process", func(t *testing.T) {
		t.Parallel()
		var gets atomic.Int32
		s := setupStub(t, ledgeradapter.Config{}, exists(func() bool { return gets.Add(1) > 1 }))
		require.NoError(t, s.client.EnsureLedger(context.Background(), "l"))
		require.EqualValues(t, 3, s.requests.Load(), "GET, POST, GET")
	})
	t.Run("a deleted ledger's name", func(t *testing.T) {
		t.Parallel()
		s := setupStub(t, ledgeradapter.Config{}, exists(func() bool { return false }))
		err := s.client.EnsureLedger(context.Background(), "l")
		require.ErrorIs(t, err, ledgeradapter.ErrNotFound)
		require.False(t, ledgeradapter.IsRetryable(err), "it will not come back: run stops at start")
		require.ErrorContains(t, err, "deleted ledger")
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	err := ledgeradapter.Config{Timeout: -time.Second, ClientID: "id", TokenURL: "ftp://x"}.Validate()
	require.Error(t, err)
	for _, want := range []string{"BaseURL is required", "Timeout must be positive", "ClientSecret is required", "TokenURL: scheme must be http or https"} {
		require.ErrorContains(t, err, want)
	}
	require.ErrorContains(t, ledgeradapter.Config{BaseURL: "localhost:3068"}.Validate(), "scheme")
	require.ErrorContains(t, ledgeradapter.Config{BaseURL: "http://x?a=b"}.Validate(), "query")
	require.ErrorContains(t, ledgeradapter.Config{BaseURL: "http://x", ClientSecret: "s"}.Validate(), "ClientID is required")
	require.NoError(t, ledgeradapter.Config{BaseURL: "https://stack.example/api/ledger"}.Validate())

	_, err = ledgeradapter.NewClient(ledgeradapter.Config{})
	require.Error(t, err)

	// A password in the base URL never shows in errors.
	err = ledgeradapter.Config{BaseURL: "http://user:hunter2@x", Timeout: -1}.Validate()
	require.NotContains(t, err.Error(), "hunter2")
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, lerr)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: "http://user:hunter2@" + addr})
	require.NoError(t, err)
	_, _, err = c.GetAccount(context.Background(), "l", "a")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
}

func TestValidateAddress(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"a", "world", "users:001", "wallets:w1:main", "a-b_c:D-9", "wallets:holds:0b6f2d6e4e2a"} {
		require.NoError(t, ledgeradapter.ValidateAddress(ok), ok)
	}
	for _, name := range []string{"a", "wallets-002", "_default", strings.Repeat("z", 63)} {
		require.NoError(t, ledgeradapter.ValidateLedgerName(name), name)
	}
}
