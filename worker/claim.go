package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
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
// Each attempt of the claimant starts the claim's TTL again (a redelivery
// finds its own claim and renews it), so that the claim outlives every
// attempt, not only the first, by ClaimTTL less HandlerTimeout: a write the
// ledger applies after its attempt was given up on then still meets the
// claim, not another command's write (Config.ClaimReadMaxAge).
//
// Claims covers the commands of this worker pool only: a balance created at
// the same moment through the wallets HTTP API does not claim, and the race
// with it stays as the wallets service has it.
type Claims struct {
	js     jetstream.JetStream
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
	return &Claims{js: js, kv: kv, ttl: c.ClaimTTL, tracer: tracerFrom(c.TracerProvider)}, nil
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
	raced := false
	for range 3 { // a claim that expires or changes between two steps is tried again
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
		if string(e.Value()) != mine {
			return fmt.Errorf("%w (%s)", handlers.ErrClaimed, k)
		}
		if raced {
			// Still ours, at a newer revision than our renewal expected:
			// another delivery of this command renewed it meanwhile.
			return nil
		}
		// A redelivery of the claimant: its TTL starts again.
		err = c.renew(ctx, k, mine, e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			raced = true // renewed by another delivery, or expired or claimed since the read
			continue
		}
		return err
	}
	return fmt.Errorf("claim %s: it kept expiring or changing while being read", k)
}

// renew writes the claim k again with a fresh TTL, if its revision is still
// rev. (KeyValue.Update cannot set a TTL, so the claim's subject is
// published to as Update would, with the TTL added.)
func (c *Claims) renew(ctx context.Context, k, mine string, rev uint64) error {
	m := &nats.Msg{Subject: "$KV." + messages.BucketClaims + "." + k, Data: []byte(mine)}
	_, err := c.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(c.ttl))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return fmt.Errorf("renew claim %s: %w: %w", k, err, jetstream.ErrKeyRevisionMismatch)
	}
	if err != nil {
		return fmt.Errorf("renew claim %s: %w", k, err)
	}
	return nil
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
