package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// The main flows, run once with the handler on the ledger client and once
// with a ledgeradapter.Batcher between them: every command keeps its own
// outcome, retries and dead letter when its reads and writes share
// requests. Faults are injected on both wire forms of a write (the single
// metadata POST and the bulk).

// withBatching puts a Batcher between the handler and the ledger client. It
// composes with withHandler when given after it.
func withBatching(cfg ledgeradapter.BatcherConfig) option {
	return func(o *setupOptions) {
		prev := o.wrap
		o.wrap = func(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
			cb := h.(*handlers.CreateBalance)
			b, err := ledgeradapter.NewBatcher(cb.Ledger.(ledgeradapter.BatchLedger), cfg)
			if err != nil {
				panic(err)
			}
			cb.Ledger = b
			if prev != nil {
				return prev(cb)
			}
			return cb
		}
	}
}

// modes are the two ways every flow below runs.
var modes = []struct {
	name    string
	batched bool
}{{"unbatched", false}, {"batched", true}}

func modeOptions(batched bool, opts ...option) []option {
	if batched {
		opts = append(opts, withBatching(ledgeradapter.BatcherConfig{}))
	}
	return opts
}

// wire classifies the ledger requests of a flow and, between hold and
// release, holds them, so that the commands of a burst meet in the Batcher.
type wire struct {
	holding  atomic.Bool
	released chan struct{}
	list     atomic.Int64 // GET /v2/{ledger}/accounts
	bulk     atomic.Int64 // POST /v2/{ledger}/_bulk
	requests atomic.Int64
}

func newWire() *wire { return &wire{released: make(chan struct{})} }

func (wr *wire) hold()    { wr.holding.Store(true) }
func (wr *wire) release() { close(wr.released) }

func (wr *wire) middleware(fault func(http.Handler) http.Handler) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if fault != nil {
			next = fault(next)
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if wr.holding.Load() {
				<-wr.released
			}
			wr.requests.Add(1)
			switch {
			case isBulk(r):
				wr.bulk.Add(1)
			case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/accounts"):
				wr.list.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	}
}

func isBulk(r *http.Request) bool {
	return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/_bulk")
}

// writeKeys returns the ledger idempotency keys a metadata write carries,
// in either form, and restores the request body.
func writeKeys(t *testing.T, r *http.Request) []string {
	switch {
	case isMetadataWrite(r):
		return []string{r.Header.Get("Idempotency-Key")}
	case isBulk(r):
		raw, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		r.Body = io.NopCloser(bytes.NewReader(raw))
		var elems []struct {
			IK string `json:"ik"`
		}
		require.NoError(t, json.Unmarshal(raw, &elems))
		keys := make([]string, len(elems))
		for i, e := range elems {
			keys[i] = e.IK
		}
		return keys
	}
	return nil
}

// eventsByKey indexes outcome events by command key.
func eventsByKey(t *testing.T, evs []received) map[string]received {
	t.Helper()
	out := map[string]received{}
	for _, ev := range evs {
		k := ev.Header.Get("Wallets-Command-Key")
		require.NotContains(t, out, k, "one event per command")
		out[k] = ev
	}
	return out
}

