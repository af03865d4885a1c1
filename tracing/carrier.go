package tracing

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
)

// Propagator is the W3C Trace Context propagator: the `traceparent` and
// `tracestate` headers of SPEC §5. The packages of this module use it rather
// than the global propagator, so that the wire format does not depend on what
// a program installed.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// HeaderCarrier adapts nats.Header to a propagation.TextMapCarrier. Get finds
// a header whatever its case (NATS header names are case-sensitive, W3C ones
// are not); Set replaces every value of the exact name.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key.
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

// Set sets key to value.
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the span context of ctx into h as `traceparent` (and
// `tracestate` when it has one). A context without a valid span context
// writes nothing. h must not be nil.
func Inject(ctx context.Context, h nats.Header) {
	Propagator.Inject(ctx, HeaderCarrier(h))
}

// Extract returns ctx with the remote span context that h carries, if any: a
// span started from it is a child of the producer's span.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if len(h) == 0 {
		return ctx
	}
	return Propagator.Extract(ctx, HeaderCarrier(h))
}

// SubjectTemplate drops the last token (the wallet) of a subject, for span
// names: names stay few, and the full subject is an attribute.
func SubjectTemplate(subject string) string {
	if i := strings.LastIndexByte(subject, '.'); i > 0 {
		return subject[:i]
	}
	return subject
}
