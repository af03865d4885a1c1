package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Faults injected at the seams of one delivery: the ledger's answer, the
// handler, the outcome publish and the ack. In each, the command ends in
// exactly one event and the ledger holds exactly one write.

type handlerFunc func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error)

func (f handlerFunc) Handle(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
	return f(ctx, key, cmd)
}

func isMetadataWrite(r *http.Request) bool {
	return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/metadata")
}

func isAccountRead(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/accounts/")
}

func ledgerError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"errorCode":%q,"errorMessage":%q}`, code, message)
}

// requireCreatedOnce checks the end state every recovered fault must reach.
func requireCreatedOnce(t *testing.T, b *bundle, key string, ack *jetstream.PubAck, replayed bool) received {
	t.Helper()
	b.settled(t)
	ev := single(t, b.events.all())
	require.Equal(t, createdPrefix+"w1", ev.Subject)
	requireEventHeaders(t, ev, key, ack)
	require.Equal(t, replayed, ev.json(t)["replayed"], "replayed")
	require.Empty(t, b.dlq.all())
	require.Equal(t, 1, b.setMetadataLogs(t))
	return ev
}

func TestLedgerInternalErrorOnce(t *testing.T) {
	t.Parallel()
	var writes atomic.Int64
	b := setup(t, withLedgerMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isMetadataWrite(r) && writes.Add(1) == 1 {
				ledgerError(w, http.StatusInternalServerError, "INTERNAL", "injected")
				return
			}
			next.ServeHTTP(w, r)
		})
	}))
	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))

	requireCreatedOnce(t, b, "k", ack, false)
	require.Equal(t, uint64(2), b.deliveries(t))
	require.Equal(t, int64(2), writes.Load())
}

// The ledger applies the write but its answer never reaches the worker.
func TestLedgerAnswerLost(t *testing.T) {
	t.Parallel()
	// applyThen lets the ledger apply the first metadata write, records its
	// status, and then loses the answer with lose.
	applyThen := func(status *atomic.Int64, writes *atomic.Int64, lose func(http.ResponseWriter, *http.Request)) func(http.Handler) http.Handler {
		return func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if isMetadataWrite(r) && writes.Add(1) == 1 {
					rec := httptest.NewRecorder()
					next.ServeHTTP(rec, r)
					status.Store(int64(rec.Code))
					lose(w, r)
					return
				}
				next.ServeHTTP(w, r)
			})
		}
	}

	t.Run("connection closed", func(t *testing.T) {
		t.Parallel()
		var status, writes atomic.Int64
		b := setup(t, withLedgerMiddleware(applyThen(&status, &writes, func(w http.ResponseWriter, _ *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = conn.Close()
			}
		})))
		ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))

		// net/http retries a request that carries an Idempotency-Key on a
		// reused connection closed before any answer: the same delivery
		// sends the write again, and the ledger answers Idempotency-Hit.
		requireCreatedOnce(t, b, "k", ack, true)
		require.Equal(t, int64(http.StatusNoContent), status.Load(), "the lost write was applied")
		require.Equal(t, int64(2), writes.Load(), "the retry is a second write: an Idempotency-Hit")
		require.Equal(t, uint64(1), b.deliveries(t))
	})

	t.Run("answer after the client timeout", func(t *testing.T) {
		t.Parallel()
		var status, writes atomic.Int64
		b := setup(t, withLedgerMiddleware(applyThen(&status, &writes, func(_ http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // the client gave up (ledger timeout 1s) and closed the connection
		})))
		ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))

		// The timeout is transient: the redelivery finds the replay marker
		// and replays without writing.
		requireCreatedOnce(t, b, "k", ack, true)
		require.Equal(t, int64(http.StatusNoContent), status.Load(), "the lost write was applied")
		require.Equal(t, int64(1), writes.Load())
		require.Equal(t, uint64(2), b.deliveries(t))
	})
}

// recordPublishes is a hooks.publish that publishes for real and keeps each
// PubAck of an outcome event; fail, when it returns true, fails that publish
// instead.
func recordPublishes(b *bundle, duplicates *atomic.Int64, fail func(*nats.Msg) bool) func(context.Context, *nats.Msg) (*jetstream.PubAck, error) {
	return func(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
		if fail != nil && fail(m) {
			return nil, errors.New("injected: publish failed")
		}
		ack, err := b.js.PublishMsg(ctx, m)
		if err == nil && ack.Duplicate && strings.HasPrefix(m.Subject, "wallets.events.") {
			duplicates.Add(1)
		}
		return ack, err
	}
}

// loseFirstAck is a beforeAck hook that loses the first ack it sees,
// counting every call in n.
func loseFirstAck(n *atomic.Int64) func(*delivery) error {
	return func(*delivery) error {
		if n.Add(1) == 1 {
			return errors.New("injected: ack lost")
		}
		return nil
	}
}

// The ack after a stored event is lost: JetStream redelivers after AckWait,
// and the redelivery finds its event, the newest of its wallet: it is
// acknowledged, and nothing is decided or published again.
func TestAckLost(t *testing.T) {
	t.Parallel()
	var beforeAck, duplicates atomic.Int64
	b := setup(t, withHooks(func(b *bundle) hooks {
		return hooks{
			beforeAck: loseFirstAck(&beforeAck),
			publish:   recordPublishes(b, &duplicates, nil),
		}
	}))
	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))

	requireCreatedOnce(t, b, "k", ack, false)
	require.Equal(t, uint64(2), b.deliveries(t))
	require.Equal(t, int64(2), beforeAck.Load())
	require.Zero(t, duplicates.Load(), "nothing published again")
	require.EqualValues(t, 1, b.worker.Stats().SettledBefore.Load())
	require.Zero(t, b.worker.Stats().Replayed.Load(), "not decided again")
}

// As above, without order within a wallet: another command of the wallet
// settles before the redelivery, so the redelivery's event is no longer the
// wallet's newest and it is decided again. It replays, and its event,
// under the same Nats-Msg-Id, is dropped by JetStream.
func TestAckLostBehindANewerEvent(t *testing.T) {
	t.Parallel()
	var beforeAck, duplicates atomic.Int64
	// The second command must settle before the first comes back: an ack
	// wait of 8 s leaves it that long even on a slow machine.
	b := setup(t, withConfig(func(c *Config) { c.Order = OrderNone; c.AckWait = 8 * time.Second }), withHooks(func(b *bundle) hooks {
		return hooks{
			beforeAck: loseFirstAck(&beforeAck),
			publish:   recordPublishes(b, &duplicates, nil),
		}
	}))
	b.publish(t, cmd("w1", "k", body("w1", "savings")))
	require.Eventually(t, func() bool { return len(b.events.all()) == 1 }, waitFor, tick)
	b.publish(t, cmd("w1", "k2", body("w1", "gift")))
	b.settled(t)

	require.Len(t, b.events.all(), 2, "one event each")
	require.Equal(t, uint64(3), b.deliveries(t), "the first command twice, the second once")
	require.Equal(t, int64(1), duplicates.Load(), "the replay's event was deduplicated")
	require.Zero(t, b.worker.Stats().SettledBefore.Load())
	require.EqualValues(t, 1, b.worker.Stats().Replayed.Load())
}

// The outcome event cannot be stored: the command is not acked but retried
// with a delay, and the retry replays.
func TestEventPublishFailsOnce(t *testing.T) {
	t.Parallel()
	var events, duplicates atomic.Int64
	b := setup(t, withHooks(func(b *bundle) hooks {
		return hooks{publish: recordPublishes(b, &duplicates, func(m *nats.Msg) bool {
			return strings.HasPrefix(m.Subject, "wallets.events.") && events.Add(1) == 1
		})}
	}))
	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))

	requireCreatedOnce(t, b, "k", ack, true)
	require.Equal(t, uint64(2), b.deliveries(t))
	require.Equal(t, int64(2), events.Load())
	require.Zero(t, duplicates.Load())
	require.Equal(t, int64(1), b.worker.Stats().Retried.Load())
}

func TestHandlerPanicOnce(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	b := setup(t, withHandler(func(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
		return handlerFunc(func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
			if calls.Add(1) == 1 {
				panic("injected")
			}
			return h.Handle(ctx, key, cmd)
		})
	}))
	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))

	requireCreatedOnce(t, b, "k", ack, false)
	require.Equal(t, uint64(2), b.deliveries(t))
	require.Equal(t, int64(1), b.worker.Stats().Panics.Load())

	// The worker still runs.
	b.publish(t, cmd("w2", "k2", body("w2", "savings")))
	require.Equal(t, createdPrefix+"w2", b.events.wait(t, 2)[1].Subject)
}

// A ledger that fails every delivery: on delivery MaxDeliver, and not before,
// the command becomes RETRIES_EXHAUSTED, with the last error in the reason.
func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	var reads atomic.Int64
	var mu sync.Mutex
	var at []time.Time
	backoff := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 0.2}
	b := setup(t,
		withConfig(func(c *Config) { c.MaxDeliver = 3; c.Backoff = backoff }),
		withLedgerMiddleware(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if isAccountRead(r) {
					mu.Lock()
					at = append(at, time.Now())
					mu.Unlock()
					ledgerError(w, http.StatusServiceUnavailable, "INTERNAL", fmt.Sprintf("injected failure %d", reads.Add(1)))
					return
				}
				next.ServeHTTP(w, r)
			})
		}))
	m := cmd("w1", "k", body("w1", "savings"))
	ack := b.publish(t, m)

	b.settled(t)
	require.Equal(t, uint64(3), b.deliveries(t))
	require.Equal(t, int64(3), reads.Load())
	// Each redelivery waited for its backoff (a bare Nak would not).
	mu.Lock()
	for n := 1; n < len(at); n++ {
		least := time.Duration(float64(nominal(backoff, uint64(n))) * (1 - backoff.Jitter))
		require.GreaterOrEqual(t, at[n].Sub(at[n-1]), least, "wait before delivery %d", n+1)
	}
	mu.Unlock()

	ev := single(t, b.events.all())
	require.Equal(t, rejectedPrefix+"w1", ev.Subject)
	requireEventHeaders(t, ev, "k", ack)
	got := ev.json(t)
	require.Equal(t, "RETRIES_EXHAUSTED", got["code"])
	require.Contains(t, got["message"], "injected failure 3")

	dl := single(t, b.dlq.all())
	require.Equal(t, dlqPrefix+"w1", dl.Subject)
	require.Equal(t, m.Data, dl.Data)
	require.Equal(t, []string{"k"}, dl.Header["Nats-Msg-Id"])
	require.Equal(t, []string{"RETRIES_EXHAUSTED"}, dl.Header["Wallets-Dlq-Code"])
	require.Contains(t, dl.Header.Get("Wallets-Dlq-Reason"), "injected failure 3")
	require.Equal(t, []string{m.Subject}, dl.Header["Wallets-Original-Subject"])
	require.Equal(t, []string{seqString(ack)}, dl.Header["Wallets-Original-Seq"])
	require.Equal(t, []string{"3"}, dl.Header["Wallets-Deliveries"])
	require.Zero(t, b.setMetadataLogs(t))
}

// A delivery whose handling and settling together outlast AckWait, each
// staying within its own deadline, keeps its lease by InProgress and is
// delivered once.
func TestSlowDeliveryKeepsLease(t *testing.T) {
	t.Parallel()
	const (
		ackWait     = 3 * time.Second
		handlerWork = 1500 * time.Millisecond // below HandlerTimeout
		settleWork  = 2 * time.Second         // below SettleTimeout; with handlerWork, over AckWait
	)
	// The waits below are the simulated slow work, not synchronisation.
	work := func(ctx context.Context, d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	var calls, settles atomic.Int64
	b := setup(t,
		withConfig(func(c *Config) {
			c.AckWait = ackWait
			c.HandlerTimeout = 2500 * time.Millisecond
			c.SettleTimeout = 5 * time.Second
		}),
		withHandler(func(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
			return handlerFunc(func(ctx context.Context, key string, cmd messages.CreateBalance) (handlers.Outcome, error) {
				calls.Add(1)
				work(ctx, handlerWork)
				return h.Handle(ctx, key, cmd)
			})
		}),
		withHooks(func(*bundle) hooks {
			return hooks{beforeAck: func(*delivery) error {
				settles.Add(1)
				work(context.Background(), settleWork)
				return nil
			}}
		}))
	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))

	requireCreatedOnce(t, b, "k", ack, false)
	require.Equal(t, int64(1), calls.Load(), "handled once")
	require.Equal(t, int64(1), settles.Load(), "settled once")
	require.Equal(t, uint64(1), b.deliveries(t), "never redelivered")
}

// On the retry budget's last delivery the balance is written, then the
// outcome event's publish fails once: it is published again in process,
// rather than left to a redelivery past the budget, which would settle
// RETRIES_EXHAUSTED (and a dead letter) for a balance the ledger holds.
func TestLastDeliveryPublishesItsOutcomeAgain(t *testing.T) {
	t.Parallel()
	const maxDeliver = 3
	var reads, duplicates atomic.Int64
	var failedOnce atomic.Bool
	b := setup(t,
		withConfig(func(c *Config) { c.MaxDeliver = maxDeliver }),
		readsFailUntilDelivery(&reads, maxDeliver),
		withHooks(func(b *bundle) hooks {
			return hooks{publish: recordPublishes(b, &duplicates, func(m *nats.Msg) bool {
				return strings.HasPrefix(m.Subject, createdPrefix) && failedOnce.CompareAndSwap(false, true)
			})}
		}))
	b.publish(t, cmd("w1", "k", body("w1", "savings")))
	b.settled(t)
	require.True(t, failedOnce.Load(), "the first publish failed")
	require.EqualValues(t, maxDeliver, b.deliveries(t), "settled on the last delivery")
	require.Equal(t, 1, b.setMetadataLogs(t))
	ev := single(t, b.events.all())
	require.True(t, strings.HasPrefix(ev.Subject, createdPrefix), ev.Subject)
	require.Empty(t, b.dlq.all())
}

// On its last delivery, a chain rider whose predecessor's event was not
// written publishes its own out of turn, rather than be handed back past
// the budget; its own turn stays open (handle ends it unwritten), so the
// commands after it still wait for the earlier one. Before its last
// delivery the lost turn stands, and it is handed back.
func TestLastDeliveryPublishesOutOfTurn(t *testing.T) {
	t.Parallel()
	w := &Worker{cfg: Config{MaxDeliver: 3, SettleTimeout: time.Second}, log: slog.New(slog.DiscardHandler)}
	var published atomic.Int32
	w.hooks.publish = func(context.Context, *nats.Msg) (*jetstream.PubAck, error) {
		published.Add(1)
		return &jetstream.PubAck{}, nil
	}
	before := newEventTurn()
	before.end(false)
	for _, tc := range []struct {
		delivered uint64
		want      error
		published int32
	}{{2, errTurnLost, 0}, {3, nil, 1}} {
		mine := newEventTurn()
		d := &delivery{msg: headerMsg{key: "k"}, delivered: tc.delivered, eventTurn: before, eventDone: mine}
		inTurn := func(ctx context.Context, m *nats.Msg) error { return w.publishInTurn(ctx, d, m) }
		ctx, cancel := context.WithTimeout(context.Background(), time.Second) // a settle's
		err := w.publishOutcome(ctx, d, &nats.Msg{Subject: "wallets.events.x.w1"}, inTurn)
		cancel()
		if tc.want == nil {
			require.NoError(t, err, "delivery %d", tc.delivered)
		} else {
			require.ErrorIs(t, err, tc.want, "delivery %d", tc.delivered)
		}
		require.Equal(t, tc.published, published.Load(), "delivery %d", tc.delivered)
		select {
		case <-mine.done:
			t.Fatalf("delivery %d: its turn ended here; handle ends it unwritten, so the next waits", tc.delivered)
		default:
		}
	}
}

// headerMsg is a delivery's message with only its key.
type headerMsg struct {
	jetstream.Msg
	key string
}

func (m headerMsg) Headers() nats.Header { return nats.Header{messages.HeaderMsgID: {m.key}} }

// readsFailUntilDelivery makes the ledger answer 503 to the account reads of
// the deliveries before delivery n of a create-balance command (one read
// each), counted in reads.
func readsFailUntilDelivery(reads *atomic.Int64, n int64) option {
	return withLedgerMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isAccountRead(r) && reads.Add(1) < n {
				ledgerError(w, http.StatusServiceUnavailable, "INTERNAL", "injected")
				return
			}
			next.ServeHTTP(w, r)
		})
	})
}
