package worker

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/tracing"
)

// The producer's span context of the traced commands.
const (
	producerTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	producerSpanID      = "00f067aa0ba902b7"
	producerTraceparent = "00-" + producerTraceID + "-" + producerSpanID + "-01"
)

// ledgerRequest is one request the ledger received, with its traceparent.
type ledgerRequest struct {
	method, path, traceparent string
}

// ledgerTap records the requests that reach the ledger.
type ledgerTap struct {
	mu   sync.Mutex
	reqs []ledgerRequest
}

func (l *ledgerTap) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.reqs = append(l.reqs, ledgerRequest{r.Method, r.URL.Path, r.Header.Get("traceparent")})
		l.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// about returns the requests whose path names account.
func (l *ledgerTap) about(account string) []ledgerRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ledgerRequest
	for _, r := range l.reqs {
		if strings.Contains(r.path, account) {
			out = append(out, r)
		}
	}
	return out
}

type tracedBundle struct {
	*bundle
	spans  *tracetest.SpanRecorder
	ledger *ledgerTap
}

// setupTraced is setup with an in-memory span recorder as the worker's and
// the ledger client's tracer provider (tp overrides it when set), and a tap
// on the ledger.
func setupTraced(t *testing.T, tp trace.TracerProvider, opts ...option) *tracedBundle {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	if tp == nil {
		tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithIDGenerator(tracing.IDGenerator()))
	}
	tap := &ledgerTap{}
	opts = append(opts,
		withConfig(func(c *Config) { c.TracerProvider = tp }),
		withLedgerMiddleware(tap.middleware))
	return &tracedBundle{bundle: setup(t, opts...), spans: sr, ledger: tap}
}

// tracedCmd is cmd with the producer's traceparent.
func tracedCmd(wallet, key, body string) *nats.Msg {
	m := cmd(wallet, key, body)
	m.Header.Set("traceparent", producerTraceparent)
	return m
}

// processSpans waits for n ended consumer spans of key and returns them in
// delivery order.
func (b *tracedBundle) processSpans(t *testing.T, key string, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	var out []sdktrace.ReadOnlySpan
	require.Eventually(t, func() bool {
		out = out[:0]
		for _, s := range b.spans.Ended() {
			if s.Name() == "process wallets.commands.create-balance" && attr(s, "messaging.message.id") == key {
				out = append(out, s)
			}
		}
		return len(out) >= n
	}, waitFor, tick, "waiting for %d consumer spans of %s", n, key)
	require.Len(t, out, n)
	return out
}

