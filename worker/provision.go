package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/messages"
)

// serverMaxDeliverMargin is how many deliveries past Config.MaxDeliver the
// consumer still makes. The worker dead-letters a command itself on delivery
// MaxDeliver; the margin lets a command whose last attempt died with its worker
// still reach a worker that can settle it, while a command that kills every
// worker that touches it stops after a bounded number of crashes (JetStream
// then emits its MAX_DELIVERIES advisory).
const serverMaxDeliverMargin = 5

// dlqDuplicateWindow is the deduplication window of the dead-letter stream.
const dlqDuplicateWindow = time.Second

// StreamConfigs returns the three streams of SPEC §3 as c provisions them.
func (c Config) StreamConfigs() []jetstream.StreamConfig {
	c.setDefaults()
	return []jetstream.StreamConfig{
		{
			Name:        messages.StreamCommands,
			Description: "Commands awaiting a wallets-worker",
			Subjects:    []string{messages.SubjectCommands},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.StreamReplicas,
			Duplicates:  c.DuplicateWindow,
			MaxMsgSize:  messages.MaxBodyBytes + 4096, // headers ride along
			// Should limits ever be set, refuse new commands rather
			// than drop stored ones.
			Discard: jetstream.DiscardNew,
			// The order check reads each wallet's first command: with
			// one replica a direct get answers it more cheaply than the
			// JetStream API; with more, only the leader may (see
			// directReadable).
			AllowDirect: c.StreamReplicas <= 1,
		},
		{
			Name:        messages.StreamEvents,
			Description: "Outcome events of wallets-worker commands",
			Subjects:    []string{messages.SubjectEvents},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.StreamReplicas,
			// An event must stay deduplicated until a redelivery of its
			// command (after an ack lost with a crash) can come: at least
			// ten ack waits, whatever the commands' window.
			Duplicates: max(c.DuplicateWindow, 10*c.AckWait),
			MaxAge:     c.EventsMaxAge,
		},
		{
			Name:        messages.StreamDLQ,
			Description: "Dead-lettered wallets-worker commands",
			Subjects:    []string{messages.SubjectDLQ},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.StreamReplicas,
			// A dead letter keeps the command's headers, Nats-Msg-Id (its
			// key) included: with the usual window a later dead letter of
			// the same key (after a republish) would be dropped as a
			// duplicate. A short window keeps every dead letter; the price
			// is a rare second copy of one (same Wallets-Original-Seq)
			// when the event publish after it failed.
			Duplicates: dlqDuplicateWindow,
			MaxAge:     c.DLQMaxAge,
		},
	}
}

// ConsumerConfig returns the durable pull consumer of SPEC §3.
func (c Config) ConsumerConfig() jetstream.ConsumerConfig {
	c.setDefaults()
	return jetstream.ConsumerConfig{
		Durable:       messages.ConsumerName,
		Description:   "Shared by every wallets-worker process",
		FilterSubject: messages.SubjectConsumerFilter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver + serverMaxDeliverMargin,
		MaxAckPending: c.consumerMaxAckPending(),
		Replicas:      c.StreamReplicas,
	}
}

// Provision creates the streams, the consumer and the claims bucket, or updates them when their
// settings changed. It is idempotent and safe to run from many workers at once.
func Provision(ctx context.Context, js jetstream.JetStream, c Config) error {
	for _, sc := range c.StreamConfigs() {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, messages.StreamCommands, c.ConsumerConfig()); err != nil {
		return fmt.Errorf("provision consumer %s: %w", messages.ConsumerName, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, c.KeyValueConfig()); err != nil {
		return fmt.Errorf("provision claims bucket %s (per-key TTLs need nats-server 2.11 or later): %w", messages.BucketClaims, err)
	}
	return nil
}

// consumerMaxAckPending is the consumer's limit: -1, JetStream's "none", when
// MaxAckPending leaves the fleet uncapped.
func (c Config) consumerMaxAckPending() int {
	if c.MaxAckPending <= 0 {
		return -1
	}
	return c.MaxAckPending
}
