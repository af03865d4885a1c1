package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// TestClusterLeaderLossMoneyCommands shuts down the server leading
// WALLETS_COMMANDS while two workers apply credits and debits on a
// three-node cluster, every debit covered only by the credit just before it
// on its wallet: no command lost or applied twice, no wallet's order broken
// by the election (no INSUFFICIENT_FUNDS), every wallet's ledger
// transactions its commands in publish order.
func TestClusterLeaderLossMoneyCommands(t *testing.T) {
	const (
		wallets  = 30
		commands = 600
		lossAt   = commands * 2 / 5
	)
	cfg := workerConfig()
	cl := startCluster(t, replicas)
	setup := cl.connect(t, "cluster-money-setup")
	provision(t, setup.js, cfg)
	leader := checkReplicas(t, setup.js, cfg)[streamCommands]
	gatherLeaders(t, setup, leader)
	others := cl.othersThan(leader)
	led := startLedger(t)
	logs := newLogCounter(t)
	for i := range 2 {
		first := leader
		if i > 0 {
			first = others[0]
		}
		startWorker(t, cl, fmt.Sprintf("money-worker-%d", i), first, cfg, led.url, logs)
	}
	obs := cl.connect(t, "cluster-money-observer", others...)
	prod := cl.connect(t, "cluster-money-producer", others...)

	type op struct {
		wallet, key string
		amount      int
		credit      bool
	}
	var plan []op
	for i := range commands / 2 {
		w, a := fmt.Sprintf("cm-%02d", i%wallets), 1+i%89
		plan = append(plan, op{w, fmt.Sprintf("cm-%d-c", i), a, true}, op{w, fmt.Sprintf("cm-%d-d", i), a, false})
	}
	// One publish at a time, each retried with its key until acknowledged,
	// so that the stream holds them in plan order (a retry of a stored one
	// is a duplicate and keeps its place).
	publish := func(o op) {
		kind := messages.KindDebitWallet
		if o.credit {
			kind = messages.KindCreditWallet
		}
		m := &nats.Msg{Subject: messages.SubjectCommandsPrefix + kind + "." + o.wallet, Header: nats.Header{},
			Data: fmt.Appendf(nil, `{"walletID":%q,"amount":{"asset":"USD/2","amount":%d}}`, o.wallet, o.amount)}
		m.Header.Set(messages.HeaderMsgID, o.key)
		deadline := time.Now().Add(publishBudget)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), publishTry)
			_, err := prod.js.PublishMsg(ctx, m)
			cancel()
			if err == nil {
				return
			}
			require.True(t, time.Now().Before(deadline), "publish %s: %v", o.key, err)
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, o := range plan[:lossAt] {
		publish(o)
	}
	eventually(t, waitFor, "commands settled before the leader loss", func() (bool, string) {
		si, err := streamInfo(context.Background(), obs.js, streamCommands)
		if err != nil {
			return false, err.Error()
		}
		return lossAt-int(si.State.Msgs) >= lossAt/4, fmt.Sprintf("%d left", si.State.Msgs)
	})
	victim, err := streamLeader(context.Background(), obs.js, streamCommands)
	require.NoError(t, err)
	lostAt := time.Now()
	cl.node(victim).shutdown()
	for _, o := range plan[lossAt:] {
		publish(o)
	}
	t.Logf("shut down %s, the leader of %s; the rest published %s later", victim, streamCommands, time.Since(lostAt).Round(time.Millisecond))

	// Every command settled: the work queue empty, nothing pending; then
	// every key's first outcome (a redelivery's repeated event is dropped by
	// the events stream's deduplication).
	waitAllSettled(t, obs.js, 2*waitFor, func() string { return "; worker warnings: " + logs.summary() })
	codes := map[string]messages.Code{}
	for _, m := range readStream(t, obs.js, streamEvents) {
		var e struct {
			Key  string        `json:"key"`
			Code messages.Code `json:"code"`
		}
		require.NoError(t, json.Unmarshal(m.Data, &e))
		if _, seen := codes[e.Key]; !seen {
			codes[e.Key] = e.Code
		}
	}
	require.Len(t, codes, len(plan), "an outcome for every command")
	for k, c := range codes {
		require.Empty(t, c, "%s rejected", k)
	}

	got := testutil.WalletMoves(t, led.client, ledgerName)
	want := testutil.PlannedMoves(plan, func(o op) (string, bool, int64) { return o.wallet, o.credit, int64(o.amount) })
	require.Equal(t, want, got, "every wallet's ledger transactions, oldest first")
	t.Logf("%d credits and debits over %d wallets through the loss of %s: none lost, none twice, none out of order; worker warnings: %s",
		len(plan), wallets, victim, logs.summary())
}
