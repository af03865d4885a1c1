package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// TestWalletLifeThroughTheBinary: `wallets-worker run` as a user starts it,
// everything embedded, and a wallet's life through its commands: created,
// given a balance, credited on each, debited at once, debited into two
// holds, the first confirmed in part, the second voided. Each outcome event
// is the one SPEC §7 names, with its fields, and after each step the
// ledger's volumes are what the wallets service computes for its accounts.
func TestWalletLifeThroughTheBinary(t *testing.T) {
	natsAddr, ledgerAddr := freeAddr(t), freeAddr(t)
	startWorker(t, "life", "--data-dir", t.TempDir(), "--embedded-nats-addr", natsAddr, "--embedded-ledger-addr", ledgerAddr)
	_, js := connectNATS(t, "nats://"+natsAddr)
	ledger := ledgerClient(t, "http://"+ledgerAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	events := testutil.NewStreamReader(t, js, messages.StreamEvents, false)

	wallet := messages.WalletIDOf("life-wallet")
	hold1, hold2 := messages.HoldIDOf("life-hold-1"), messages.HoldIDOf("life-hold-2")
	step := func(kind, key, body, wantEvent string) map[string]any {
		t.Helper()
		m := &nats.Msg{Subject: messages.SubjectCommandsPrefix + kind + "." + wallet, Header: nats.Header{}, Data: []byte(body)}
		m.Header.Set(messages.HeaderMsgID, key)
		_, err := js.PublishMsg(ctx, m)
		require.NoError(t, err)
		ev, err := events.Next(*waitFlag)
		require.NoError(t, err, "the outcome of %s", key)
		require.Equal(t, "wallets.events."+wantEvent+"."+wallet, ev.Subject, "%s: %s", key, ev.Data)
		var e map[string]any
		require.NoError(t, json.Unmarshal(ev.Data, &e))
		require.Equal(t, key, e["key"])
		require.Equal(t, wallet, e["walletID"])
		require.Equal(t, false, e["replayed"], key)
		return e
	}
	// balances checks every account of the wallet: USD/2 balance, input and
	// output (0 0 0 for an account that does not exist).
	type vol struct{ balance, input, output int64 }
	balances := func(what string, want map[string]vol) {
		t.Helper()
		for account, w := range want {
			a, found, err := ledger.GetAccount(ctx, "wallets-002", account)
			require.NoError(t, err)
			got := vol{}
			if v, ok := a.Volumes["USD/2"]; found && ok {
				got = vol{v.Balance.Int64(), v.Input.Int64(), v.Output.Int64()}
			}
			require.Equal(t, w, got, "after %s: %s", what, account)
		}
	}
	main := handlers.AccountAddress("", wallet, "main")
	savings := handlers.AccountAddress("", wallet, "savings")
	h1, h2 := handlers.HoldAddress("", hold1), handlers.HoldAddress("", hold2)
	usd := func(n int) string { return fmt.Sprintf(`{"asset":"USD/2","amount":%d}`, n) }

	created := step(messages.KindCreateWallet, "life-wallet", `{"name":"life","metadata":{"plan":"e2e"}}`, messages.EventWalletCreated)
	w := created["wallet"].(map[string]any)
	require.Equal(t, wallet, w["id"])
	require.Equal(t, "life", w["name"])
	require.Equal(t, map[string]any{"plan": "e2e"}, w["metadata"])
	require.Equal(t, "wallets-002", w["ledger"])
	main0, found, err := ledger.GetAccount(ctx, "wallets-002", main)
	require.NoError(t, err)
	require.True(t, found, "the wallet's main account")
	require.Equal(t, wallet, main0.Metadata["wallets/id"])

	step(messages.KindCreateBalance, "life-balance", fmt.Sprintf(`{"walletID":%q,"name":"savings","priority":1}`, wallet), messages.EventBalanceCreated)

	e := step(messages.KindCreditWallet, "life-credit-main", fmt.Sprintf(`{"walletID":%q,"amount":%s}`, wallet, usd(1000)), messages.EventWalletCredited)
	require.Positive(t, e["transactionID"].(float64)+1)
	step(messages.KindCreditWallet, "life-credit-savings", fmt.Sprintf(`{"walletID":%q,"amount":%s,"balance":"savings"}`, wallet, usd(250)), messages.EventWalletCredited)
	balances("the credits", map[string]vol{main: {1000, 1000, 0}, savings: {250, 250, 0}})

	e = step(messages.KindDebitWallet, "life-debit", fmt.Sprintf(`{"walletID":%q,"amount":%s}`, wallet, usd(100)), messages.EventWalletDebited)
	require.Nil(t, e["hold"], "an immediate debit makes no hold")
	balances("the debit", map[string]vol{main: {900, 1000, 100}, savings: {250, 250, 0}})

	e = step(messages.KindDebitWallet, "life-hold-1", fmt.Sprintf(`{"walletID":%q,"amount":%s,"pending":true}`, wallet, usd(300)), messages.EventWalletDebited)
	require.Equal(t, hold1, e["hold"].(map[string]any)["id"])
	balances("the first hold", map[string]vol{main: {600, 1000, 400}, h1: {300, 300, 0}})

	e = step(messages.KindConfirmHold, "life-confirm", fmt.Sprintf(`{"holdID":%q,"amount":120}`, hold1), messages.EventHoldConfirmed)
	require.Equal(t, hold1, e["holdID"])
	balances("the partial confirm", map[string]vol{main: {600, 1000, 400}, h1: {180, 300, 120}})

	step(messages.KindDebitWallet, "life-hold-2", fmt.Sprintf(`{"walletID":%q,"amount":%s,"pending":true}`, wallet, usd(50)), messages.EventWalletDebited)
	balances("the second hold", map[string]vol{main: {550, 1000, 450}, h2: {50, 50, 0}})

	e = step(messages.KindVoidHold, "life-void", fmt.Sprintf(`{"holdID":%q}`, hold2), messages.EventHoldVoided)
	require.Equal(t, hold2, e["holdID"])
	balances("the void", map[string]vol{main: {600, 1050, 450}, h2: {0, 50, 50}, h1: {180, 300, 120}, savings: {250, 250, 0}})

	step(messages.KindUpdateWallet, "life-update", fmt.Sprintf(`{"walletID":%q,"metadata":{"tier":"gold"}}`, wallet), messages.EventWalletUpdated)
	main1, _, err := ledger.GetAccount(ctx, "wallets-002", main)
	require.NoError(t, err)
	require.Equal(t, "gold", main1.Metadata["wallets/custom_data_tier"])
	require.Equal(t, "e2e", main1.Metadata["wallets/custom_data_plan"], "an update merges")
}
