package ledgeradapter_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// tracedLedger is the embedded ledger behind a tap that records each
// request's traceparent and can hold the first request until released.
type tracedLedger struct {
	client  *ledgeradapter.Client
	spans   *tracetest.SpanRecorder
	tracer  trace.Tracer
	hold    chan struct{} // closed: the first request goes on
	mu      sync.Mutex
	parents []string // traceparent of each request, in arrival order
}

func newTracedLedger(t *testing.T, holdFirst bool) *tracedLedger {
	t.Helper()
	tl := &tracedLedger{spans: tracetest.NewSpanRecorder(), hold: make(chan struct{})}
	if !holdFirst {
		close(tl.hold)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tl.spans))
	tl.tracer = tp.Tracer("test")
	tl.client = testutil.StartLedger(t, testutil.LedgerOptions{
		InMemory: true,
		Client:   ledgeradapter.Config{Timeout: ledgeradapter.DefaultTimeout, TracerProvider: tp},
		Wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tl.mu.Lock()
				first := len(tl.parents) == 0
				tl.parents = append(tl.parents, r.Header.Get("traceparent"))
				tl.mu.Unlock()
				if first {
					<-tl.hold
				}
				h.ServeHTTP(w, r)
			})
		},
	}).Client
	return tl
}

func (tl *tracedLedger) traceparents() []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]string(nil), tl.parents...)
}

// command starts the span of one command's work.
func (tl *tracedLedger) command(name string) (context.Context, trace.Span) {
	return tl.tracer.Start(context.Background(), name)
}

func (tl *tracedLedger) ended(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tl.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func traceparent(sc trace.SpanContext) string {
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}

// TestClientRequestsAreClientSpans: each request is a client span, child of
// the caller's, whose traceparent the ledger receives.
func TestClientRequestsAreClientSpans(t *testing.T) {
	t.Parallel()
	tl := newTracedLedger(t, false)
	ctx, cmd := tl.command("cmd")
	_, _, err := tl.client.GetAccount(ctx, "wallets-002", "wallets:w1:x")
	require.Error(t, err, "the ledger does not exist yet")
	require.NoError(t, tl.client.EnsureLedger(context.Background(), "wallets-002"))
	cmd.End()

	spans := tl.ended("ledger GetAccount")
	require.Len(t, spans, 1)
	s := spans[0]
	require.Equal(t, trace.SpanKindClient, s.SpanKind())
	require.Equal(t, cmd.SpanContext().SpanID(), s.Parent().SpanID())
	require.Equal(t, traceparent(s.SpanContext()), tl.traceparents()[0])
	require.Empty(t, tl.ended("ledger EnsureLedger"), "a request outside any trace makes no span")
	require.Len(t, tl.traceparents(), 3, "a GET of the account, then the ledger's GET and POST")
	require.Equal(t, []string{"", ""}, tl.traceparents()[1:], "and sends no traceparent")
}

// TestBatchCarriesTheFirstTraceAndLinksTheOthers: a lone call's request is
// in its command's trace; a request coalescing two commands' calls is sent in
// the first one's trace, under a batch span linking the other.
func TestBatchCarriesTheFirstTraceAndLinksTheOthers(t *testing.T) {
	t.Parallel()
	tl := newTracedLedger(t, true)
	b, err := ledgeradapter.NewBatcher(tl.client, ledgeradapter.BatcherConfig{Window: time.Minute})
	require.NoError(t, err)

	read := func(name, address string) (trace.Span, <-chan error) {
		ctx, span := tl.command(name)
		done := make(chan error, 1)
		go func() {
			_, _, err := b.GetAccount(ctx, "wallets-002", address)
			span.End()
			done <- err
		}()
		return span, done
	}
	// A is sent at once and held at the ledger; B and C queue behind it and
	// leave together, as one ListAccounts, when it returns.
	a, aDone := read("A", "wallets:a:x")
	require.Eventually(t, func() bool { return len(tl.traceparents()) == 1 }, 10*time.Second, time.Millisecond)
	bSpan, bDone := read("B", "wallets:b:x")
	require.Eventually(t, func() bool { return b.Stats().Reads == 2 }, 10*time.Second, time.Millisecond)
	cSpan, cDone := read("C", "wallets:c:x")
	require.Eventually(t, func() bool { return b.Stats().Reads == 3 }, 10*time.Second, time.Millisecond)
	close(tl.hold)
	for _, ch := range []<-chan error{aDone, bDone, cDone} {
		require.Error(t, <-ch, "the ledger does not exist: each call gets the answer")
	}
	require.Equal(t, int64(2), b.Stats().ReadRequests, "one lone request, one batch")

	parents := tl.traceparents()
	require.Len(t, parents, 2)
	single := tl.ended("ledger GetAccount")
	require.Len(t, single, 1)
	require.Equal(t, a.SpanContext().SpanID(), single[0].Parent().SpanID(), "the lone request is in A's trace")
	require.Equal(t, traceparent(single[0].SpanContext()), parents[0])
	require.Empty(t, tl.ended("ledger batch write"))

	// The batch span ends once its request has handed every call its
	// answer: the callers may have returned just before.
	require.Eventually(t, func() bool { return len(tl.ended("ledger batch read")) == 1 }, 10*time.Second, time.Millisecond)
	batches := tl.ended("ledger batch read")
	batch := batches[0]
	// Whichever of B and C was queued first leads; the other is linked.
	lead, other := bSpan.SpanContext(), cSpan.SpanContext()
	if batch.Parent().SpanID() == other.SpanID() {
		lead, other = other, lead
	}
	require.Equal(t, lead.SpanID(), batch.Parent().SpanID(), "the batch span is a child of a caller's span")
	require.Len(t, batch.Links(), 1)
	require.Equal(t, other.TraceID(), batch.Links()[0].SpanContext.TraceID(), "the other caller is linked")
	require.Equal(t, other.SpanID(), batch.Links()[0].SpanContext.SpanID())

	list := tl.ended("ledger ListAccounts")
	require.Len(t, list, 1)
	require.Equal(t, batch.SpanContext().SpanID(), list[0].Parent().SpanID())
	require.Equal(t, traceparent(list[0].SpanContext()), parents[1])
	require.Equal(t, lead.TraceID(), list[0].SpanContext().TraceID())
}