// A burst of every kind of command: each gets the outcome it gets alone,
// the ledger holds one write per created balance, and batching carried
// many commands per request. (Two keys racing for one new balance are the
// claim's business, tested in claim_test.go; this setup has no claim.)
//
// The burst is held at the ledger while it is published, then reaches it at
// once: on a loaded machine a request may wait longer than the tests' usual
// 1s ledger timeout or 2s handler timeout, and a write that the client gave
// up on but the ledger applied comes back as a replay. Both are made long
// enough that each fresh command's one attempt gets its answer.
func TestFlowsBurst(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			wr := newWire()
			b := setup(t, modeOptions(m.batched,
				withConfig(func(c *Config) { c.Concurrency, c.AckWait = 64, 45*time.Second }),
				withLedgerTimeout(30*time.Second),
				withLedgerMiddleware(wr.middleware(nil)))...)
			_, err := b.ledger.AddAccountMetadata(context.Background(), testLedger, "wallets:svc:same", map[string]string{
				"wallets/id": "svc", "wallets/balances": "true", "wallets/balances/name": "same",
				"wallets/balances/expiresAt": "", "wallets/balances/priority": "0",
				markerKey("svc-key"): `{"name":"same","expiresAt":null,"priority":0}`,
			}, "svc-key")
			require.NoError(t, err)
			wr.hold()
			before := wr.requests.Load()

			const fresh = 40
			want := map[string]string{} // key → created, replayed or a code
			for i := range fresh {
				k := fmt.Sprintf("k%d", i)
				b.publish(t, cmd(fmt.Sprintf("w%d", i), k, body(fmt.Sprintf("w%d", i), "savings")))
				want[k] = "created"
			}
			b.publish(t, cmd("svc", "svc-key", body("svc", "same")))
			want["svc-key"] = "replayed"
			b.publish(t, cmd("svc", "svc-other", `{"walletID":"svc","name":"same","priority":4}`))
			want["svc-other"] = "ALREADY_EXISTS"
			b.publish(t, cmd("w1", "bad", body("w1", "main")))
			want["bad"] = "INVALID_COMMAND"
			wr.release()
			b.settled(t)

			evs := eventsByKey(t, b.events.all())
			require.Len(t, evs, len(want))
			for k, w := range want {
				ev := evs[k].json(t)
				switch w {
				case "created", "replayed":
					require.Equal(t, w == "replayed", ev["replayed"], k)
				default:
					require.Equal(t, w, ev["code"], k)
				}
			}
			dl := single(t, b.dlq.all())
			require.Equal(t, "bad", dl.Header.Get("Nats-Msg-Id"))
			require.Equal(t, fresh+1, b.setMetadataLogs(t), "one write per created balance, and the seed")

			if m.batched {
				require.Positive(t, wr.list.Load(), "reads were batched")
				require.Positive(t, wr.bulk.Load(), "writes were batched")
				require.Less(t, wr.requests.Load()-before, int64(len(want)), "fewer requests than commands")
			} else {
				require.Zero(t, wr.list.Load()+wr.bulk.Load())
			}
		})
	}
}

// A write that fails transiently, alone or as one element of a bulk: that
// command is retried and created once; the others of its request are not
// affected.
func TestFlowsWriteFailsOnce(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			faulted := handlers.LedgerIdempotencyKey("k3")
			var once sync.Once
			var alone atomic.Bool // the faulted write went alone, not in a bulk
			fault := func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					keys := writeKeys(t, r)
					at := -1
					for i, k := range keys {
						if k == faulted {
							at = i
						}
					}
					fire := false
					if at >= 0 {
						once.Do(func() { fire = true })
					}
					switch {
					case !fire:
						next.ServeHTTP(w, r)
					case isBulk(r):
						failElement(t, next, w, r, at)
					default:
						alone.Store(true)
						ledgerError(w, http.StatusInternalServerError, "INTERNAL", "injected")
					}
				})
			}
			wr := newWire()
			b := setup(t, modeOptions(m.batched,
				withConfig(func(c *Config) { c.Concurrency = 16 }),
				withLedgerMiddleware(wr.middleware(fault)))...)
			wr.hold()
			acks := map[string]*jetstream.PubAck{}
			for i := range 8 {
				k := fmt.Sprintf("k%d", i)
				acks[k] = b.publish(t, cmd(fmt.Sprintf("w%d", i), k, body(fmt.Sprintf("w%d", i), "savings")))
			}
			wr.release()
			b.settled(t)

			evs := eventsByKey(t, b.events.all())
			require.Len(t, evs, 8)
			for k, ack := range acks {
				require.Equal(t, createdPrefix+strings.Replace(k, "k", "w", 1), evs[k].Subject)
				requireEventHeaders(t, evs[k], k, ack)
				require.Equal(t, false, evs[k].json(t)["replayed"], k)
			}
			require.Empty(t, b.dlq.all())
			require.Equal(t, 8, b.setMetadataLogs(t))
			if m.batched && !alone.Load() {
				// (Batched, k3's write may still go alone when no other
				// write is waiting with it: it is then retried, below.)
				// A parallel bulk's answer does not say which element failed
				// (results come in the order they finished): the client asks
				// the ledger again, in order, and learns that write's fate in
				// the same call (ledgeradapter.Client.Bulk).
				require.Equal(t, uint64(8), b.deliveries(t), "no command came back")
				require.Zero(t, b.worker.Stats().Retried.Load())
				return
			}
			require.Equal(t, uint64(9), b.deliveries(t), "only the faulted command came back")
			require.Equal(t, int64(1), b.worker.Stats().Retried.Load())
		})
	}
}

