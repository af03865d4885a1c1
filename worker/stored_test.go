package worker

import (
	"context"
	"errors"
	"math/big"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// A debit of an empty wallet is rejected (INSUFFICIENT_FUNDS) and its event
// stored, but the ack is lost. Before the redelivery, the wallet is funded
// from outside its line (a credit made through the wallets API, say).
// Deciding the redelivery again would now apply the debit while the stored
// event, which the new one duplicates, says it was rejected. The
// redelivery finds its event stored and is acknowledged, decided once.
func TestARejectionWhoseAckWasLostIsNotDecidedAgain(t *testing.T) {
	t.Parallel()
	var acks atomic.Int64
	b := setup(t, withKindsOf(moneyKinds), withHooks(func(b *bundle) hooks {
		return hooks{beforeAck: func(*delivery) error {
			if acks.Add(1) > 1 {
				return nil
			}
			_, err := b.ledger.CreateTransaction(context.Background(), testLedger, ledgeradapter.TransactionRequest{
				Postings: []ledgeradapter.Posting{{Source: "world", Destination: "wallets:w1:main", Amount: big.NewInt(100), Asset: "USD/2"}},
			}, "")
			if err != nil { // on the worker's goroutine: no require here
				t.Errorf("fund the wallet: %v", err)
			}
			return errors.New("injected: ack lost")
		}}
	}))
	b.publish(t, kindMsg(messages.KindDebitWallet, "w1", "d-1", `{"walletID":"w1","amount":{"asset":"USD/2","amount":30}}`))
	b.settled(t)

	require.EqualValues(t, 2, b.deliveries(t), "redelivered once after the lost ack")
	ev := single(t, b.events.all())
	require.Equal(t, "wallets.events.debit-wallet-rejected.w1", ev.Subject)
	require.Equal(t, "INSUFFICIENT_FUNDS", ev.json(t)["code"])
	a, _, err := b.ledger.GetAccount(context.Background(), testLedger, "wallets:w1:main")
	require.NoError(t, err)
	require.Equal(t, big.NewInt(100), a.Volumes["USD/2"].Balance, "the debit the event rejected was not applied")
	require.EqualValues(t, 1, b.worker.Stats().SettledBefore.Load())
}

// The commands stream was made again (its sequences start over) while the
// events stream kept an event of its old command 1 on the wallet. The new
// command 1, redelivered after a failure, must not take that event for its
// own: the key tells them apart.
func TestAnOldEventOfTheSameSequenceIsNotTheCommands(t *testing.T) {
	t.Parallel()
	var reads atomic.Int64
	b := setup(t, readsFailUntilDelivery(&reads, 2))
	old := &nats.Msg{Subject: messages.EventSubject(messages.EventBalanceCreated, "w1"), Data: []byte(`{}`), Header: nats.Header{}}
	old.Header.Set(messages.HeaderCommandSeq, "1")
	old.Header.Set(messages.HeaderCommandKey, "old-key")
	old.Header.Set(messages.HeaderMsgID, messages.EventMsgID("old-key", 1))
	_, err := b.js.PublishMsg(context.Background(), old)
	require.NoError(t, err)

	ack := b.publish(t, cmd("w1", "k", body("w1", "savings")))
	require.EqualValues(t, 1, ack.Sequence)
	b.settled(t)
	require.EqualValues(t, 2, b.deliveries(t), "failed once, then decided")
	require.Zero(t, b.worker.Stats().SettledBefore.Load())
	require.Equal(t, 1, b.setMetadataLogs(t), "the balance is written")
	require.Len(t, b.events.all(), 2, "the old event and the command's own")
}

// A copy of a debit is held in this process while another delivery of it
// rejects it (INSUFFICIENT_FUNDS) and acknowledges it: its worker froze past
// the ack wait, say, and JetStream gave the command to another. The wallet
// is then funded. When the copy comes to its turn, its command is no longer
// in the commands stream: it is acknowledged as settled elsewhere, not
// decided again (which would apply the debit the stored event rejected).
func TestACopySettledElsewhereIsNotDecidedAgain(t *testing.T) {
	t.Parallel()
	var held atomic.Pointer[delivery]
	b := setup(t, withKindsOf(moneyKinds), withHooks(func(*bundle) hooks {
		return hooks{beforeAck: func(d *delivery) error {
			held.CompareAndSwap(nil, d)
			return nil
		}}
	}))
	b.publish(t, kindMsg(messages.KindDebitWallet, "w1", "d-1", `{"walletID":"w1","amount":{"asset":"USD/2","amount":30}}`))
	b.settled(t)
	first := held.Load()
	require.NotNil(t, first)
	_, err := b.ledger.CreateTransaction(context.Background(), testLedger, ledgeradapter.TransactionRequest{
		Postings: []ledgeradapter.Posting{{Source: "world", Destination: "wallets:w1:main", Amount: big.NewInt(100), Asset: "USD/2"}},
	}, "")
	require.NoError(t, err)

	copyOf := newDelivery(first.msg, time.Now())
	b.worker.handle(context.Background(), copyOf)

	require.True(t, copyOf.settled.Load(), "the copy is settled")
	a, _, err := b.ledger.GetAccount(context.Background(), testLedger, "wallets:w1:main")
	require.NoError(t, err)
	require.Equal(t, big.NewInt(100), a.Volumes["USD/2"].Balance, "the debit the event rejected was not applied")
	ev := single(t, b.events.all())
	require.Equal(t, "wallets.events.debit-wallet-rejected.w1", ev.Subject)
	require.EqualValues(t, 1, b.worker.Stats().SettledBefore.Load())
}
