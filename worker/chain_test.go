package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// moneyKinds are credit-wallet and debit-wallet on the test's ledger, their
// main-balance commands riding one chain.
func moneyKinds(c *ledgeradapter.Client) []handlers.Kind {
	chain := &handlers.Chain{Ledger: c}
	return []handlers.Kind{
		handlers.CreditWalletKind(&handlers.CreditWallet{Ledger: c, LedgerName: testLedger, Chain: chain}),
		handlers.DebitWalletKind(&handlers.DebitWallet{Ledger: c, LedgerName: testLedger, Chain: chain}),
	}
}

// TestChainsKeepAHotWalletInOrder: 150 credits and 150 debits of one
// wallet, each debit covered only by the credit published just before it,
// go to the ledger in chains (consecutive commands in one ordered bulk),
// two of whose bulks fail whole (500): every command is applied once, none
// refused, and the ledger's transactions are in publish order. The commands
// behind a chain's retried first one wait behind it again.
func TestChainsKeepAHotWalletInOrder(t *testing.T) {
	t.Parallel()
	const pairs = 150
	var bulks, failed atomic.Int64
	fail := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/_bulk") {
				if n := bulks.Add(1); n == 2 || n == 5 {
					failed.Add(1)
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusInternalServerError)
					_, _ = w.Write([]byte(`{"errorCode":"INTERNAL","errorMessage":"injected"}`))
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
	b := setup(t, withKindsOf(moneyKinds), withLedgerMiddleware(fail), withConfig(func(c *Config) { c.Concurrency = 8 }))

	var want []string
	for i := range pairs {
		amount := 100 + i
		b.publish(t, kindMsg(messages.KindCreditWallet, "hot", fmt.Sprintf("c-%d", i),
			fmt.Sprintf(`{"walletID":"hot","amount":{"asset":"USD/2","amount":%d}}`, amount)))
		b.publish(t, kindMsg(messages.KindDebitWallet, "hot", fmt.Sprintf("d-%d", i),
			fmt.Sprintf(`{"walletID":"hot","amount":{"asset":"USD/2","amount":%d}}`, amount)))
		want = append(want, fmt.Sprintf("+%d", amount), fmt.Sprintf("-%d", amount))
	}
	events := b.events.wait(t, 2*pairs)
	var keys, wantKeys []string
	for i, e := range events {
		require.NotContains(t, e.Subject, "rejected", "%s", e.Data)
		require.Equal(t, false, e.json(t)["replayed"], "%s", e.Data)
		keys = append(keys, e.json(t)["key"].(string))
		wantKeys = append(wantKeys, fmt.Sprintf("%c-%d", "cd"[i%2], i/2))
	}
	require.Equal(t, wantKeys, keys, "the wallet's events stored in the order its commands were applied")
	require.Equal(t, want, testutil.WalletMoves(t, b.ledger, testLedger)["hot"], "the ledger's transactions in publish order")
	st := b.worker.Stats()
	require.Positive(t, st.Chained.Load(), "no command rode a chain")
	require.EqualValues(t, 2, failed.Load(), "both injected failures were met")
	require.Positive(t, st.Retried.Load())
	t.Logf("%d of %d commands rode a chain, in %d bulks", st.Chained.Load(), 2*pairs, bulks.Load())
	b.settled(t)
}

// TestChainedCommandsReplayAfterARedelivery: the same commands published
// again after the duplicate window (JetStream stores them again) are
// answered replayed, chained or not, and change nothing.
func TestChainedCommandsReplayAfterARedelivery(t *testing.T) {
	t.Parallel()
	b := setup(t, withKindsOf(moneyKinds), withConfig(func(c *Config) { c.Concurrency = 8; c.DuplicateWindow = time.Second }))
	const n = 40
	msgs := make([]func() *nats.Msg, 0, n)
	for i := range n {
		kind := messages.KindCreditWallet
		if i%2 == 1 {
			kind = messages.KindDebitWallet
		}
		body := fmt.Sprintf(`{"walletID":"again","amount":{"asset":"USD/2","amount":%d}}`, 10+i/2)
		key := fmt.Sprintf("k-%d", i)
		msgs = append(msgs, func() *nats.Msg { return kindMsg(kind, "again", key, body) })
	}
	for _, m := range msgs {
		b.publish(t, m())
	}
	first := b.events.wait(t, n)
	ids := map[string]any{}
	for _, e := range first {
		body := e.json(t)
		require.Equal(t, false, body["replayed"], "%s", e.Data)
		ids[body["key"].(string)] = body["transactionID"]
	}
	for _, m := range msgs {
		b.publishAfterWindow(t, m())
	}
	all := b.events.wait(t, 2*n)
	for _, e := range all[n:] {
		body := e.json(t)
		require.Equal(t, true, body["replayed"], "%s", e.Data)
		require.Equal(t, ids[body["key"].(string)], body["transactionID"], "%s", e.Data)
	}
	require.Len(t, testutil.WalletMoves(t, b.ledger, testLedger)["again"], n, "nothing applied twice")
	t.Logf("%d of %d commands rode a chain", b.worker.Stats().Chained.Load(), 2*n)
	b.settled(t)
}

