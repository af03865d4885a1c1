package worker

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/tracing"
)

// tracerName is the instrumentation scope of the worker's spans.
const tracerName = "github.com/wallets-worker/wallets-worker/worker"

// Span names (docs/tracing.md): "process " and "ack " followed by the
// command's subject without its wallet token (wallets.commands.<kind>), so
// that names stay few; the full subject is an attribute.
const (
	spanClaim = "claim balance"
)

// spanNames are the names of a kind's process and ack spans, made once per
// kind.
type spanNames struct{ process, ack string }

func newSpanNames(kind string) spanNames {
	subject := messages.SubjectCommandsPrefix + kind
	return spanNames{process: "process " + subject, ack: "ack " + subject}
}

// spanNamesOf are the span names of a delivery's kind; those of a kind the
// worker does not have are made on the spot.
func (w *Worker) spanNamesOf(subject string) spanNames {
	_, token, ok := w.kinds.Of(subject)
	if ok {
		return w.spans[token]
	}
	return newSpanNames(token)
}

// Attributes beyond the messaging semantic conventions, which name none for
// NATS: the delivery count, as messaging.servicebus.message.delivery_count
// does for Service Bus, and the outcome of the command.
const (
	attrDeliveryCount = attribute.Key("messaging.nats.message.delivery_count")
	attrStreamSeq     = attribute.Key("messaging.nats.message.stream_sequence")
	attrOutcome       = attribute.Key("wallets.outcome")
	attrClaimKey      = attribute.Key("wallets.claim.key")
	attrClaimResult   = attribute.Key("wallets.claim.result")
)

// Values of wallets.outcome besides the outcome labels of the metrics.
const (
	traceRetry      = "retry"
	traceDeferred   = "deferred"
	traceHandedBack = "handed_back"
)

func tracerFrom(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(tracerName)
}

// startSpan starts the consumer span of a delivery, child of the trace
// context the command carries. A command without one starts a new trace whose
// ID derives from the stored command (key, stream sequence, store time), so
// that its redeliveries share it; a traced command's redeliveries share the
// producer's. With a no-op provider the span records nothing and carries the
// command's span context on, so that its traceparent still reaches the ledger
// and the outcome event.
func (w *Worker) startSpan(ctx context.Context, d *delivery) context.Context {
	ctx = tracing.Extract(ctx, d.msg.Headers())
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = tracing.WithTraceSeed(ctx, d)
	}
	ctx, span := w.tracer.Start(ctx, w.spanNamesOf(d.subject).process, trace.WithSpanKind(trace.SpanKindConsumer))
	d.span = span
	if span.IsRecording() {
		span.SetAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(d.subject),
			semconv.MessagingConsumerGroupName(messages.ConsumerName),
			semconv.MessagingMessageID(firstHeader(d, messages.HeaderMsgID)),
			semconv.MessagingMessageBodySize(len(d.msg.Data())),
			attrDeliveryCount.Int64(int64(d.delivered)),
			attrStreamSeq.Int64(int64(d.seq)),
		)
	}
	return ctx
}

// TraceSeed implements tracing.Seeder: what identifies the stored command
// across its deliveries.
func (d *delivery) TraceSeed() []byte {
	return fmt.Appendf(nil, "%s\x00%d\x00%d", firstHeader(d, messages.HeaderMsgID), d.seq, d.published.UnixNano())
}

// withSpan returns ctx with d's consumer span, when it has one.
func (d *delivery) withSpan(ctx context.Context) context.Context {
	if d.span == nil {
		return ctx
	}
	return trace.ContextWithSpan(ctx, d.span)
}

// traceOutcome records the outcome of a delivery on its span; a dead letter
// and a failure (err) mark the span as an error.
func (d *delivery) traceOutcome(outcome string, deadLetter messages.Code, err error) {
	if d.span == nil || !d.span.IsRecording() {
		return
	}
	d.span.SetAttributes(attrOutcome.String(outcome))
	switch {
	case err != nil:
		d.span.RecordError(err)
		d.span.SetStatus(codes.Error, err.Error())
	case deadLetter != "":
		d.span.SetStatus(codes.Error, "dead-lettered: "+string(deadLetter))
	}
}

// traceSettled records a decided outcome.
func (d *delivery) traceSettled(o handlers.Result) {
	if d.span == nil || !d.span.IsRecording() {
		return
	}
	var dl messages.Code
	if c := o.Code(); c.DeadLetters() {
		dl = c
	}
	d.traceOutcome(o.Label(), dl, nil)
}

// traceNak records a delivery handed back for another attempt.
func (d *delivery) traceNak(reason string) {
	switch reason {
	case retryDeferred:
		d.traceOutcome(traceDeferred, "", nil)
	case retryShutdown:
		d.traceOutcome(traceHandedBack, "", nil)
	default:
		d.traceOutcome(traceRetry, "", nil)
	}
}

// traceLog appends the trace and span IDs of d's span to log attributes.
func (d *delivery) traceLog(attrs []any) []any {
	if d.span == nil {
		return attrs
	}
	if sc := d.span.SpanContext(); sc.IsValid() {
		attrs = append(attrs, "trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String())
	}
	return attrs
}

// startClient starts a client span of a JetStream round trip made while
// settling (a publish, the ack). Under a span that records nothing (no SDK,
// or not sampled) it makes none: its context goes nowhere.
func (w *Worker) startClient(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, noop.Span{}
	}
	ctx, span := w.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient))
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingSystemKey.String("nats"))
		span.SetAttributes(attrs...)
	}
	return ctx, span
}

// startAck starts the span of the DoubleAck.
func (w *Worker) startAck(ctx context.Context, d *delivery) (context.Context, trace.Span) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, noop.Span{}
	}
	return w.startClient(ctx, w.spanNamesOf(d.subject).ack, semconv.MessagingOperationTypeSettle, semconv.MessagingOperationName("ack"))
}

// startPublish starts the span of an event or dead-letter publish. The
// message carries the consumer span's context, not this one's: the event
// was created by the processing of the command.
func (w *Worker) startPublish(ctx context.Context, m *nats.Msg) (context.Context, trace.Span) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, noop.Span{}
	}
	return w.startClient(ctx, "send "+tracing.SubjectTemplate(m.Subject),
		semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("send"),
		semconv.MessagingDestinationName(m.Subject))
}

// endClient ends a client span, marking it failed on err.
func endClient(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
