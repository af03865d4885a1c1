package producer

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/tracing"
)

const tracerName = "github.com/wallets-worker/wallets-worker/producer"

// WithTracerProvider sets the provider of Publish's spans (default: the
// global one, a no-op unless the program installed an SDK).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(p *Producer) { p.tracer = tp.Tracer(tracerName) }
}

// startSend starts the producer span of a publish and writes its W3C trace
// context into msg's headers: the span is a child of ctx's span, and the
// worker's span will be a child of it. With a no-op provider nothing is
// recorded and ctx's own span context (if any) is what goes out.
func (p *Producer) startSend(ctx context.Context, msg *nats.Msg, key string) (context.Context, trace.Span) {
	tracer := p.tracer
	if tracer == nil {
		tracer = otel.GetTracerProvider().Tracer(tracerName)
	}
	ctx, span := tracer.Start(ctx, "send "+tracing.SubjectTemplate(msg.Subject), trace.WithSpanKind(trace.SpanKindProducer))
	if span.IsRecording() {
		span.SetAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"),
			semconv.MessagingDestinationName(msg.Subject),
			semconv.MessagingMessageID(key),
			semconv.MessagingMessageBodySize(len(msg.Data)),
		)
	}
	tracing.Inject(ctx, msg.Header)
	return ctx, span
}

// endSend ends the span of a publish with what JetStream said.
func endSend(span trace.Span, ack Ack, err error) {
	if span.IsRecording() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "publish failed")
		} else {
			span.SetAttributes(
				attribute.Int64("messaging.nats.message.stream_sequence", int64(ack.Seq)),
				attribute.Bool("messaging.nats.message.duplicate", ack.Duplicate),
			)
		}
	}
	span.End()
}
