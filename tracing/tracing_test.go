package tracing

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

const (
	testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	testTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
)

func TestExtractInjectRoundTrip(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"traceparent", "Traceparent", "TRACEPARENT"} {
		h := nats.Header{}
		h[name] = []string{testTraceparent}
		h.Set("tracestate", "vendor=x")
		ctx := Extract(context.Background(), h)
		sc := trace.SpanContextFromContext(ctx)
		require.True(t, sc.IsRemote(), name)
		require.Equal(t, testTraceID, sc.TraceID().String(), name)
		require.Equal(t, "vendor=x", sc.TraceState().String(), name)

		out := nats.Header{}
		Inject(ctx, out)
		require.Equal(t, testTraceparent, out.Get("traceparent"), name)
		require.Equal(t, "vendor=x", out.Get("tracestate"), name)
	}
}

func TestInjectWithoutSpanWritesNothing(t *testing.T) {
	t.Parallel()
	h := nats.Header{}
	Inject(context.Background(), h)
	require.Empty(t, h)
	require.False(t, trace.SpanContextFromContext(Extract(context.Background(), nats.Header{"Nats-Msg-Id": {"k"}})).IsValid())
}

func TestSeededRootSharesTraceID(t *testing.T) {
	t.Parallel()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithIDGenerator(IDGenerator()))
	tr := tp.Tracer("test")
	start := func(ctx context.Context) trace.SpanContext {
		_, s := tr.Start(ctx, "x")
		s.End()
		return s.SpanContext()
	}
	a := start(WithTraceSeed(context.Background(), Seed("key\x007")))
	b := start(WithTraceSeed(context.Background(), Seed("key\x007")))
	c := start(WithTraceSeed(context.Background(), Seed("key\x008")))
	d := start(context.Background())
	require.Equal(t, a.TraceID(), b.TraceID(), "one seed, one trace")
	require.NotEqual(t, a.SpanID(), b.SpanID())
	require.NotEqual(t, a.TraceID(), c.TraceID())
	require.NotEqual(t, a.TraceID(), d.TraceID())

	// A seed does not override a parent.
	parent := Extract(context.Background(), nats.Header{"traceparent": {testTraceparent}})
	require.Equal(t, testTraceID, start(WithTraceSeed(parent, Seed("key\x007"))).TraceID().String())
}
