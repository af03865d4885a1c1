package producer_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
	"github.com/wallets-worker/wallets-worker/tracing"
)

// storedHeaders reads back the headers of the command stored at seq.
func storedHeaders(t *testing.T, s *stack, seq uint64) nats.Header {
	t.Helper()
	st, err := s.js.Stream(context.Background(), messages.StreamCommands)
	require.NoError(t, err)
	m, err := st.GetMsg(context.Background(), seq)
	require.NoError(t, err)
	return m.Header
}

// TestPublishCarriesTraceContext: the stored command carries the traceparent
// of Publish's producer span, a child of the caller's span.
func TestPublishCarriesTraceContext(t *testing.T) {
	t.Parallel()
	s := setup(t, false)
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	p := producer.New(s.js, producer.WithTracerProvider(tp))

	ctx, caller := tp.Tracer("test").Start(testContext(t), "caller")
	ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "savings"}, "trace-k1")
	require.NoError(t, err)
	caller.End()

	spans := sr.Ended()
	require.Len(t, spans, 2)
	send := spans[0]
	require.Equal(t, "send wallets.commands.create-balance", send.Name())
	require.Equal(t, trace.SpanKindProducer, send.SpanKind())
	require.Equal(t, caller.SpanContext().SpanID(), send.Parent().SpanID(), "the producer span is the caller's child")

	got := trace.SpanContextFromContext(tracing.Extract(context.Background(), storedHeaders(t, s, ack.Seq)))
	require.True(t, got.IsValid(), "no traceparent on the stored command")
	require.Equal(t, caller.SpanContext().TraceID(), got.TraceID())
	require.Equal(t, send.SpanContext().SpanID(), got.SpanID(), "the command carries the producer span")
	attrs := map[string]string{}
	for _, kv := range send.Attributes() {
		attrs[string(kv.Key)] = kv.Value.Emit()
	}
	require.Equal(t, "nats", attrs["messaging.system"])
	require.Equal(t, "wallets.commands.create-balance.w1", attrs["messaging.destination.name"])
	require.Equal(t, "trace-k1", attrs["messaging.message.id"])
}

// TestPublishPassesTraceContextOnWithoutSDK: with no provider installed (the
// global no-op), the caller's span context itself goes out.
func TestPublishPassesTraceContextOnWithoutSDK(t *testing.T) {
	t.Parallel()
	s := setup(t, false)
	p := producer.New(s.js)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := tracing.Extract(testContext(t), nats.Header{"traceparent": {tp}})
	ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "savings"}, "trace-k2")
	require.NoError(t, err)
	require.Equal(t, tp, storedHeaders(t, s, ack.Seq).Get("traceparent"))

	// And a caller without trace context sends none.
	ack, err = p.Publish(testContext(t), messages.CreateBalance{WalletID: "w1", Name: "other"}, "trace-k3")
	require.NoError(t, err)
	require.Empty(t, storedHeaders(t, s, ack.Seq).Get("traceparent"))
}
