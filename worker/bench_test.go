package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// BenchmarkSettle measures the settle of a created command against an
// in-process JetStream: the outcome event's synchronous publish (PubAck
// checked) and the DoubleAck. Fetching the command is outside the timer.
func BenchmarkSettle(b *testing.B) {
	_, js := testutil.Connect(b, testutil.NATS(b).ClientURL())
	ctx := context.Background()
	cfg := Config{DuplicateWindow: time.Hour}
	if err := Provision(ctx, js, cfg); err != nil {
		b.Fatal(err)
	}
	w, err := New(js, handlers.NewKinds(handlers.CreateBalanceKind(handlerFunc(nil))), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	consumer, err := js.Consumer(ctx, messages.StreamCommands, messages.ConsumerName)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		b.StopTimer()
		key := fmt.Sprintf("bench-%d", i)
		i++
		m := &nats.Msg{Subject: messages.CreateBalanceSubject("w1"), Header: nats.Header{},
			Data: []byte(`{"walletID":"w1","name":"savings"}`)}
		m.Header.Set(messages.HeaderMsgID, key)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			b.Fatal(err)
		}
		batch, err := consumer.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			b.Fatal(err)
		}
		msg := <-batch.Messages()
		d := newDelivery(msg, time.Now())
		o := handlers.Outcome{Created: &messages.BalanceCreated{Key: key, WalletID: "w1",
			Balance: messages.Balance{Name: "savings"}, Ledger: "wallets-002", Account: "wallets:w1:savings"}}
		b.StartTimer()
		w.settle(ctx, d, o)
		if !d.settled.Load() {
			b.Fatal("not settled")
		}
	}
}
