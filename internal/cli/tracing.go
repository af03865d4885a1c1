package cli

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/internal/telemetry"
	"github.com/wallets-worker/wallets-worker/messages"
)

// tracerName is the instrumentation scope of the command line's own spans.
const tracerName = "github.com/wallets-worker/wallets-worker/internal/cli"

// flushTimeout bounds the export of the last spans at exit.
const flushTimeout = 5 * time.Second

// startTracing sets up tracing from the OTEL_* variables (docs/tracing.md)
// and installs it globally when it exports. log, when set, gets the SDK's
// errors.
func startTracing(ctx context.Context, env Env, log *slog.Logger) (*telemetry.Provider, error) {
	tel, err := telemetry.Start(ctx, env.Getenv)
	if err != nil {
		return nil, usageError("tracing: %v", err)
	}
	tel.Install(log)
	return tel, nil
}

// stopTracing exports the spans still buffered.
func stopTracing(tel *telemetry.Provider, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil && log != nil {
		log.Warn("tracing: exporting the last spans failed", "error", err)
	}
}

// startPublishSpan starts the root span of `publish create-balance`: the
// command's producer span, and through it the worker's, are its children.
func startPublishSpan(ctx context.Context, tel *telemetry.Provider, cmd messages.CreateBalance, key string) (context.Context, trace.Span) {
	ctx, span := tel.TracerProvider().Tracer(tracerName).Start(ctx, "publish create-balance")
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingMessageID(key), attribute.String("wallets.wallet_id", cmd.WalletID))
	}
	return ctx, span
}
