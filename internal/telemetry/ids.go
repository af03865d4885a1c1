package telemetry

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

type seedKey struct{}

// WithTraceSeed makes the root span started under ctx (one without a parent)
// take a trace ID derived from seed instead of a random one, when the tracer
// provider is Start's (or uses IDGenerator). Every delivery of one stored
// command passes the same seed, so that the attempts of a command that came
// without trace context share one trace as those of a traced command do.
func WithTraceSeed(ctx context.Context, seed []byte) context.Context {
	return context.WithValue(ctx, seedKey{}, seed)
}

// IDGenerator returns the span and trace ID generator of Start's provider:
// random IDs, except the trace ID of a root span under WithTraceSeed. Tests
// that build their own provider pass it to sdktrace.WithIDGenerator.
func IDGenerator() sdktrace.IDGenerator { return ids{} }

type ids struct{}

var _ sdktrace.IDGenerator = ids{}

func (ids) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	var tid trace.TraceID
	if seed, ok := ctx.Value(seedKey{}).([]byte); ok {
		sum := sha256.Sum256(seed)
		copy(tid[:], sum[:])
	}
	for !tid.IsValid() {
		binary.BigEndian.PutUint64(tid[:8], rand.Uint64())
		binary.BigEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid, newSpanID()
}

func (ids) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return newSpanID() }

func newSpanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.BigEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}