// failElement serves a bulk without its element at, whose result becomes a
// transient INTERNAL error: what a ledger answers when one element fails.
func failElement(t *testing.T, next http.Handler, w http.ResponseWriter, r *http.Request, at int) {
	raw, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	var elems []json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &elems))
	rest := append(append([]json.RawMessage{}, elems[:at]...), elems[at+1:]...)
	results := []json.RawMessage{}
	if len(rest) > 0 {
		b, err := json.Marshal(rest)
		require.NoError(t, err)
		fwd := r.Clone(r.Context())
		fwd.Body, fwd.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, fwd)
		var out struct{ Data []json.RawMessage }
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out), rec.Body.String())
		results = out.Data
	}
	injected := json.RawMessage(`{"responseType":"ERROR","logID":0,"errorCode":"INTERNAL","errorDescription":"injected"}`)
	results = append(results[:at], append([]json.RawMessage{injected}, results[at:]...)...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	require.NoError(t, json.NewEncoder(w).Encode(map[string]any{"data": results}))
}

// The ledger applies a write but its answer is lost: the commands of that
// request are redelivered (or, alone, retried by net/http on the
// Idempotency-Key) and replay from their marker; nothing is written twice.
func TestFlowsWriteAnswerLost(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			var lost sync.Map // ledger idempotency keys of the lost request
			var once sync.Once
			fault := func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					keys := writeKeys(t, r)
					fire := false
					if len(keys) > 0 {
						once.Do(func() { fire = true })
					}
					if !fire {
						next.ServeHTTP(w, r)
						return
					}
					for _, k := range keys {
						lost.Store(k, true)
					}
					next.ServeHTTP(httptest.NewRecorder(), r)
					if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
						_ = conn.Close()
					}
				})
			}
			wr := newWire()
			b := setup(t, modeOptions(m.batched,
				withConfig(func(c *Config) { c.Concurrency = 16 }),
				withLedgerMiddleware(wr.middleware(fault)))...)
			wr.hold()
			for i := range 8 {
				b.publish(t, cmd(fmt.Sprintf("w%d", i), fmt.Sprintf("k%d", i), body(fmt.Sprintf("w%d", i), "savings")))
			}
			wr.release()
			b.settled(t)

			evs := eventsByKey(t, b.events.all())
			require.Len(t, evs, 8)
			n := 0
			for i := range 8 {
				k := fmt.Sprintf("k%d", i)
				_, wasLost := lost.Load(handlers.LedgerIdempotencyKey(k))
				if wasLost {
					n++
				}
				require.Equal(t, createdPrefix+fmt.Sprintf("w%d", i), evs[k].Subject)
				require.Equal(t, wasLost, evs[k].json(t)["replayed"], "%s: replayed when its write's answer was lost", k)
			}
			require.Positive(t, n)
			require.Empty(t, b.dlq.all())
			require.Equal(t, 8, b.setMetadataLogs(t), "nothing written twice")
		})
	}
}

// A ledger that fails every read: each command of the burst is retried on
// its own budget and dead-lettered as RETRIES_EXHAUSTED, with the error of
// the request that carried its read.
func TestFlowsRetriesExhausted(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			var reads atomic.Int64
			fault := func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/accounts") {
						ledgerError(w, http.StatusServiceUnavailable, "INTERNAL", fmt.Sprintf("injected failure %d", reads.Add(1)))
						return
					}
					next.ServeHTTP(w, r)
				})
			}
			wr := newWire()
			b := setup(t, modeOptions(m.batched,
				withConfig(func(c *Config) {
					c.Concurrency = 16
					c.MaxDeliver = 2
					c.Backoff = Backoff{Initial: 20 * time.Millisecond, Max: 50 * time.Millisecond}
				}),
				withLedgerMiddleware(wr.middleware(fault)))...)
			wr.hold()
			const n = 6
			for i := range n {
				b.publish(t, cmd(fmt.Sprintf("w%d", i), fmt.Sprintf("k%d", i), body(fmt.Sprintf("w%d", i), "savings")))
			}
			wr.release()
			b.settled(t)

			evs := eventsByKey(t, b.events.all())
			require.Len(t, evs, n)
			for k, ev := range evs {
				require.Equal(t, "RETRIES_EXHAUSTED", ev.json(t)["code"], k)
				require.Contains(t, ev.json(t)["message"], "injected failure", k)
			}
			dls := b.dlq.all()
			require.Len(t, dls, n)
			for _, dl := range dls {
				require.Equal(t, []string{"2"}, dl.Header["Wallets-Deliveries"])
			}
			require.Equal(t, uint64(2*n), b.deliveries(t))
			require.Zero(t, b.setMetadataLogs(t))
			if m.batched {
				require.Less(t, reads.Load(), int64(2*n), "reads shared requests")
			} else {
				require.Equal(t, int64(2*n), reads.Load())
			}
		})
	}
}
