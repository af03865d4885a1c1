package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestNATSRunsJetStreamUntilTheTestEnds(t *testing.T) {
	t.Parallel()
	var url string
	t.Run("server", func(t *testing.T) {
		ns := NATS(t)
		url = ns.ClientURL()
		_, js := Connect(t, url)
		_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}})
		require.NoError(t, err)
		_, err = js.Publish(context.Background(), "t.1", []byte("x"))
		require.NoError(t, err)
	})
	// The subtest's cleanup shut it down.
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "nats://"), time.Second)
	if err == nil {
		conn.Close()
	}
	require.Error(t, err, "the server still listens after its test")
}

func TestStartLedgerServesThroughWrap(t *testing.T) {
	t.Parallel()
	var requests atomic.Int64
	l := StartLedger(t, LedgerOptions{InMemory: true, Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			next.ServeHTTP(w, r)
		})
	}})
	require.NoError(t, l.Client.EnsureLedger(context.Background(), "l1"))
	require.Positive(t, requests.Load())
	_, found, err := l.Client.GetAccount(context.Background(), "l1", "a:b")
	require.NoError(t, err)
	require.False(t, found)
}

func TestFreePortsAreDistinctAndFree(t *testing.T) {
	t.Parallel()
	// A thousand picks from some ten thousand ports: without the record of
	// what was handed out, two would almost surely meet.
	ports := FreePorts(t, 1000)
	seen := map[int]bool{}
	for _, p := range append(ports, FreePorts(t, 5)...) {
		require.False(t, seen[p], "port %d handed out twice", p)
		seen[p] = true
	}
	ln, err := net.Listen("tcp", FreeAddr(t))
	require.NoError(t, err)
	require.NoError(t, ln.Close())
}

func TestSyncBufferTakesConcurrentWrites(t *testing.T) {
	t.Parallel()
	var b SyncBuffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 100 {
				fmt.Fprintf(&b, "w%d-%d\n", i, j)
			}
		})
	}
	wg.Wait()
	require.Len(t, strings.Split(strings.TrimSpace(b.String()), "\n"), 800)
	require.True(t, b.Contains("w7-99\n"))
	require.True(t, strings.HasPrefix(b.Tail(2), "[... 798 lines left out]\n"))
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	t.Parallel()
	start := time.Now()
	Eventually(t, 10*time.Second, "50ms to pass", func() (bool, string) {
		d := time.Since(start)
		return d >= 50*time.Millisecond, d.String()
	})
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
}

func TestModuleRootHoldsTheModule(t *testing.T) {
	t.Parallel()
	root, err := ModuleRoot()
	require.NoError(t, err)
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	require.Contains(t, string(mod), "module github.com/wallets-worker/wallets-worker\n")
	require.FileExists(t, filepath.Join(root, "cmd", "wallets-worker", "main.go"))
}

func TestScopeRunsCleanupsLastFirstAndPanicsOnFailure(t *testing.T) {
	t.Parallel()
	var s Scope
	var order []int
	dir := s.TempDir()
	s.Cleanup(func() { order = append(order, 1) })
	s.Cleanup(func() { order = append(order, 2) })
	require.DirExists(t, dir)
	s.Close()
	require.Equal(t, []int{2, 1}, order)
	require.NoDirExists(t, dir)
	require.PanicsWithValue(t, "no ledger", func() { s.Fatalf("no %s", "ledger") })
	require.Panics(t, func() { require.NoError(&s, errors.New("boom")) })
}
