package ledgeradapter_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

const (
	testClientID     = "worker"
	testClientSecret = "s3cr3t-never-printed"
)

// tokenServer issues client-credentials tokens "tok-1", "tok-2", ... with
// the given lifetime, or refuses them.
type tokenServer struct {
	srv       *httptest.Server
	issued    atomic.Int32
	expiresIn int
	refuse    atomic.Bool

	mu     sync.Mutex
	scopes []string
}

func setupTokenServer(t *testing.T, expiresIn int) *tokenServer {
	t.Helper()
	ts := &tokenServer{expiresIn: expiresIn}
	ts.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		id, secret, ok := r.BasicAuth()
		if !ok {
			_ = r.ParseForm()
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		}
		_ = r.ParseForm()
		if ts.refuse.Load() || id != testClientID || secret != testClientSecret || r.PostForm.Get("grant_type") != "client_credentials" {
			// A careless server echoing what it got: it must not reach our errors.
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client", "error_description": "bad secret " + secret})
			return
		}
		ts.mu.Lock()
		ts.scopes = strings.Fields(r.PostForm.Get("scope"))
		ts.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": fmt.Sprintf("tok-%d", ts.issued.Add(1)),
			"token_type":   "bearer",
			"expires_in":   ts.expiresIn,
		})
	}))
	t.Cleanup(ts.srv.Close)
	return ts
}

// authLedger records the Authorization header of each request and answers
// 401 (empty body, like the real JWT middleware) to tokens in reject.
type authLedger struct {
	srv *httptest.Server

	mu      sync.Mutex
	seen    []string
	reject  map[string]bool
	answers int
}

func setupAuthLedger(t *testing.T) *authLedger {
	t.Helper()
	l := &authLedger{reject: map[string]bool{}}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		auth := r.Header.Get("Authorization")
		l.seen = append(l.seen, auth)
		rejected := l.reject[strings.TrimPrefix(auth, "Bearer ")]
		l.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if rejected {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *authLedger) headers() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seen...)
}

func newOAuthClient(t *testing.T, ledger *authLedger, tokens *tokenServer, secret string) *ledgeradapter.Client {
	t.Helper()
	c, err := ledgeradapter.NewClient(ledgeradapter.Config{
		BaseURL: ledger.srv.URL, ClientID: testClientID, ClientSecret: secret, TokenURL: tokens.srv.URL + "/oauth/token",
	})
	require.NoError(t, err)
	return c
}

func TestOAuth2(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("a long-lived token is fetched once and reused", func(t *testing.T) {
		t.Parallel()
		tokens, ledger := setupTokenServer(t, 3600), setupAuthLedger(t)
		c := newOAuthClient(t, ledger, tokens, testClientSecret)
		for range 3 {
			require.NoError(t, c.Healthcheck(ctx))
		}
		require.Equal(t, []string{"Bearer tok-1", "Bearer tok-1", "Bearer tok-1"}, ledger.headers())
		require.EqualValues(t, 1, tokens.issued.Load())
		tokens.mu.Lock()
		defer tokens.mu.Unlock()
		require.Equal(t, []string{"ledger:read", "ledger:write"}, tokens.scopes)
	})

	t.Run("an expired token is replaced", func(t *testing.T) {
		t.Parallel()
		// A 1s lifetime is inside oauth2's 10s early-expiry margin: each
		// token is already expired for the next call, with no waiting.
		tokens, ledger := setupTokenServer(t, 1), setupAuthLedger(t)
		c := newOAuthClient(t, ledger, tokens, testClientSecret)
		require.NoError(t, c.Healthcheck(ctx))
		require.NoError(t, c.Healthcheck(ctx))
		require.Equal(t, []string{"Bearer tok-1", "Bearer tok-2"}, ledger.headers())
	})

	t.Run("a token the ledger refuses is retryable and replaced", func(t *testing.T) {
		t.Parallel()
		tokens, ledger := setupTokenServer(t, 3600), setupAuthLedger(t)
		ledger.reject["tok-1"] = true
		c := newOAuthClient(t, ledger, tokens, testClientSecret)
		_, _, err := c.GetAccount(ctx, "l", "a")
		require.ErrorIs(t, err, ledgeradapter.ErrUnauthorized)
		require.True(t, ledgeradapter.IsRetryable(err))
		require.NotContains(t, err.Error(), "tok-1")
		require.NoError(t, c.Healthcheck(ctx))
		require.Equal(t, []string{"Bearer tok-1", "Bearer tok-2"}, ledger.headers())
	})

	t.Run("a refused token request sends nothing to the ledger and leaks nothing", func(t *testing.T) {
		t.Parallel()
		tokens, ledger := setupTokenServer(t, 3600), setupAuthLedger(t)
		c := newOAuthClient(t, ledger, tokens, "wrong-"+testClientSecret)
		_, err := c.AddAccountMetadata(ctx, "l", "a", map[string]string{"k": "v"}, "ik")
		require.Error(t, err)
		require.ErrorIs(t, err, ledgeradapter.ErrUnauthorized)
		require.True(t, ledgeradapter.IsRetryable(err), "an operator can fix credentials; the command is not at fault")
		var te *ledgeradapter.TokenError
		require.ErrorAs(t, err, &te)
		require.Equal(t, http.StatusUnauthorized, te.StatusCode)
		require.Equal(t, "invalid_client", te.OAuthCode)
		require.NotContains(t, err.Error(), testClientSecret)
		require.NotContains(t, fmt.Sprintf("%+v %#v", err, err), testClientSecret)
		require.Empty(t, ledger.headers())
	})

	t.Run("an unreachable token endpoint is retryable", func(t *testing.T) {
		t.Parallel()
		tokens, ledger := setupTokenServer(t, 3600), setupAuthLedger(t)
		tokens.srv.Close()
		c := newOAuthClient(t, ledger, tokens, testClientSecret)
		err := c.Healthcheck(ctx)
		require.True(t, ledgeradapter.IsRetryable(err))
		require.NotErrorIs(t, err, ledgeradapter.ErrUnauthorized)
		require.NotContains(t, err.Error(), testClientSecret)
	})

	t.Run("no token, no header", func(t *testing.T) {
		t.Parallel()
		ledger := setupAuthLedger(t)
		c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: ledger.srv.URL})
		require.NoError(t, err)
		require.NoError(t, c.Healthcheck(ctx))
		require.Equal(t, []string{""}, ledger.headers())
	})
}
