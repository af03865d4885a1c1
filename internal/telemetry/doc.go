// Package telemetry is the tracing of wallets-worker: the OpenTelemetry SDK
// set up from the standard OTEL_* environment variables (Start), and the W3C
// trace context carried in NATS headers (Inject, Extract), as SPEC §5 fixes
// it: `traceparent` and `tracestate`.
//
// Without any OTEL_* variable nothing is set up and nothing is exported; the
// packages that trace then use the global tracer provider, a no-op one whose
// spans record nothing but carry their parent's span context on. A command
// that arrives with a traceparent therefore still passes it on, to its ledger
// requests and to its outcome event, at almost no cost.
//
// producer, worker and ledgeradapter import it; cmd wires Start and Shutdown.
package telemetry
