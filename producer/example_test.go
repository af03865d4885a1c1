package producer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
	"github.com/wallets-worker/wallets-worker/worker"
)

// Example publishes a command, awaits its outcome, publishes it again as a
// producer retrying after a crash would, reuses its key for another command,
// and publishes the same balance under another key.
func Example() {
	var scope testutil.Scope // an Example's cleanups
	defer scope.Close()
	s := startStack(&scope, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	p := producer.New(s.js)
	expires := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	cmd := messages.CreateBalance{WalletID: "w1", Name: "savings", Priority: 2, ExpiresAt: &expires}
	key := producer.KeyFrom("orders", "order-1042") // the same key on every retry

	for range 2 {
		ack, err := p.Publish(ctx, cmd, key)
		if err != nil {
			panic(err)
		}
		out, err := p.AwaitAck(ctx, ack)
		if err != nil {
			panic(err)
		}
		fmt.Printf("seq %d duplicate=%v: created %s, replayed=%v\n", ack.Seq, ack.Duplicate, out.Created.Account, out.Created.Replayed)
	}

	// The same key for another command, within the duplicate window:
	// JetStream drops it, and AwaitAck says why.
	other := cmd
	other.Priority = 5
	ack, err := p.Publish(ctx, other, key)
	if err != nil {
		panic(err)
	}
	out, err := p.AwaitAck(ctx, ack)
	if err != nil {
		panic(err)
	}
	fmt.Printf("seq %d duplicate=%v: rejected %s, by the publisher=%v\n", ack.Seq, ack.Duplicate, out.Rejected.Code, out.ByPublisher)

	ack, err = p.Publish(ctx, cmd, producer.KeyFrom("orders", "order-2077"))
	if err != nil {
		panic(err)
	}
	out, err = p.AwaitAck(ctx, ack)
	if err != nil {
		panic(err)
	}
	fmt.Printf("seq %d: rejected %s\n", ack.Seq, out.Rejected.Code)

	_, err = p.Publish(ctx, messages.CreateBalance{WalletID: "w1", Name: "main"}, producer.NewKey())
	fmt.Println("refused before the wire:", messages.IsValidationError(err))
	// Output:
	// seq 1 duplicate=false: created wallets:w1:savings, replayed=false
	// seq 1 duplicate=true: created wallets:w1:savings, replayed=false
	// seq 1 duplicate=true: rejected KEY_REUSED, by the publisher=true
	// seq 2: rejected ALREADY_EXISTS
	// refused before the wire: true
}

// ExampleAwaiter publishes a batch of commands and awaits all their outcomes
// over one subscription.
func ExampleAwaiter() {
	var scope testutil.Scope // an Example's cleanups
	defer scope.Close()
	s := startStack(&scope, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	a, err := producer.NewAwaiter(ctx, s.js)
	if err != nil {
		panic(err)
	}
	defer a.Stop()
	p := producer.New(s.js)
	var acks []producer.Ack
	for _, w := range []string{"w1", "w2", "w3"} {
		ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: w, Name: "gift"}, producer.KeyFrom("signup-gifts", w))
		if err != nil {
			panic(err)
		}
		acks = append(acks, ack)
	}
	outs, err := a.AwaitAcks(ctx, acks)
	if err != nil {
		panic(err)
	}
	for _, o := range outs {
		fmt.Println(o.CommandSeq, o.Created.Account)
	}
	// Output:
	// 1 wallets:w1:gift
	// 2 wallets:w2:gift
	// 3 wallets:w3:gift
}

// ExampleKeyFrom derives the key of a command from the caller's own
// identifier: a retry computes the same key, another identifier another key.
func ExampleKeyFrom() {
	fmt.Println(producer.KeyFrom("orders", "order-1042"))
	fmt.Println(producer.KeyFrom("orders", "order-1042") == producer.KeyFrom("orders", "order-1042"))
	fmt.Println(producer.KeyFrom("orders", "order-1042") == producer.KeyFrom("refunds", "order-1042"))
	// Output:
	// e4b752cdfea416cccac205c75cc529bbfd5bb965ccbbeed09d933f27eef0d5db
	// true
	// false
}

