package handlers_test

import (
	"context"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// decideOn decodes body as a command of ks on subject and handles it under
// key.
func decideOn(t *testing.T, ks handlers.Kinds, subject, body, key string) handlers.Result {
	t.Helper()
	k, _, ok := ks.Of(subject)
	require.True(t, ok)
	cmd, err := k.Decode(subject, []byte(body))
	require.NoError(t, err)
	r, err := cmd.Handle(context.Background(), key)
	require.NoError(t, err)
	return r
}

// logCount counts the logs of the test ledger.
func logCount(t *testing.T, l *testutil.Ledger) int {
	t.Helper()
	all, err := l.Client.AllLogs(context.Background(), "wallets-002")
	require.NoError(t, err)
	return len(all)
}

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
		return decideOn(t, ks, subject, body, key)
	}
	const credit = `{"walletID":"w1","amount":{"asset":"USD/2","amount":100}}`
	const balance = `{"walletID":"w1","name":"savings"}`
	const debit = `{"walletID":"w1","amount":{"asset":"USD/2","amount":30},"pending":true}`
	const wallet = `{"name":"alice"}`
	cases := []struct{ kind, body string }{
		{messages.KindCreditWallet, credit}, {messages.KindCreateBalance, balance},
		{messages.KindDebitWallet, debit}, {messages.KindCreateWallet, wallet},
	}
	logs := func() int { return logCount(t, l) }

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

// An update-wallet leaves nothing on the wallet's account that tells it
// from an update of the same data made by another key: only the ledger's
// idempotency hit does. The replays find it with a dry run of the write
// under the key, which writes nothing whether it hits or not.
// It runs against the client and against a Batcher in front of it, as run
// has it.
func TestReplaysFindAnUpdateWalletByItsDryRun(t *testing.T) {
	t.Parallel()
	for _, batched := range []bool{false, true} {
		t.Run(map[bool]string{false: "client", true: "batcher"}[batched], func(t *testing.T) {
			t.Parallel()
			replaysFindAnUpdateWallet(t, batched)
		})
	}
}

func replaysFindAnUpdateWallet(t *testing.T, batched bool) {
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	var writes handlers.Ledger = l.Client
	if batched {
		b, err := ledgeradapter.NewBatcher(l.Client, ledgeradapter.BatcherConfig{})
		require.NoError(t, err)
		writes = b
	}
	wallets := handlers.Wallets{Balances: &handlers.CreateBalance{Ledger: writes, LedgerName: "wallets-002"},
		Writes: writes, Transactions: l.Client, LedgerName: "wallets-002"}
	kinds, replays := wallets.Kinds(), wallets.Replays()
	decide := func(ks handlers.Kinds, subject, body, key string) handlers.Result {
		t.Helper()
		return decideOn(t, ks, subject, body, key)
	}
	logs := func() int { return logCount(t, l) }
	wallet := messages.WalletIDOf("create-1")
	r := decide(kinds, messages.CreateWalletSubject("create-1"), `{"name":"alice"}`, "create-1")
	require.Empty(t, r.Code(), r.Reason())
	update := "wallets.commands." + messages.KindUpdateWallet + "." + wallet
	gold := `{"walletID":"` + wallet + `","metadata":{"tier":"gold"}}`
	silver := `{"walletID":"` + wallet + `","metadata":{"tier":"silver"}}`

	written := logs()
	r = decide(replays, update, gold, "update-1")
	require.False(t, r.Replayed(), "not applied yet: %s %s", r.Code(), r.Reason())
	require.Equal(t, written, logs(), "the dry run wrote nothing")

	r = decide(kinds, update, gold, "update-1")
	require.Empty(t, r.Code(), r.Reason())
	require.False(t, r.Replayed())
	written = logs()

	r = decide(replays, update, gold, "update-1")
	require.Empty(t, r.Code(), r.Reason())
	require.True(t, r.Replayed(), "applied by its key: the dry run hits")
	r = decide(replays, update, gold, "update-2")
	require.False(t, r.Replayed(), "the same data under a key that wrote nothing is not a replay")
	r = decide(replays, update, silver, "update-3")
	require.False(t, r.Replayed())
	require.Equal(t, written, logs(), "the dry runs wrote nothing")
	a, _, err := l.Client.GetAccount(ctx, "wallets-002", handlers.AccountAddress("", wallet, messages.MainBalance))
	require.NoError(t, err)
	require.Equal(t, "gold", a.Metadata[handlers.MetadataCustomDataPrefix+"tier"])
}
