//go:build unix

package e2e

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// TestRestartMidStream: the all-embedded worker is stopped (SIGTERM) in the
// middle of a stream of commands and started again on the same --data-dir.
// What it left on disk is inspected in between: the commands it had not
// settled are still stored and not leased, the balances it had created are in
// the ledger. After the restart every stored command has exactly one outcome.
func TestRestartMidStream(t *testing.T) {
	const n = 300
	started := time.Now()
	dataDir := t.TempDir()
	natsAddr, ledgerAddr := freeAddr(t), freeAddr(t)
	args := []string{
		"--data-dir", dataDir, "--embedded-nats-addr", natsAddr, "--embedded-ledger-addr", ledgerAddr,
		// Few commands in flight, so that most of the stream is still
		// waiting when the first process stops.
		"--concurrency", "2", "--drain-timeout", "20s",
	}
	first := startWorker(t, "first", args...)
	nc, js := connectNATS(t, "nats://"+natsAddr)
	col := startCollector(t, js, nil)
	pub := newPublisher(js)
	balances := simpleBalances("restart", n, 60)
	for _, b := range balances {
		require.NoError(t, pub.publish(b.Winner))
	}

	eventually(t, *waitFlag, "a fifth of the commands settled", func() (bool, string) {
		n := col.settled()
		return n >= len(balances)/5, fmt.Sprintf("%d outcomes", n)
	})
	first.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, first.waitExit(t, 30*time.Second), "exit status after SIGTERM")

	// What the first process left in its data dir, read with its own
	// NATS server and ledger down.
	events, remaining := inspectNATS(t, filepath.Join(dataDir, "nats"))
	require.NotZero(t, remaining, "the stream was fully processed before SIGTERM: nothing tested the restart")
	require.EqualValues(t, n, events+remaining, "settled commands (events) plus stored ones must be every command")
	logs := inspectLedger(t, filepath.Join(dataDir, "ledger"))
	require.EqualValues(t, events, logs, "one ledger log per settled command")
	t.Logf("stopped after %d outcomes; %d commands waited on disk", events, remaining)

	second := startWorker(t, "second", args...)
	eventually(t, *waitFlag, "the test's NATS client reconnected", func() (bool, string) {
		return nc.IsConnected(), nc.Status().String()
	})
	// Within half the ack wait (30s by default): nothing the first process
	// stopped with may stay leased to it until its ack wait runs out.
	waitSettled(t, 15*time.Second, js, pub, col, nil, aliveCheck(func() *workerProcess { return second }))
	f := verifyOutcomes(t, pub, col.events(), balances)
	ledgerLogs := verifyLedger(t, ledgerClient(t, "http://"+ledgerAddr), balances)
	second.stop(t)
	printFigures(t, fmt.Sprintf("restart: stored=%d before_stop=%d waiting=%d outcomes=%d lost=%d doubled=%d replayed=%d ledger_logs=%d elapsed=%s",
		f.stored, events, remaining, f.outcomes, f.lost, f.doubled, f.replayed, ledgerLogs, time.Since(started).Round(100*time.Millisecond)))
}

// inspectNATS opens a stopped worker's JetStream store with a server of its
// own and returns how many outcome events and commands it holds.
func inspectNATS(t *testing.T, storeDir string) (events, commands uint64) {
	t.Helper()
	ns, err := embeddednats.Start(embeddednats.Options{Addr: "127.0.0.1:0", StoreDir: storeDir, ServerName: "e2e-inspect"})
	require.NoError(t, err)
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	nc, js := connectNATS(t, ns.ClientURL())
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info := func(name string) jetstream.StreamState {
		s, err := js.Stream(ctx, name)
		require.NoError(t, err, "stream %s", name)
		return s.CachedInfo().State
	}
	require.Zero(t, info(streamDLQ).Msgs, "dead letters")
	return info(streamEvents).Msgs, info(streamCommands).Msgs
}

// inspectLedger opens a stopped worker's ledger directory and returns how
// many logs it holds.
func inspectLedger(t *testing.T, dir string) int {
	t.Helper()
	l, err := embeddedledger.Open(dir)
	require.NoError(t, err)
	srv := httptest.NewServer(l.Handler())
	defer func() {
		srv.Close()
		_ = l.Close()
	}()
	c := ledgerClient(t, srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logs, err := c.AllLogs(ctx, ledgerName)
	require.NoError(t, err)
	return len(logs)
}
