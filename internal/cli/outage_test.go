package cli

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// outageBundle is a worker run in process against a NATS server and a ledger
// that the test can take down and bring back.
type outageBundle struct {
	natsAddr, natsDir string
	ns                atomic.Pointer[server.Server]
	ledgerDown        atomic.Bool
	ledgerURL         string
	httpAddr          string
	logs              *syncBuffer
}

func outageSetup(t *testing.T) *outageBundle {
	t.Helper()
	b := &outageBundle{natsAddr: freeAddr(t), natsDir: t.TempDir(), logs: &syncBuffer{}}
	b.startNATS(t)
	t.Cleanup(func() {
		if ns := b.ns.Load(); ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	})
	b.ledgerURL = testutil.StartLedger(t, testutil.LedgerOptions{Wrap: func(inner http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if b.ledgerDown.Load() {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"errorCode":"INTERNAL","errorMessage":"too many clients"}`))
				return
			}
			inner.ServeHTTP(w, r)
		})
	}}).URL
	b.httpAddr = startRun(t, b.logs, "--nats-url", "nats://"+b.natsAddr, "--ledger-url", b.ledgerURL,
		"--http-addr", "127.0.0.1:0", "--ack-wait", "5s", "--ledger-timeout", "2s", "--log-format", "text").HTTPAddr
	return b
}

func (b *outageBundle) readyz(t *testing.T) int {
	t.Helper()
	resp, err := http.Get("http://" + b.httpAddr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func (b *outageBundle) startNATS(t *testing.T) {
	t.Helper()
	ns, err := embeddednats.Start(embeddednats.Options{Addr: b.natsAddr, StoreDir: b.natsDir})
	require.NoError(t, err)
	b.ns.Store(ns)
}

func (b *outageBundle) stopNATS() {
	ns := b.ns.Swap(nil)
	ns.Shutdown()
	ns.WaitForShutdown()
}

// client connects a producer that rides out server restarts.
func (b *outageBundle) client(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, js := testutil.Connect(t, "nats://"+b.natsAddr, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	return js
}

func publishN(t *testing.T, js jetstream.JetStream, prefix string, n int) {
	t.Helper()
	for i := range n {
		m := &nats.Msg{Subject: messages.CreateBalanceSubject(prefix + fmt.Sprint(i)), Header: nats.Header{},
			Data: []byte(fmt.Sprintf(`{"walletID":"%s%d","name":"main-savings"}`, prefix, i))}
		m.Header.Set(messages.HeaderMsgID, fmt.Sprintf("%s-key-%d", prefix, i))
		_, err := js.PublishMsg(context.Background(), m)
		require.NoError(t, err)
	}
}

// outcomes counts events by type, reading the events stream from the start.
func outcomes(t *testing.T, js jetstream.JetStream) (created, rejected int, dlq uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, messages.StreamEvents)
	require.NoError(t, err)
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(messages.SubjectEvents))
	require.NoError(t, err)
	for subj, n := range info.State.Subjects {
		if strings.HasPrefix(subj, "wallets.events.balance-created.") {
			created += int(n)
		} else {
			rejected += int(n)
		}
	}
	d, err := js.Stream(ctx, messages.StreamDLQ)
	require.NoError(t, err)
	dinfo, err := d.Info(ctx)
	require.NoError(t, err)
	return created, rejected, dinfo.State.Msgs
}

func TestLedgerOutageDeadLettersNothing(t *testing.T) {
	b := outageSetup(t)
	js := b.client(t)

	b.ledgerDown.Store(true)
	publishN(t, js, "down", 40)
	// Let every command fail a few times against the 503s.
	require.Eventually(t, func() bool {
		return strings.Count(b.logs.String(), "will retry") >= 80
	}, 30*time.Second, 50*time.Millisecond)
	created, rejected, dlq := outcomes(t, js)
	require.Zero(t, created+rejected, "no outcome while the ledger is down")
	require.Zero(t, dlq)

	b.ledgerDown.Store(false)
	require.Eventually(t, func() bool {
		created, _, _ = outcomes(t, js)
		return created == 40
	}, 60*time.Second, 100*time.Millisecond, "every command is created once the ledger is back")
	created, rejected, dlq = outcomes(t, js)
	require.Equal(t, 40, created)
	require.Zero(t, rejected)
	require.Zero(t, dlq, "a ledger outage within the retry budget dead-letters nothing")
}

func TestNATSRestartIsRiddenOut(t *testing.T) {
	b := outageSetup(t)
	js := b.client(t)

	publishN(t, js, "before", 30)
	require.Eventually(t, func() bool {
		created, _, _ := outcomes(t, js)
		return created == 30
	}, 30*time.Second, 50*time.Millisecond)

	require.Equal(t, http.StatusOK, b.readyz(t))
	b.stopNATS()
	require.Eventually(t, func() bool { return b.readyz(t) == http.StatusServiceUnavailable }, 10*time.Second, 20*time.Millisecond,
		"/readyz fails while NATS is down")
	b.startNATS(t) // same port, same store: the streams and the consumer are back
	require.Eventually(t, func() bool { return b.readyz(t) == http.StatusOK }, 30*time.Second, 50*time.Millisecond,
		"/readyz recovers with NATS")

	publishN(t, js, "after", 30)
	require.Eventually(t, func() bool {
		created, _, _ := outcomes(t, js)
		return created == 60
	}, 60*time.Second, 100*time.Millisecond, "the worker reconnects and catches up by itself:\n%s", b.logs)
	_, rejected, dlq := outcomes(t, js)
	require.Zero(t, rejected)
	require.Zero(t, dlq)
}
