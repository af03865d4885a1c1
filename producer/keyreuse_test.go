package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

// producerAndAwaiter starts a stack with a worker, and returns a Producer
// and an Awaiter on it.
func producerAndAwaiter(t *testing.T) (*stack, context.Context, *producer.Producer, *producer.Awaiter) {
	t.Helper()
	s := setup(t, true)
	ctx := testContext(t)
	aw, err := producer.NewAwaiter(ctx, s.js)
	require.NoError(t, err)
	t.Cleanup(aw.Stop)
	return s, ctx, producer.New(s.js), aw
}

// TestKeyReusedInsideTheDuplicateWindow publishes under one key, within the
// duplicate window, commands that differ from the first: JetStream drops
// them and answers with the first's sequence, and the producer, which alone
// knows what it sent, answers KEY_REUSED. A true duplicate still gets the
// original's outcome.
func TestKeyReusedInsideTheDuplicateWindow(t *testing.T) {
	t.Parallel()
	s, ctx, p, aw := producerAndAwaiter(t)

	expires := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	original := messages.CreateBalance{WalletID: "kr", Name: "gift", Priority: 2, ExpiresAt: &expires}
	first, err := p.Publish(ctx, original, "kr-1")
	require.NoError(t, err)
	require.False(t, first.Duplicate)
	created, err := p.AwaitAck(ctx, first)
	require.NoError(t, err)
	require.NotNil(t, created.Created, "%s", created.Data)
	require.False(t, created.ByPublisher)

	// Both ways of awaiting give one answer; awaitBoth returns it.
	awaitBoth := func(t *testing.T, ack producer.Ack) producer.Outcome {
		t.Helper()
		got, err := p.AwaitAck(ctx, ack)
		require.NoError(t, err)
		many, err := aw.AwaitAcks(ctx, []producer.Ack{ack, first})
		require.NoError(t, err)
		require.Equal(t, got, many[0])
		require.Equal(t, created, many[1], "the original's own ack keeps its outcome")
		return got
	}
	requireKeyReused := func(t *testing.T, cmd messages.CreateBalance, ack producer.Ack, o producer.Outcome) {
		t.Helper()
		require.Nil(t, o.Created)
		require.NotNil(t, o.Rejected)
		require.True(t, o.ByPublisher)
		require.Equal(t, messages.CodeKeyReused, o.Rejected.Code)
		require.Equal(t, "kr-1", o.Rejected.Key)
		require.Equal(t, cmd.WalletID, o.Rejected.WalletID)
		require.Equal(t, cmd.Name, o.Rejected.Name)
		require.Contains(t, o.Rejected.Message, "duplicate window")
		require.Empty(t, o.Subject, "no event was published")
		require.Equal(t, first.Seq, o.CommandSeq)
		require.Equal(t, &created, o.Original)
		// Data is the worker's rejected event, field for field.
		var ev messages.BalanceCreateRejected
		dec := json.NewDecoder(bytes.NewReader(o.Data))
		dec.DisallowUnknownFields()
		require.NoError(t, dec.Decode(&ev))
		require.Equal(t, *o.Rejected, ev)
	}

	for _, tt := range []struct {
		name string
		cmd  messages.CreateBalance
	}{
		{"another priority", messages.CreateBalance{WalletID: "kr", Name: "gift", Priority: 5, ExpiresAt: &expires}},
		{"another expiry", messages.CreateBalance{WalletID: "kr", Name: "gift", Priority: 2}},
		{"another name", messages.CreateBalance{WalletID: "kr", Name: "savings", Priority: 2, ExpiresAt: &expires}},
		// The original's event is on another wallet's subject: found by
		// its sequence, not awaited in vain on kr2's.
		{"another wallet", messages.CreateBalance{WalletID: "kr2", Name: "gift", Priority: 2, ExpiresAt: &expires}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ack, err := p.Publish(ctx, tt.cmd, "kr-1")
			require.NoError(t, err)
			require.True(t, ack.Duplicate)
			require.Equal(t, first.Seq, ack.Seq)
			requireKeyReused(t, tt.cmd, ack, awaitBoth(t, ack))
		})
	}

	t.Run("a true duplicate", func(t *testing.T) {
		// The same instant in another zone is the same command.
		paris := expires.In(time.FixedZone("CET", 3600))
		ack, err := p.Publish(ctx, messages.CreateBalance{WalletID: "kr", Name: "gift", Priority: 2, ExpiresAt: &paris}, "kr-1")
		require.NoError(t, err)
		require.True(t, ack.Duplicate)
		require.Equal(t, created, awaitBoth(t, ack))
	})

	require.Equal(t, first.Seq, commandsState(t, s.js).LastSeq, "nothing but the original was stored")
}