// TestHotWalletPastTheAsideRoom: more commands of one wallet than a worker
// lets wait aside (64 × its concurrency): those past it wait in slots, and
// the head of the line must still run rather than wait for a slot that
// only its own waiters hold, which would hand them all back after a whole
// ack wait.
func TestHotWalletPastTheAsideRoom(t *testing.T) {
	t.Parallel()
	const n = 64 * 2 * 5
	b := setup(t, withKindsOf(moneyKinds), withConfig(func(c *Config) { c.Concurrency = 2 }))
	want := b.publishCredits(t, "busy", n)
	b.events.wait(t, n)
	require.Equal(t, want, testutil.WalletMoves(t, b.ledger, testLedger)["busy"])
	require.Zero(t, b.worker.Stats().Retried.Load(), "commands handed back for waiting a whole ack wait")
	b.settled(t)
}

// panickyChainLedger sends single transactions through the real client,
// and panics on every chain.
type panickyChainLedger struct{ *ledgeradapter.Client }

func (panickyChainLedger) ChainTransactions(context.Context, string, []ledgeradapter.BulkTransaction) ([]ledgeradapter.BulkTransactionResult, error) {
	panic("chain broken")
}

// TestAChainThatPanicsSpendsNoDelivery: when deciding a chain panics, its
// riders wait for their turn again and its head is decided alone; every
// command is applied once, in order, and none is retried.
func TestAChainThatPanicsSpendsNoDelivery(t *testing.T) {
	t.Parallel()
	const n = 60
	b := setup(t, withConfig(func(c *Config) { c.Concurrency = 8 }), withKindsOf(func(c *ledgeradapter.Client) []handlers.Kind {
		chain := &handlers.Chain{Ledger: panickyChainLedger{c}}
		return []handlers.Kind{handlers.CreditWalletKind(&handlers.CreditWallet{Ledger: c, LedgerName: testLedger, Chain: chain})}
	}))
	want := b.publishCredits(t, "fragile", n)
	b.events.wait(t, n)
	require.Equal(t, want, testutil.WalletMoves(t, b.ledger, testLedger)["fragile"])
	st := b.worker.Stats()
	require.Zero(t, st.Retried.Load(), "deliveries spent on a chain's panic")
	require.Zero(t, st.Panics.Load())
	b.settled(t)
}

// publishCredits stores n credits of wallet at once, of 1 to n, and
// returns the moves they make in that order (testutil.WalletMoves).
func (b *bundle) publishCredits(t *testing.T, wallet string, n int) []string {
	t.Helper()
	var want []string
	var acks []jetstream.PubAckFuture
	for i := range n {
		f, err := b.js.PublishMsgAsync(kindMsg(messages.KindCreditWallet, wallet, fmt.Sprintf("c-%d", i),
			fmt.Sprintf(`{"walletID":%q,"amount":{"asset":"USD/2","amount":%d}}`, wallet, i+1)))
		require.NoError(t, err)
		acks = append(acks, f)
		want = append(want, fmt.Sprintf("+%d", i+1))
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(waitFor):
			t.Fatal("publish not acknowledged")
		}
	}
	return want
}

// TestChainEventsWaitForAFailedHead: the head of a chain fails to store its
// outcome event once; the commands of its chain do not store theirs before
// it, and are retried behind it, so the wallet's events are still stored in
// the order its commands were applied.
func TestChainEventsWaitForAFailedHead(t *testing.T) {
	t.Parallel()
	const n = 10
	var failed atomic.Bool
	b := setup(t, withKindsOf(moneyKinds), withConfig(func(c *Config) { c.Concurrency = 8 }),
		withHooks(func(b *bundle) hooks {
			return hooks{publish: func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
				if m.Header.Get(messages.HeaderCommandKey) == "c-0" && failed.CompareAndSwap(false, true) {
					return nil, errors.New("injected: the event was not stored")
				}
				return b.js.PublishMsg(ctx, m)
			}}
		}))
	want := b.publishCredits(t, "steady", n)
	events := b.events.wait(t, n)
	require.True(t, failed.Load())
	require.Positive(t, b.worker.Stats().Chained.Load(), "no chain formed")
	require.Equal(t, want, testutil.WalletMoves(t, b.ledger, testLedger)["steady"])
	var keys, wantKeys []string
	for i, e := range events {
		keys = append(keys, e.json(t)["key"].(string))
		wantKeys = append(wantKeys, fmt.Sprintf("c-%d", i))
	}
	require.Equal(t, wantKeys, keys, "the wallet's events stored in the order its commands were applied")
	b.settled(t)
}
