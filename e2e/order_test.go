package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// An orderPlan is, for each wallet, credits and debits where every debit
// is covered only by the credits before it (a credit of a, then a debit of
// a), published interleaved across wallets, each pair back to back.
type orderOp struct {
	wallet string
	credit bool
	amount int64
	key    string
}

func makeOrderPlan(rng *rand.Rand, run string, wallets, commands int) []orderOp {
	pending := make([]int, wallets) // pairs left per wallet
	for i := range commands / 2 {
		pending[i%wallets]++
	}
	var ops []orderOp
	n := 0
	for len(ops) < commands {
		w := rng.IntN(wallets)
		if pending[w] == 0 {
			continue
		}
		pending[w]--
		wallet := fmt.Sprintf("%s-w%03d", run, w)
		amount := 1 + rng.Int64N(1000)
		ops = append(ops,
			orderOp{wallet: wallet, credit: true, amount: amount, key: fmt.Sprintf("%s-%d", run, n)},
			orderOp{wallet: wallet, credit: false, amount: amount, key: fmt.Sprintf("%s-%d", run, n+1)})
		n += 2
	}
	return ops
}

func (o orderOp) msg() *nats.Msg {
	kind := "debit-wallet"
	if o.credit {
		kind = "credit-wallet"
	}
	m := &nats.Msg{Subject: "wallets.commands." + kind + "." + o.wallet, Header: nats.Header{},
		Data: fmt.Appendf(nil, `{"walletID":%q,"amount":{"asset":"USD/2","amount":%d}}`, o.wallet, o.amount)}
	m.Header.Set(messages.HeaderMsgID, o.key)
	return m
}

type orderResult struct {
	rejected map[messages.Code]int
	// outOfOrder are the wallets whose ledger transactions are not in
	// publish order.
	outOfOrder []string
	// bulks is how many ordered bulks (chains) the ledger was sent.
	bulks int64
}

// runOrder runs three worker processes on one NATS server and one ledger
// with order, publishes the plan, kills and restarts a worker kills times
// while it runs, and reads back the outcomes and the ledger's transactions.
func runOrder(t *testing.T, order string, wallets, commands, kills int) orderResult {
	rng := rand.New(rand.NewPCG(seed(t), 0x07d3))
	run := strings.ToLower(order)
	plan := makeOrderPlan(rng, run, wallets, commands)
	natsURL := startNATS(t)
	var bulks atomic.Int64
	tl := startLedger(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/_bulk") {
				bulks.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	})
	args := func(i int) []string {
		return []string{"--nats-url", natsURL, "--ledger-url", tl.URL, "--data-dir", t.TempDir(),
			"--ack-wait", "3s", "--ledger-timeout", "1500ms", "--concurrency", "16", "--order", order}
	}
	var mu sync.Mutex
	workers := make([]*workerProcess, 3)
	for i := range workers {
		workers[i] = startWorker(t, fmt.Sprintf("%s-%d", run, i), args(i)...)
	}
	_, js := connectNATS(t, natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	events := testutil.NewStreamReader(t, js, messages.StreamEvents, false)

	done := make(chan struct{})
	go func() { // the killer
		defer close(done)
		for k := range kills {
			time.Sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond)
			mu.Lock()
			i := k % len(workers)
			workers[i].kill(t)
			workers[i] = startWorker(t, fmt.Sprintf("%s-%d-restart%d", run, i, k), args(i)...)
			mu.Unlock()
		}
	}()
	var acks []jetstream.PubAckFuture
	for i, op := range plan {
		if i%500 == 499 { // a window of publishes in flight
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				t.Fatal("publishes not acknowledged")
			}
		}
		f, err := js.PublishMsgAsync(op.msg())
		require.NoError(t, err)
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("publishes not acknowledged")
		}
	}

	res := orderResult{rejected: map[messages.Code]int{}}
	seen := map[string]bool{} // by key: a redelivery's event is deduplicated, a replay is not
	for len(seen) < len(plan) {
		m, err := events.Next(*waitFlag)
		require.NoError(t, err, "outcomes: %d of %d", len(seen), len(plan))
		var e struct {
			Key  string        `json:"key"`
			Code messages.Code `json:"code"`
		}
		require.NoError(t, json.Unmarshal(m.Data, &e))
		if seen[e.Key] {
			continue
		}
		seen[e.Key] = true
		if e.Code != "" {
			res.rejected[e.Code]++
		}
	}
	<-done

	// The ledger's transactions, by wallet, in the ledger's order.
	byWallet := testutil.WalletMoves(t, tl.Client, "wallets-002")
	want := testutil.PlannedMoves(plan, func(o orderOp) (string, bool, int64) { return o.wallet, o.credit, o.amount })
	for w, ops := range want {
		if !slices.Equal(ops, byWallet[w]) {
			if len(res.outOfOrder) == 0 {
				t.Logf("wallet %s: published %v, in the ledger %v", w, ops, byWallet[w])
			}
			res.outOfOrder = append(res.outOfOrder, w)
		}
	}
	slices.Sort(res.outOfOrder)
	res.bulks = bulks.Load()
	t.Logf("order %s: %d commands over %d wallets, %d kills: rejected %v, %d wallets out of publish order in the ledger, %d chains",
		order, len(plan), wallets, kills, res.rejected, len(res.outOfOrder), res.bulks)
	return res
}

// TestOrderThroughTheBinary: three `run` processes, 100 wallets, 5,000
// credits and debits published interleaved, every debit covered only by the
// credit just before it: no INSUFFICIENT_FUNDS, and every wallet's ledger
// transactions in publish order; then 2,000 over 50 wallets while workers
// are SIGKILLed and restarted.
func TestOrderThroughTheBinary(t *testing.T) {
	t.Run("steady", func(t *testing.T) {
		res := runOrder(t, "wallet", 100, 5000, 0)
		require.Empty(t, res.rejected)
		require.Empty(t, res.outOfOrder)
		require.Positive(t, res.bulks, "no wallet's commands went to the ledger as a chain")
	})
	t.Run("kills", func(t *testing.T) {
		// 2,000 money commands over 50 wallets, as a crash test of them:
		// every wallet's transactions equal to the plan is none lost and
		// none applied twice.
		res := runOrder(t, "wallet", 50, 2000, 3)
		require.Empty(t, res.rejected)
		require.Empty(t, res.outOfOrder)
	})
}

// TestOrderNoneThroughTheBinary: the same plan with --order none is rejected
// in part for insufficient funds: the test above can fail.
func TestOrderNoneThroughTheBinary(t *testing.T) {
	res := runOrder(t, "none", 100, 2000, 0)
	require.Positive(t, res.rejected[messages.CodeInsufficientFunds], "no debit overtook its credit")
}