// TestKeyReusedAfterARejectedOriginal: the original's rejected event tells
// only its wallet and name. An original rejected as INVALID_COMMAND was
// another command (Publish sends none); an original rejected otherwise, for
// the same wallet and name, is the same command as far as anyone can tell,
// and its rejection is the answer.
func TestKeyReusedAfterARejectedOriginal(t *testing.T) {
	t.Parallel()
	s := setup(t, true)
	ctx := testContext(t)
	p := producer.New(s.js)

	// An invalid command under key bad-1, published by another client.
	msg := &nats.Msg{Subject: messages.CreateBalanceSubject("ro"), Data: []byte(`{"walletID":"ro","name":"gift","colour":"red"}`), Header: nats.Header{}}
	msg.Header.Set(messages.HeaderMsgID, "bad-1")
	pa, err := s.js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	invalid, err := p.Await(ctx, "ro", pa.Sequence)
	require.NoError(t, err)
	require.NotNil(t, invalid.Rejected)
	require.Equal(t, messages.CodeInvalidCommand, invalid.Rejected.Code)

	cmd := messages.CreateBalance{WalletID: "ro", Name: "gift"}
	ack, err := p.Publish(ctx, cmd, "bad-1")
	require.NoError(t, err)
	require.True(t, ack.Duplicate)
	o, err := p.AwaitAck(ctx, ack)
	require.NoError(t, err)
	require.True(t, o.ByPublisher)
	require.Equal(t, messages.CodeKeyReused, o.Rejected.Code)
	require.Equal(t, &invalid, o.Original)

	// ALREADY_EXISTS: ro/gift created under one key, then asked for under
	// another; that other key published again with the same command.
	first, err := p.Publish(ctx, cmd, "ro-a")
	require.NoError(t, err)
	o, err = p.AwaitAck(ctx, first)
	require.NoError(t, err)
	require.NotNil(t, o.Created)
	second, err := p.Publish(ctx, cmd, "ro-b")
	require.NoError(t, err)
	exists, err := p.AwaitAck(ctx, second)
	require.NoError(t, err)
	require.Equal(t, messages.CodeAlreadyExists, exists.Rejected.Code)
	again, err := p.Publish(ctx, cmd, "ro-b")
	require.NoError(t, err)
	require.True(t, again.Duplicate)
	o, err = p.AwaitAck(ctx, again)
	require.NoError(t, err)
	require.Equal(t, exists, o, "the original's rejection, not a guess")
	// The same key for another balance is KEY_REUSED.
	other, err := p.Publish(ctx, messages.CreateBalance{WalletID: "ro", Name: "other"}, "ro-b")
	require.NoError(t, err)
	o, err = p.AwaitAck(ctx, other)
	require.NoError(t, err)
	require.True(t, o.ByPublisher)
	require.Equal(t, messages.CodeKeyReused, o.Rejected.Code)
}

// TestReconcileLeavesWhatItCannotJudge: an Ack without its command (built by
// hand) or an outcome that never came are returned unchanged.
func TestReconcileLeavesWhatItCannotJudge(t *testing.T) {
	t.Parallel()
	stored := producer.Outcome{Created: &messages.BalanceCreated{Key: "k", WalletID: "w1", Balance: messages.Balance{Name: "a"}}}
	require.Equal(t, stored, producer.Ack{Key: "k", Seq: 1, Duplicate: true}.Reconcile(stored))
	cmd := messages.CreateBalance{WalletID: "w1", Name: "b"}
	require.Equal(t, producer.Outcome{}, producer.Ack{Key: "k", Seq: 1, Duplicate: true, Command: cmd}.Reconcile(producer.Outcome{}))
	require.Equal(t, stored, producer.Ack{Key: "k", Seq: 1, Command: cmd}.Reconcile(stored), "not a duplicate: the stored command is ours")
	require.True(t, producer.Ack{Key: "k", Seq: 1, Duplicate: true, Command: cmd}.Reconcile(stored).ByPublisher)
}

// A key first used by a command of another kind: the duplicate's original
// settles with an event that is no create-balance outcome (here the test
// worker's rejection of a kind it does not have), and both ways of awaiting
// answer KEY_REUSED rather than wait for a create-balance event that never
// comes.
func TestKeyReusedAcrossKinds(t *testing.T) {
	t.Parallel()
	_, ctx, p, aw := producerAndAwaiter(t)

	credit, err := producer.NewCommand(messages.KindCreditWallet, "", []byte(`{"walletID":"x9","amount":{"asset":"USD/2","amount":5}}`), "kx")
	require.NoError(t, err)
	first, err := p.PublishCommand(ctx, credit, "kx")
	require.NoError(t, err)
	require.False(t, first.Duplicate)

	cmd := messages.CreateBalance{WalletID: "x9", Name: "gift"}
	ack, err := p.Publish(ctx, cmd, "kx")
	require.NoError(t, err)
	require.True(t, ack.Duplicate)
	require.Equal(t, first.Seq, ack.Seq)

	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	o, err := p.AwaitAck(wctx, ack)
	require.NoError(t, err)
	require.True(t, o.ByPublisher)
	require.NotNil(t, o.Rejected, "%s", o.Data)
	require.Equal(t, messages.CodeKeyReused, o.Rejected.Code)
	require.Equal(t, "x9", o.Rejected.WalletID)
	require.Equal(t, "gift", o.Rejected.Name)
	require.Contains(t, o.Rejected.Message, "wallets.events.")
	require.NotNil(t, o.Original, "a decision by the publisher names the original's outcome")
	require.True(t, strings.HasPrefix(o.Original.Subject, "wallets.events."), o.Original.Subject)
	require.Equal(t, first.Seq, o.Original.CommandSeq)
	many, err := aw.AwaitAcks(wctx, []producer.Ack{ack})
	require.NoError(t, err)
	require.Equal(t, o, many[0])
}
