package handlers_test

import (
	"context"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// The replays answer a command applied before as replayed, and one not
// applied otherwise, without writing anything either way.
func TestReplaysWriteNothing(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	wallets := handlers.Wallets{Balances: &handlers.CreateBalance{Ledger: l.Client, LedgerName: "wallets-002"},
		Writes: l.Client, Transactions: l.Client, LedgerName: "wallets-002"}
	kinds, replays := wallets.Kinds(), wallets.Replays()
	decide := func(ks handlers.Kinds, kind, body, key string) handlers.Result {
		t.Helper()
		subject := "wallets.commands." + kind + ".w1"
		if kind == messages.KindCreateWallet {
			subject = messages.CreateWalletSubject(key)
		}
		k, _, ok := ks.Of(subject)
		require.True(t, ok)
		cmd, err := k.Decode(subject, []byte(body))
		require.NoError(t, err)
		r, err := cmd.Handle(ctx, key)
		require.NoError(t, err)
		return r
	}
	const credit = `{"walletID":"w1","amount":{"asset":"USD/2","amount":100}}`
	const balance = `{"walletID":"w1","name":"savings"}`
	const debit = `{"walletID":"w1","amount":{"asset":"USD/2","amount":30},"pending":true}`
	const wallet = `{"name":"alice"}`
	cases := []struct{ kind, body string }{
		{messages.KindCreditWallet, credit}, {messages.KindCreateBalance, balance},
		{messages.KindDebitWallet, debit}, {messages.KindCreateWallet, wallet},
	}
	logs := func() int {
		all, err := l.Client.AllLogs(ctx, "wallets-002")
		require.NoError(t, err)
		return len(all)
	}

	for _, c := range cases {
		r := decide(replays, c.kind, c.body, "k-"+c.kind)
		require.False(t, r.Replayed(), "%s: not applied before", c.kind)
	}
	require.Zero(t, logs(), "the replays wrote nothing")

	for _, c := range cases {
		r := decide(kinds, c.kind, c.body, "k-"+c.kind)
		require.Empty(t, r.Code(), r.Reason())
		require.False(t, r.Replayed())
	}
	written := logs()
	for _, c := range cases {
		r := decide(replays, c.kind, c.body, "k-"+c.kind)
		require.Empty(t, r.Code(), r.Reason())
		require.True(t, r.Replayed(), "%s: applied before", c.kind)
	}
	require.Equal(t, written, logs(), "the replays wrote nothing")
	a, _, err := l.Client.GetAccount(ctx, "wallets-002", "wallets:w1:main")
	require.NoError(t, err)
	require.Equal(t, big.NewInt(70), a.Volumes["USD/2"].Balance, "credited once, debited once")
}
