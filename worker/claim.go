package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Claims makes the first command that reaches a fresh balance its only writer,
// across every worker: the ledger has no conditional write, JetStream KV has
// one. A claim is a key per balance (ledger and account) created only if
// absent, holding the claiming command's key hash, with a per-key TTL so that
// a claimant that died blocks nobody for long. Per-key TTLs need nats-server
// 2.11 or later.
//
// Claims covers the commands of this worker pool only: a balance created at
// the same moment through the wallets HTTP API does not claim, and the race
// with it stays as the wallets service has it.
type Claims struct {
	kv     jetstream.KeyValue
	ttl    time.Duration
	tracer trace.Tracer
}

var _ handlers.Claimer = (*Claims)(nil)

// KeyValueConfig is the claims bucket as c provisions it.
func (c Config) KeyValueConfig() jetstream.KeyValueConfig {
	c.setDefaults()
	return jetstream.KeyValueConfig{
		Bucket:         messages.BucketClaims,
		Description:    "First-writer-wins claims of balances by wallets-worker commands",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       c.StreamReplicas,
		LimitMarkerTTL: c.ClaimTTL,
	}
}

// NewClaims binds the claims bucket, which Provision creates.
func NewClaims(ctx context.Context, js jetstream.JetStream, c Config) (*Claims, error) {
	c.setDefaults()
	kv, err := js.KeyValue(ctx, messages.BucketClaims)
	if err != nil {
		return nil, fmt.Errorf("bind claims bucket %s: %w", messages.BucketClaims, err)
	}
	return &Claims{kv: kv, ttl: c.ClaimTTL, tracer: tracerFrom(c.TracerProvider)}, nil
}

// Claim implements handlers.Claimer.
func (c *Claims) Claim(ctx context.Context, ledger, account, key string) (err error) {
	k := claimKey(ledger, account)
	if trace.SpanFromContext(ctx).IsRecording() {
		var span trace.Span
		ctx, span = c.tracer.Start(ctx, spanClaim, trace.WithSpanKind(trace.SpanKindClient))
		defer func() { endClaim(span, k, err) }()
	}
	sum := sha256.Sum256([]byte(key))
	mine := hex.EncodeToString(sum[:])
	for range 3 { // a claim that expires between Create and Get is tried again
		_, err := c.kv.Create(ctx, k, []byte(mine), jetstream.KeyTTL(c.ttl))
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("claim %s: %w", k, err)
		}
		e, err := c.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read claim %s: %w", k, err)
		}
		if string(e.Value()) == mine {
			return nil // a redelivery of the claimant
		}
		return fmt.Errorf("%w (%s)", handlers.ErrClaimed, k)
	}
	return fmt.Errorf("claim %s: it kept expiring while being read", k)
}

// claimKey maps a ledger and an account to a KV key: the ledger name (a valid
// key token, at most 63 bytes) and the account's SHA-256, so that the key, and
// the subject it becomes, stay short whatever the account prefix.
func claimKey(ledger, account string) string {
	sum := sha256.Sum256([]byte(account))
	return ledger + "." + hex.EncodeToString(sum[:])
}

// endClaim ends the span of a claim with its result; another command's live
// claim is a result, not an error.
func endClaim(span trace.Span, k string, err error) {
	if span.IsRecording() {
		result := "held"
		switch {
		case errors.Is(err, handlers.ErrClaimed):
			result = "claimed_by_other"
		case err != nil:
			result = "error"
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.SetAttributes(attrClaimKey.String(messages.BucketClaims+"/"+k), attrClaimResult.String(result))
	}
	span.End()
}