// jetStreamPublisher is the smallest Watermill message.Publisher over nats.go
// that a service already on Watermill needs: it publishes each message to
// JetStream, waits for the stream's acknowledgement, and copies the message's
// metadata to NATS headers, so the command's key travels in Nats-Msg-Id.
// (watermill-nats sets Nats-Msg-Id only with JetStreamConfig.TrackMsgId, and
// then to the Watermill message UUID, not to the command's key.)
type jetStreamPublisher struct {
	js jetstream.JetStream
}

func (p jetStreamPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		nm := &nats.Msg{Subject: topic, Data: m.Payload, Header: nats.Header{}}
		for k, v := range m.Metadata {
			nm.Header.Set(k, v)
		}
		if _, err := p.js.PublishMsg(m.Context(), nm, jetstream.WithExpectStream(messages.StreamCommands)); err != nil {
			return fmt.Errorf("publish message %s: %w", m.UUID, err)
		}
	}
	return nil
}

func (jetStreamPublisher) Close() error { return nil }

// Example_watermill publishes a command from a service that already uses
// Watermill: the body is the command's encoding, the key goes in the
// Nats-Msg-Id metadata, and the topic is the command's subject. The outcome is
// awaited by key, since a Watermill publisher does not return the sequence.
func Example_watermill() {
	var scope testutil.Scope // an Example's cleanups
	defer scope.Close()
	s := startStack(&scope, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cmd := messages.CreateBalance{WalletID: "w7", Name: "cashback", Priority: 1}
	key := producer.KeyFrom("cashback-campaign", "w7")
	if err := producer.Validate(cmd, key); err != nil { // what the worker would refuse
		panic(err)
	}
	body, _ := cmd.Encode()

	var pub message.Publisher = jetStreamPublisher{js: s.js}
	for range 2 { // Watermill redelivers; the key makes the second publish a no-op
		msg := message.NewMessage(watermill.NewUUID(), body)
		msg.Metadata.Set(messages.HeaderMsgID, key)
		if err := pub.Publish(messages.CreateBalanceSubject(cmd.WalletID), msg); err != nil {
			panic(err)
		}
	}

	out, err := producer.New(s.js).AwaitKey(ctx, cmd.WalletID, key)
	if err != nil {
		panic(err)
	}
	fmt.Println(out.Subject, out.Created.Balance.Name, out.Created.Key == key)
	info, err := s.js.Stream(ctx, messages.StreamCommands)
	if err != nil {
		panic(err)
	}
	fmt.Println("commands stored:", info.CachedInfo().State.LastSeq)
	// Output:
	// wallets.events.balance-created.w7 cashback true
	// commands stored: 1
}

// stack is an in-process deployment for examples and tests: an embedded NATS
// server with the streams provisioned, the embedded ledger behind an HTTP
// server, and, once started, a worker applying commands to it. Everything
// stops with t's cleanups.
type stack struct {
	t      testutil.T
	url    string
	nc     *nats.Conn
	js     jetstream.JetStream
	ledger *ledgeradapter.Client
}

const exampleLedger = "wallets-002"

// startStack starts the stack, with a worker when withWorker is set.
func startStack(t testutil.T, withWorker bool) *stack {
	t.Helper()
	s := &stack{t: t, url: testutil.NATS(t).ClientURL()}
	s.nc, s.js = testutil.Connect(t, s.url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, worker.Provision(ctx, s.js, workerConfig()))
	s.ledger = testutil.StartLedger(t, testutil.LedgerOptions{InMemory: true}).Client
	require.NoError(t, s.ledger.EnsureLedger(ctx, exampleLedger))
	if withWorker {
		s.startWorker()
	}
	return s
}

func workerConfig() worker.Config {
	return worker.Config{Concurrency: 64, DrainTimeout: 5 * time.Second}
}

// startWorker runs a worker on its own connection until the cleanups.
func (s *stack) startWorker() {
	t := s.t
	t.Helper()
	_, js := testutil.Connect(t, s.url)
	claims, err := worker.NewClaims(context.Background(), js, workerConfig())
	require.NoError(t, err)
	h := &handlers.CreateBalance{Ledger: s.ledger, LedgerName: exampleLedger, Claim: claims}
	w, err := worker.New(js, handlers.NewKinds(handlers.CreateBalanceKind(h)), workerConfig(), slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: %v", err)
		}
	})
}
