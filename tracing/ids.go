package tracing

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

type seedKey struct{}

// Seeder gives the seed of a trace ID.
type Seeder interface {
	// TraceSeed returns bytes that identify the thing traced: equal seeds,
	// equal trace IDs.
	TraceSeed() []byte
}

// WithTraceSeed makes the root span started under ctx (one without a parent)
// take a trace ID derived from s.TraceSeed() instead of a random one, when
// the tracer provider is Start's (or uses IDGenerator). Every delivery of one
// stored command gives the same seed, so that the attempts of a command that
// came without trace context share one trace as those of a traced command
// do. The seed is asked for only when such a span starts.
func WithTraceSeed(ctx context.Context, s Seeder) context.Context {
	return context.WithValue(ctx, seedKey{}, s)
}

// Seed is a fixed Seeder.
type Seed []byte

// TraceSeed implements Seeder.
func (s Seed) TraceSeed() []byte { return s }

// IDGenerator returns the span and trace ID generator of Start's provider:
// random IDs, except the trace ID of a root span under WithTraceSeed. Tests
// that build their own provider pass it to sdktrace.WithIDGenerator.
func IDGenerator() sdktrace.IDGenerator { return ids{} }

type ids struct{}

var _ sdktrace.IDGenerator = ids{}

func (ids) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	var tid trace.TraceID
	if s, ok := ctx.Value(seedKey{}).(Seeder); ok {
		sum := sha256.Sum256(s.TraceSeed())
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
