// Package tracing is the W3C trace context that travels with commands,
// events, dead letters and ledger requests, as SPEC §5 fixes it:
// `traceparent` and `tracestate` in NATS headers (Inject, Extract), and trace
// IDs seeded by a command's key and sequence so that a redelivery's root span
// joins its first delivery's trace (WithTraceSeed, IDGenerator).
//
// It sits beneath the packages that trace: producer, worker and ledgeradapter
// share it, and so does the SDK set-up of the command line
// (internal/telemetry), which installs Propagator and IDGenerator.
package tracing
