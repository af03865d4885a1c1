// Package telemetry sets up the OpenTelemetry SDK of the command line from
// the standard OTEL_* environment variables (Start), with the W3C trace
// context of package tracing as its propagator.
//
// Without any OTEL_* variable nothing is set up and nothing is exported; the
// packages that trace then use the global tracer provider, a no-op one whose
// spans record nothing but carry their parent's span context on. A command
// that arrives with a traceparent therefore still passes it on, to its ledger
// requests and to its outcome event, at almost no cost.
//
// Only the command line (internal/cli) imports it; producer, worker and
// ledgeradapter share package tracing, beneath them.
package telemetry
