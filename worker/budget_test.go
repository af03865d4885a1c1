package worker

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// The command is given up on at delivery MaxDeliver (RETRIES_EXHAUSTED:
// dead letter, event), but the Term that should end it is lost, so JetStream
// delivers it once more; by then the ledger is healthy. That delivery is past
// the budget: it must not call the handler, for a write now would contradict
// the stored outcome (and its event, under the same Nats-Msg-Id, would be
// dropped as a duplicate). It finds its event stored and is acknowledged:
// nothing read from the ledger, nothing published again.
func TestPastTheBudgetSettlesAgainWithoutTheLedger(t *testing.T) {
	t.Parallel()
	const maxDeliver = 3
	var reads, calls, beforeTerm, duplicates atomic.Int64
	b := setup(t,
		withConfig(func(c *Config) { c.MaxDeliver = maxDeliver }),
		withReplaysOf(replaysOf),
		withLedgerMiddleware(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// Down for the budget's deliveries, healthy afterwards.
				if isAccountRead(r) && reads.Add(1) <= maxDeliver {
					ledgerError(w, http.StatusServiceUnavailable, "INTERNAL", "injected outage")
					return
				}
				next.ServeHTTP(w, r)
			})
		}),
		withHandler(func(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
			return handlerFunc(func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
				calls.Add(1)
				return h.Handle(ctx, key, cmd)
			})
		}),
		withHooks(func(b *bundle) hooks {
			return hooks{
				beforeAck: func(*delivery) error {
					if beforeTerm.Add(1) == 1 {
						return errors.New("injected: term lost")
					}
					return nil
				},
				publish: recordPublishes(b, &duplicates, nil),
			}
		}))
	m := cmd("w1", "k", body("w1", "savings"))
	ack := b.publish(t, m)

	b.settled(t)
	require.Equal(t, uint64(maxDeliver+1), b.deliveries(t), "redelivered once after the lost term")
	require.Equal(t, int64(2), beforeTerm.Load(), "settled, then acknowledged on the redelivery")
	require.Equal(t, int64(maxDeliver), calls.Load(), "the handler is not called past the budget")
	require.Equal(t, int64(maxDeliver), reads.Load(), "past the budget, the stored event answers: no ledger read")
	require.Zero(t, b.setMetadataLogs(t), "no ledger write")
	require.EqualValues(t, 1, b.worker.Stats().SettledBefore.Load())

	// The same outcome: one event, RETRIES_EXHAUSTED, published once; one
	// dead letter.
	ev := single(t, b.events.all())
	require.Equal(t, rejectedPrefix+"w1", ev.Subject)
	requireEventHeaders(t, ev, "k", ack)
	require.Equal(t, "RETRIES_EXHAUSTED", ev.json(t)["code"])
	require.Zero(t, duplicates.Load(), "nothing published again")
	dl := single(t, b.dlq.all())
	require.Equal(t, m.Data, dl.Data)
	require.Equal(t, []string{"RETRIES_EXHAUSTED"}, dl.Header["Wallets-Dlq-Code"])
	require.Equal(t, []string{seqString(ack)}, dl.Header["Wallets-Original-Seq"])
}

// The command is given up on at delivery MaxDeliver, its dead letter is
// stored and its event is not (every event publish fails on that delivery),
// so JetStream delivers it once more. Past the budget it finds no event of
// its own: the replays, as run sets them, read the ledger once, find
// nothing applied, and it settles RETRIES_EXHAUSTED again.
func TestPastTheBudgetWithoutItsEventAsksTheLedger(t *testing.T) {
	t.Parallel()
	const maxDeliver = 3
	var reads atomic.Int64
	b, down := eventsDownUntilPastTheBudget(t, maxDeliver, readsFailUntilDelivery(&reads, maxDeliver+1))
	b.publish(t, cmd("w1", "k", body("w1", "savings")))
	require.Eventually(t, func() bool { return b.deliveries(t) > maxDeliver }, waitFor, tick, "redelivered past the budget")
	down.Store(false)
	b.settled(t)
	require.Equal(t, uint64(maxDeliver+1), b.deliveries(t))
	require.Equal(t, int64(maxDeliver+1), reads.Load(), "past the budget, the replays' one read")
	require.Zero(t, b.setMetadataLogs(t), "no ledger write")
	require.Zero(t, b.worker.Stats().SettledBefore.Load())
	ev := single(t, b.events.all())
	require.Equal(t, rejectedPrefix+"w1", ev.Subject)
	require.Equal(t, "RETRIES_EXHAUSTED", ev.json(t)["code"])
}

