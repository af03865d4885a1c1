package producer

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/wallets-worker/wallets-worker/messages"
)

// Producer publishes commands (Publish for create-balance, PublishCommand
// for the other kinds) and awaits their outcomes. It is safe for concurrent
// use.
type Producer struct {
	js      jetstream.JetStream
	pubOpts []jetstream.PublishOpt
	tracer  trace.Tracer // nil: the global provider's
}

// Option configures a Producer.
type Option func(*Producer)

// WithRetry makes a publish that no server answers (no responders, as during
// a stream leader election) retry up to attempts times, wait apart; the
// default is nats.go's (2 attempts, 250ms). Retrying is safe: the key
// deduplicates.
func WithRetry(attempts int, wait time.Duration) Option {
	return func(p *Producer) {
		p.pubOpts = append(p.pubOpts, jetstream.WithRetryAttempts(attempts), jetstream.WithRetryWait(wait))
	}
}

// New returns a Producer that publishes with js, which must not be nil.
func New(js jetstream.JetStream, opts ...Option) *Producer {
	if js == nil {
		panic("producer: New needs a JetStream")
	}
	p := &Producer{js: js, pubOpts: []jetstream.PublishOpt{jetstream.WithExpectStream(messages.StreamCommands)}}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Ack is what JetStream said of a published command.
type Ack struct {
	// Key is the command's idempotency key.
	Key string `json:"key"`
	// Stream is WALLETS_COMMANDS.
	Stream string `json:"stream"`
	// Seq is the command's sequence in Stream: the one the worker puts in
	// the outcome's Wallets-Command-Seq header, and the one to await.
	Seq uint64 `json:"seq"`
	// Duplicate is true when the key was already stored within the stream's
	// duplicate window: nothing new was stored, and Seq is the original's.
	// The original may be another command (the key reused with other fields,
	// or for another wallet): AwaitAck and Awaiter.AwaitAcks tell.
	Duplicate bool `json:"duplicate"`
	// Command is the command that was published, which the outcome of a
	// Duplicate is compared with (Reconcile).
	Command messages.CreateBalance `json:"-"`
}

// Publish publishes cmd with key as its Nats-Msg-Id and returns JetStream's
// acknowledgement. A command or key the worker would refuse is refused here,
// as a *messages.ValidationError, and nothing is sent. An error after the
// send (a timeout) leaves it unknown whether the command was stored: publish
// it again with the same key.
//
// The command carries the W3C trace context (`traceparent`, SPEC §5) of a
// producer span, child of ctx's span (see WithTracerProvider); with no SDK
// installed, that of ctx's span itself, if any.
func (p *Producer) Publish(ctx context.Context, cmd messages.CreateBalance, key string) (ack Ack, err error) {
	msg, err := commandMsg(cmd, key)
	if err != nil {
		return Ack{}, err
	}
	ctx, span := p.startSend(ctx, msg, key)
	defer func() { endSend(span, ack, err) }()
	pa, err := p.js.PublishMsg(ctx, msg, p.pubOpts...)
	if err != nil {
		return Ack{}, fmt.Errorf("producer: publish command %q for wallet %s: %w", key, cmd.WalletID, err)
	}
	return Ack{Key: key, Stream: pa.Stream, Seq: pa.Sequence, Duplicate: pa.Duplicate, Command: cmd}, nil
}

// Validate reports whether Publish would refuse cmd and key, with the
// *messages.ValidationError it would return.
func Validate(cmd messages.CreateBalance, key string) error {
	_, err := commandMsg(cmd, key)
	return err
}

// commandMsg builds the message of a command, or refuses it as the worker
// would: the body is decoded back with the worker's decoder, so that what
// leaves here is what the worker accepts (the 64 KiB limit included).
func commandMsg(cmd messages.CreateBalance, key string) (*nats.Msg, error) {
	body, err := cmd.Encode()
	if err != nil {
		return nil, err
	}
	subject := messages.CreateBalanceSubject(cmd.WalletID)
	if _, err := messages.DecodeCreateBalance(subject, body); err != nil {
		return nil, err
	}
	if err := messages.ValidateKey(key); err != nil {
		return nil, err
	}
	msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	msg.Header.Set(messages.HeaderMsgID, key)
	return msg, nil
}