// children returns the ended spans whose parent is span.
func (b *tracedBundle) children(span sdktrace.ReadOnlySpan) map[string]sdktrace.ReadOnlySpan {
	out := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range b.spans.Ended() {
		if s.Parent().SpanID() == span.SpanContext().SpanID() {
			out[s.Name()] = s
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// traceparentOf parses the traceparent of h.
func traceparentOf(t *testing.T, h nats.Header) trace.SpanContext {
	t.Helper()
	sc := trace.SpanContextFromContext(tracing.Extract(context.Background(), h))
	require.True(t, sc.IsValid(), "no valid traceparent in %v", h)
	return sc
}

// TestTraceFollowsTheCommand: a command published with a traceparent is
// worked in a consumer span, child of the producer's span; its ledger
// requests and its outcome event carry the trace; claims, publishes and the
// ack have their spans.
func TestTraceFollowsTheCommand(t *testing.T) {
	t.Parallel()
	b := setupTraced(t, nil)
	ack := b.publish(t, tracedCmd("w1", "k1", body("w1", "savings")))
	ev := single(t, b.events.wait(t, 1))
	span := b.processSpans(t, "k1", 1)[0]

	require.Equal(t, producerTraceID, span.SpanContext().TraceID().String())
	require.Equal(t, producerSpanID, span.Parent().SpanID().String(), "the consumer span is the producer span's child")
	require.True(t, span.Parent().IsRemote())
	require.Equal(t, trace.SpanKindConsumer, span.SpanKind())
	for k, v := range map[string]string{
		"messaging.system":                       "nats",
		"messaging.operation.type":               "process",
		"messaging.destination.name":             "wallets.commands.create-balance.w1",
		"messaging.consumer.group.name":          messages.ConsumerName,
		"messaging.message.id":                   "k1",
		"messaging.nats.message.delivery_count":  "1",
		"messaging.nats.message.stream_sequence": seqString(ack),
		"wallets.outcome":                        OutcomeCreated,
	} {
		require.Equal(t, v, attr(span, k), k)
	}

	got := traceparentOf(t, ev.Header)
	require.Equal(t, span.SpanContext().TraceID(), got.TraceID(), "event's trace")
	require.Equal(t, span.SpanContext().SpanID(), got.SpanID(), "the event carries the worker's span")

	reqs := b.ledger.about("wallets:w1:savings")
	require.Len(t, reqs, 2, "a read and a write: %v", reqs)
	kids := b.children(span)
	for _, r := range reqs {
		require.True(t, strings.HasPrefix(r.traceparent, "00-"+producerTraceID+"-"), "%s %s carries %q", r.method, r.path, r.traceparent)
	}
	for _, name := range []string{"ledger GetAccount", "ledger AddAccountMetadata", "send wallets.events.balance-created", "ack wallets.commands.create-balance"} {
		require.Contains(t, kids, name, "child spans of the consumer span")
	}
	// The traceparent of each request is its client span's.
	require.Contains(t, reqs[0].traceparent, kids["ledger GetAccount"].SpanContext().SpanID().String())
	require.Contains(t, reqs[1].traceparent, kids["ledger AddAccountMetadata"].SpanContext().SpanID().String())
}

// TestTraceOfADeadLetter: the dead letter and the rejection of an invalid
// command carry the worker span's traceparent, not the command's.
func TestTraceOfADeadLetter(t *testing.T) {
	t.Parallel()
	b := setupTraced(t, nil)
	b.publish(t, tracedCmd("w1", "bad", `{"walletID":"w1"}`))
	dl := single(t, b.dlq.wait(t, 1))
	ev := single(t, b.events.wait(t, 1))
	span := b.processSpans(t, "bad", 1)[0]
	require.Equal(t, producerTraceID, span.SpanContext().TraceID().String())
	require.Equal(t, OutcomeInvalid, attr(span, "wallets.outcome"))
	require.Equal(t, "Error", span.Status().Code.String())

	for name, h := range map[string]nats.Header{"dead letter": dl.Header, "event": ev.Header} {
		got := traceparentOf(t, h)
		require.Equal(t, span.SpanContext().TraceID(), got.TraceID(), name)
		require.Equal(t, span.SpanContext().SpanID(), got.SpanID(), name)
	}
	require.Contains(t, b.children(span), "send wallets.dlq.create-balance")
}

// failOnce makes the first attempt of every key fail transiently.
func failOnce(h handlers.CreateBalanceHandler) handlers.CreateBalanceHandler {
	var mu sync.Mutex
	seen := map[string]bool{}
	return handlerFunc(func(ctx context.Context, key string, c messages.CreateBalance) (handlers.Outcome, error) {
		mu.Lock()
		first := !seen[key]
		seen[key] = true
		mu.Unlock()
		if first {
			return handlers.Outcome{}, &handlers.RetryError{Err: errors.New("ledger unreachable")}
		}
		return h.Handle(ctx, key, c)
	})
}

// TestTraceOfARedelivery: every attempt of a command is in one trace: the
// producer's when the command carries one, otherwise one derived from the
// stored command, so that a retry is not an unrelated trace.
func TestTraceOfARedelivery(t *testing.T) {
	t.Parallel()
	b := setupTraced(t, nil, withHandler(failOnce))
	b.publish(t, tracedCmd("w1", "traced", body("w1", "a")))
	b.publish(t, cmd("w1", "plain", body("w1", "b")))
	evs := b.events.wait(t, 2)

	traced := b.processSpans(t, "traced", 2)
	plain := b.processSpans(t, "plain", 2)
	for name, spans := range map[string][]sdktrace.ReadOnlySpan{"traced": traced, "plain": plain} {
		first, second := spans[0], spans[1]
		require.Equal(t, "1", attr(first, "messaging.nats.message.delivery_count"), name)
		require.Equal(t, "2", attr(second, "messaging.nats.message.delivery_count"), name)
		require.Equal(t, traceRetry, attr(first, "wallets.outcome"), name)
		require.Equal(t, "Error", first.Status().Code.String(), name)
		require.Equal(t, OutcomeCreated, attr(second, "wallets.outcome"), name)
		require.Equal(t, first.SpanContext().TraceID(), second.SpanContext().TraceID(), "%s: both attempts in one trace", name)
		require.NotEqual(t, first.SpanContext().SpanID(), second.SpanContext().SpanID(), name)
	}
	require.Equal(t, producerTraceID, traced[0].SpanContext().TraceID().String())
	require.False(t, plain[0].Parent().IsValid(), "a command without trace context starts a trace")
	require.NotEqual(t, producerTraceID, plain[0].SpanContext().TraceID().String())

	for _, ev := range evs {
		key := ev.Header.Get(messages.HeaderCommandKey)
		want := map[string]trace.SpanContext{"traced": traced[1].SpanContext(), "plain": plain[1].SpanContext()}[key]
		require.Equal(t, want.TraceID(), traceparentOf(t, ev.Header).TraceID(), key)
	}
}

// TestTracePropagatesWithoutSDK: with a no-op provider nothing is recorded,
// but the command's trace context still reaches the ledger and the event.
func TestTracePropagatesWithoutSDK(t *testing.T) {
	t.Parallel()
	b := setupTraced(t, noop.NewTracerProvider())
	b.publish(t, tracedCmd("w1", "k1", body("w1", "savings")))
	b.publish(t, cmd("w2", "k2", body("w2", "savings")))
	evs := b.events.wait(t, 2)
	for _, ev := range evs {
		switch key := ev.Header.Get(messages.HeaderCommandKey); key {
		case "k1":
			require.Equal(t, producerTraceparent, ev.Header.Get("traceparent"))
		default:
			require.Empty(t, ev.Header.Get("traceparent"), "no trace without an SDK: %s", key)
		}
	}
	reqs := b.ledger.about("wallets:w1:savings")
	require.Len(t, reqs, 2)
	for _, r := range reqs {
		require.Equal(t, producerTraceparent, r.traceparent, "%s %s", r.method, r.path)
	}
	require.Empty(t, b.spans.Ended())
}

// TestLogLinesCarryTraceIDs: the log attributes of a delivery name its trace
// and span.
func TestLogLinesCarryTraceIDs(t *testing.T) {
	t.Parallel()
	tp := sdktrace.NewTracerProvider()
	parent := tracing.Extract(context.Background(), nats.Header{"traceparent": {producerTraceparent}})
	_, span := tp.Tracer("test").Start(parent, "x")
	defer span.End()
	w := &Worker{}
	d := &delivery{subject: "wallets.commands.create-balance.w1", span: span}
	attrs := w.logAttrs(d, "k1")
	got := map[any]any{}
	for i := 0; i+1 < len(attrs); i += 2 {
		got[attrs[i]] = attrs[i+1]
	}
	require.Equal(t, producerTraceID, got["trace_id"])
	require.Equal(t, span.SpanContext().SpanID().String(), got["span_id"])
	require.Equal(t, "k1", got["key"])

	// Without a span, no IDs.
	attrs = w.logAttrs(&delivery{subject: "s"}, "k1")
	require.NotContains(t, attrs, "trace_id")
}

// TestTraceOfAnyKind: a command of another kind is traced as create-balance
// is: its consumer span, named after its kind, is the producer span's child,
// with its event's publish and its ack beneath it, and its event carries the
// trace.
func TestTraceOfAnyKind(t *testing.T) {
	t.Parallel()
	b := setupTraced(t, nil, withKinds(pingKind{}))
	m := kindMsg("ping", "w1", "k-ping", `{"walletID":"w1"}`)
	m.Header.Set("traceparent", producerTraceparent)
	b.publish(t, m)
	ev := single(t, b.events.wait(t, 1))
	require.Equal(t, "wallets.events.pinged.w1", ev.Subject)

	var span sdktrace.ReadOnlySpan
	require.Eventually(t, func() bool {
		for _, s := range b.spans.Ended() {
			if s.Name() == "process wallets.commands.ping" && attr(s, "messaging.message.id") == "k-ping" {
				span = s
				return true
			}
		}
		return false
	}, waitFor, tick)
	require.Equal(t, producerSpanID, span.Parent().SpanID().String())
	require.Equal(t, "wallets.commands.ping.w1", attr(span, "messaging.destination.name"))
	kids := b.children(span)
	for _, name := range []string{"send wallets.events.pinged", "ack wallets.commands.ping"} {
		require.Contains(t, kids, name, "child spans of the consumer span")
	}
	require.Equal(t, span.SpanContext().SpanID(), traceparentOf(t, ev.Header).SpanID(), "the event carries the worker's span")
}
