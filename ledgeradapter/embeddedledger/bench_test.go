package embeddedledger_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// benchServer serves a file-backed ledger with ledger "l" over HTTP, with
// a client keeping as many connections as benchmarks put in flight, or in
// process through Ledger.Transport.
func benchServer(b *testing.B, inProcess bool) (string, *http.Client) {
	b.Helper()
	l, err := embeddedledger.Open(b.TempDir())
	require.NoError(b, err)
	base := "http://embedded"
	client := &http.Client{Transport: l.Transport()}
	if inProcess {
		b.Cleanup(func() { require.NoError(b, l.Close()) })
	} else {
		srv := httptest.NewServer(l.Handler())
		b.Cleanup(func() {
			srv.Close()
			require.NoError(b, l.Close())
		})
		base = srv.URL
		client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
		b.Cleanup(client.CloseIdleConnections)
	}
	resp, err := client.Post(base+"/v2/l", "application/json", nil)
	require.NoError(b, err)
	require.NoError(b, resp.Body.Close())
	return base, client
}

func benchPost(b *testing.B, client *http.Client, url, body, ik string, want int) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		b.Error(err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	if ik != "" {
		req.Header.Set("Idempotency-Key", ik)
	}
	resp, err := client.Do(req)
	if err != nil {
		b.Error(err)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != want {
		b.Errorf("POST %s: status %d", url, resp.StatusCode)
	}
}

// balanceMetadata is what the worker writes for a balance, marker included.
const balanceMetadata = `{"wallets/balances":"true","wallets/balances/expiresAt":"","wallets/balances/name":"gift",` +
	`"wallets/balances/priority":"0","wallets/id":"w","wallets/balances/idempotency/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef":"{\"name\":\"gift\",\"expiresAt\":null,\"priority\":0}"}`

// BenchmarkConcurrentWrites: first writes of new accounts, each with its own
// Idempotency-Key, 32 requests in flight, as the worker sends them.
func BenchmarkConcurrentWrites(b *testing.B) {
	for _, inProcess := range []bool{false, true} {
		b.Run(map[bool]string{false: "tcp", true: "in-process"}[inProcess], func(b *testing.B) {
			concurrentWrites(b, inProcess)
		})
	}
}

func concurrentWrites(b *testing.B, inProcess bool) {
	base, client := benchServer(b, inProcess)
	var n atomic.Int64
	b.SetParallelism(16) // × GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			benchPost(b, client, fmt.Sprintf("%s/v2/l/accounts/wallets:w%d:gift/metadata", base, i), balanceMetadata, fmt.Sprint("k", i), http.StatusNoContent)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// BenchmarkConcurrentBulks: bulks of 50 first writes, 8 bulks in flight.
func BenchmarkConcurrentBulks(b *testing.B) {
	const size = 50
	base, client := benchServer(b, false)
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var sb strings.Builder
			sb.WriteString("[")
			for j := range size {
				i := n.Add(1)
				if j > 0 {
					sb.WriteString(",")
				}
				fmt.Fprintf(&sb, `{"action":"ADD_METADATA","ik":"k%d","data":{"targetType":"ACCOUNT","targetId":"wallets:w%d:gift","metadata":%s}}`, i, i, balanceMetadata)
			}
			sb.WriteString("]")
			benchPost(b, client, base+"/v2/l/_bulk?continueOnFailure=true", sb.String(), "", http.StatusOK)
		}
	})
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "writes/s")
}
