package ledgeradapter

import (
	"context"
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/wallets-worker/wallets-worker/tracing"
)

// tracerName is the instrumentation scope of the Batcher's spans.
const tracerName = "github.com/wallets-worker/wallets-worker/ledgeradapter"

// Attributes of a batch span.
const (
	attrBatchCalls = attribute.Key("wallets.ledger.batch.calls")
	attrBatchKind  = attribute.Key("wallets.ledger.batch.kind")
)

// tracedTransport makes every request made within a trace a client span
// named after its operation ("ledger GetAccount", …) and sends the W3C
// traceparent of the request's context, recorded or not. A request outside
// any trace (start-up, the /readyz probe, any request with tracing off and a
// command without trace context) goes out untouched: no span, no header, no
// cost, and no trace of its own for every health probe.
func tracedTransport(rt http.RoundTripper, tp trace.TracerProvider) http.RoundTripper {
	opts := []otelhttp.Option{
		otelhttp.WithFilter(func(r *http.Request) bool {
			return trace.SpanContextFromContext(r.Context()).IsValid()
		}),
		otelhttp.WithPropagators(tracing.Propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if op, ok := r.Context().Value(opKey{}).(string); ok {
				return "ledger " + op
			}
			return "ledger " + r.Method
		}),
	}
	if tp != nil {
		opts = append(opts, otelhttp.WithTracerProvider(tp))
	}
	return otelhttp.NewTransport(rt, opts...)
}

type opKey struct{}

// withOp names the operation of the request made under ctx.
func withOp(ctx context.Context, op string) context.Context {
	return context.WithValue(ctx, opKey{}, op)
}

// traceBatch starts the span of a request that carries the calls of several
// commands. It is a child of the context the request is sent on, the first
// call's (so a lone call's request stays in its own command's trace and gets
// no extra span), and links every other call's span context, so that each
// command's trace leads to the shared request.
func traceBatch(ctx context.Context, read bool, calls []*call) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if len(calls) < 2 {
		return ctx, noop.Span{} // the caller's span is its own to end
	}
	first := parent.SpanContext()
	links := make([]trace.Link, 0, len(calls))
	for _, c := range calls {
		if sc := trace.SpanContextFromContext(c.ctx); sc.IsValid() && !sc.Equal(first) {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	kind, name := "write", "ledger batch write"
	if read {
		kind, name = "read", "ledger batch read"
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, name,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithLinks(links...),
		trace.WithAttributes(attrBatchCalls.Int(len(calls)), attrBatchKind.String(kind)))
}