// On the budget's last delivery the balance is written, then the worker
// cannot store its event (here: every publish fails until the next
// delivery; a worker that died after the write is the same). The delivery
// past the budget asks the replays, which write nothing: they find the
// balance, and the command settles replayed, not RETRIES_EXHAUSTED.
func TestPastTheBudgetFindsTheLastDeliverysWrite(t *testing.T) {
	t.Parallel()
	const maxDeliver = 3
	var reads atomic.Int64
	b, down := eventsDownUntilPastTheBudget(t, maxDeliver, readsFailUntilDelivery(&reads, maxDeliver))
	b.publish(t, cmd("w1", "k", body("w1", "savings")))
	require.Eventually(t, func() bool { return b.deliveries(t) > maxDeliver }, waitFor, tick, "redelivered past the budget")
	down.Store(false)
	b.settled(t)
	require.Equal(t, 1, b.setMetadataLogs(t), "written once, on the last delivery")
	ev := single(t, b.events.all())
	require.True(t, strings.HasPrefix(ev.Subject, createdPrefix), ev.Subject)
	require.Equal(t, true, ev.json(t)["replayed"])
	require.Empty(t, b.dlq.all())
}

// eventsDownUntilPastTheBudget sets up a worker with a budget of maxDeliver
// deliveries, the replays run sets, a short settle timeout, and ledger, a
// ledger option. Every event publish fails until the returned flag is
// cleared, which the test does once the command is delivered past the
// budget.
func eventsDownUntilPastTheBudget(t *testing.T, maxDeliver int, ledger option) (*bundle, *atomic.Bool) {
	t.Helper()
	var down atomic.Bool
	down.Store(true)
	var duplicates atomic.Int64
	b := setup(t,
		withConfig(func(c *Config) {
			c.MaxDeliver = maxDeliver
			c.SettleTimeout = 300 * time.Millisecond
		}),
		ledger,
		withReplaysOf(replaysOf),
		withHooks(func(b *bundle) hooks {
			return hooks{publish: recordPublishes(b, &duplicates, func(m *nats.Msg) bool {
				return strings.HasPrefix(m.Subject, "wallets.events.") && down.Load()
			})}
		}))
	return b, &down
}

// replaysOf are the replays run sets, over the test's ledger client.
func replaysOf(c *ledgeradapter.Client) handlers.Kinds {
	return handlers.Wallets{Balances: &handlers.CreateBalance{Ledger: c, LedgerName: testLedger}, Writes: c, Transactions: c,
		LedgerName: testLedger}.Replays()
}

// As above, but the ledger cannot answer the first two deliveries past the
// budget (503 on the replays' read). Settling RETRIES_EXHAUSTED then would
// contradict the balance the last delivery wrote: the delivery is handed back
// and the replays ask again on the next one, until the ledger answers.
func TestPastTheBudgetAsksAgainWhileTheLedgerCannotAnswer(t *testing.T) {
	t.Parallel()
	const maxDeliver = 3
	var reads atomic.Int64
	b, down := eventsDownUntilPastTheBudget(t, maxDeliver, withLedgerMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// One read per delivery: failing on the first two, answered
			// on the last (which writes), failing on the next two.
			if isAccountRead(r) {
				if n := reads.Add(1); n < maxDeliver || (n > maxDeliver && n <= maxDeliver+2) {
					ledgerError(w, http.StatusServiceUnavailable, "INTERNAL", "injected")
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}))
	b.publish(t, cmd("w1", "k", body("w1", "savings")))
	require.Eventually(t, func() bool { return b.deliveries(t) > maxDeliver }, waitFor, tick, "redelivered past the budget")
	down.Store(false)
	b.settled(t)
	require.Equal(t, uint64(maxDeliver+3), b.deliveries(t), "asked again twice past the budget")
	require.Equal(t, int64(maxDeliver+3), reads.Load())
	require.Equal(t, 1, b.setMetadataLogs(t), "written once, on the last delivery")
	ev := single(t, b.events.all())
	require.True(t, strings.HasPrefix(ev.Subject, createdPrefix), ev.Subject)
	require.Equal(t, true, ev.json(t)["replayed"])
	require.Empty(t, b.dlq.all())
}
