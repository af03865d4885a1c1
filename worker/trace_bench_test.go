package worker

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/tracing"
)

// discardExporter drops every span: what recording and batching cost,
// without a network.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkTraceOverhead measures what tracing adds to one delivery that
// is created: the consumer span (extract, start, end), the outcome recorded
// on it, the event's traceparent, and the spans of the event publish and the
// ack, without the work they wrap. "off" is the default (no SDK: the global
// no-op provider); "sdk" records every span and batches it to an exporter
// that drops it.
func BenchmarkTraceOverhead(b *testing.B) {
	ns, err := embeddednats.Start(embeddednats.Options{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if err := Provision(ctx, js, Config{}); err != nil {
		b.Fatal(err)
	}
	consumer, err := js.Consumer(ctx, messages.StreamCommands, messages.ConsumerName)
	if err != nil {
		b.Fatal(err)
	}
	fetch := func(traced bool) jetstream.Msg {
		m := cmd("w1", "bench", body("w1", "savings"))
		if traced {
			m.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			m.Header.Set(messages.HeaderMsgID, "bench-traced")
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			b.Fatal(err)
		}
		batch, err := consumer.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			b.Fatal(err)
		}
		return <-batch.Messages()
	}
	msgs := map[bool]jetstream.Msg{false: fetch(false), true: fetch(true)}
	o := handlers.Outcome{Created: &messages.BalanceCreated{Key: "bench", WalletID: "w1",
		Balance: messages.Balance{Name: "savings"}, Ledger: "wallets-002", Account: "wallets:w1:savings"}}
	ev := &nats.Msg{Subject: messages.BalanceCreatedSubject("w1")}

	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}), sdktrace.WithIDGenerator(tracing.IDGenerator()))
	defer func() { _ = sdk.Shutdown(ctx) }()
	for _, tc := range []struct {
		name   string
		tp     trace.TracerProvider // nil: the global no-op
		traced bool
	}{
		{"off/untraced", nil, false},
		{"off/traced", nil, true},
		{"sdk/untraced", sdk, false},
		{"sdk/traced", sdk, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			w := &Worker{tracer: tracerFrom(tc.tp), kinds: handlers.NewKinds(handlers.CreateBalanceKind(handlerFunc(nil))), spans: map[string]spanNames{messages.KindCreateBalance: newSpanNames(messages.KindCreateBalance)}}
			m := msgs[tc.traced]
			b.ReportAllocs()
			for b.Loop() {
				d := &delivery{msg: m, subject: m.Subject(), seq: 1, delivered: 1}
				sctx := d.withSpan(w.startSpan(ctx, d))
				d.traceSettled(o)
				ev.Header = nats.Header{}
				tracing.Inject(sctx, ev.Header)
				_, span := w.startPublish(sctx, ev)
				endClient(span, nil)
				_, span = w.startAck(sctx, d)
				endClient(span, nil)
				d.span.End()
			}
		})
	}
}
