package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
)

const (
	testClientID     = "wallets-worker"
	testClientSecret = "s3cret-client-secret-value"
	testToken        = "tok-9f8e7d6c5b4a-bearer"
)

// securedLedger is an embedded ledger behind HTTPS (a test CA) that demands a
// bearer token, and a token endpoint that grants it for client credentials.
type securedLedger struct {
	url, tokenURL, caFile string
	tokensIssued          atomic.Int64
	unauthorized          atomic.Int64
}

func newSecuredLedger(t *testing.T) *securedLedger {
	t.Helper()
	sl := &securedLedger{}
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if !ok {
			_ = r.ParseForm()
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		}
		w.Header().Set("Content-Type", "application/json")
		if id != testClientID || secret != testClientSecret {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
			return
		}
		sl.tokensIssued.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": testToken, "token_type": "Bearer", "expires_in": 3600})
	}))
	t.Cleanup(tokens.Close)
	sl.tokenURL = tokens.URL

	srv := testutil.StartLedger(t, testutil.LedgerOptions{TLS: true, Wrap: func(inner http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/_healthcheck" && r.Header.Get("Authorization") != "Bearer "+testToken {
				sl.unauthorized.Add(1)
				w.WriteHeader(http.StatusUnauthorized) // the real ledger: 401, empty body
				return
			}
			inner.ServeHTTP(w, r)
		})
	}}).Server
	sl.url = srv.URL
	sl.caFile = filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(sl.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600))
	return sl
}

func TestLedgerOverHTTPSWithOAuth2(t *testing.T) {
	sl := newSecuredLedger(t)
	secretFile := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(secretFile, []byte(testClientSecret+"\n"), 0o600))
	b := setup(t, "--ledger-url", sl.url, "--ledger-ca", sl.caFile,
		"--ledger-client-id", testClientID, "--ledger-client-secret-file", secretFile, "--ledger-token-url", sl.tokenURL)

	code, out, errOut := b.cli(t, "publish", "create-balance", "--nats-url", b.addrs.NATSURL,
		"--wallet", "w1", "--name", "secure", "--key", "k-secure", "--wait", "--timeout", "20s")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, `"balance-created"`)
	require.Positive(t, sl.tokensIssued.Load())
	require.Zero(t, sl.unauthorized.Load(), "every ledger request carried the token")

	resp, err := http.Get("http://" + b.addrs.HTTPAddr + "/metrics")
	require.NoError(t, err)
	var metrics bytes.Buffer
	_, _ = metrics.ReadFrom(resp.Body)
	resp.Body.Close()
	for _, secret := range []string{testClientSecret, testToken} {
		require.NotContains(t, b.logs.String(), secret, "logs")
		require.NotContains(t, metrics.String(), secret, "/metrics")
	}
}

func TestLedgerCredentialsRefusedFailFast(t *testing.T) {
	sl := newSecuredLedger(t)
	for name, args := range map[string][]string{
		"wrong secret": {"--ledger-ca", sl.caFile, "--ledger-client-id", testClientID, "--ledger-client-secret", "wrong-" + testClientSecret, "--ledger-token-url", sl.tokenURL},
		"no token":     {"--ledger-ca", sl.caFile},
	} {
		t.Run(name, func(t *testing.T) {
			var stderr syncBuffer
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			code := Main(ctx, append([]string{"run", "--data-dir", t.TempDir(), "--embedded-nats-addr", freeAddr(t),
				"--http-addr", "", "--ledger-url", sl.url}, args...), Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
			require.Equal(t, ExitError, code, stderr.String())
			require.Less(t, time.Since(start), 15*time.Second, "fails fast, does not retry forever")
			require.Contains(t, stderr.String(), "refused our credentials")
			require.False(t, strings.Contains(stderr.String(), testClientSecret), "no secret in the output")
		})
	}

	// A CA that did not sign the ledger's certificate is refused too (the
	// TLS error is not retried away silently: start-up keeps trying and says
	// why, so cancel after the first complaint).
	var stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"run", "--data-dir", t.TempDir(), "--embedded-nats-addr", freeAddr(t), "--http-addr", "", "--ledger-url", sl.url, "--log-format", "text"},
			Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
	}()
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "certificate") }, 20*time.Second, 20*time.Millisecond)
	cancel()
	require.Equal(t, ExitOK, <-done)
}
