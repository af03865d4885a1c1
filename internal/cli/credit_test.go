package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// TestCreditWalletThroughRun: `run` on its embedded defaults applies
// create-wallet and credit-wallet commands beside create-balance ones: a
// wallet is created under the ID its key derives (a republish replays it),
// a credit lands once in
// the ledger (volumes asserted), a republish of its key replays it, the
// same key with another amount is KEY_REUSED, a credit of a balance that
// does not exist is BALANCE_NOT_FOUND, and a bad body is a dead letter.
func TestCreditWalletThroughRun(t *testing.T) {
	t.Parallel()
	b := setup(t, "--duplicate-window", "1s")
	_, js := testutil.Connect(t, b.addrs.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	events := testutil.NewStreamReader(t, js, messages.StreamEvents, true)
	next := func(subject string) map[string]any {
		t.Helper()
		m, err := events.Next(30 * time.Second)
		require.NoError(t, err)
		require.Equal(t, subject, m.Subject)
		var body map[string]any
		require.NoError(t, json.Unmarshal(m.Data, &body))
		return body
	}
	publish := func(kind, wallet, key, body string) {
		t.Helper()
		m := &nats.Msg{Subject: "wallets.commands." + kind + "." + wallet, Header: nats.Header{}, Data: []byte(body)}
		m.Header.Set(messages.HeaderMsgID, key)
		_, err := js.PublishMsg(ctx, m)
		require.NoError(t, err)
	}

	wallet := messages.WalletIDOf("kw")
	publish("create-wallet", wallet, "kw", `{"name":"alice","metadata":{"tier":"gold"}}`)
	created := next("wallets.events.wallet-created." + wallet)
	require.Equal(t, false, created["replayed"])
	require.Equal(t, "alice", created["wallet"].(map[string]any)["name"])
	time.Sleep(1100 * time.Millisecond)
	publish("create-wallet", wallet, "kw", `{"metadata":{"tier":"gold"},"name":"alice"}`)
	require.Equal(t, true, next("wallets.events.wallet-created." + wallet)["replayed"])
	publish("update-wallet", wallet, "ku", `{"walletID":"`+wallet+`","metadata":{"tier":"platinum"}}`)
	require.Equal(t, "platinum", next("wallets.events.wallet-updated." + wallet)["metadata"].(map[string]any)["tier"])
	publish("create-wallet", "w-not-derived", "kw2", `{"name":"bob"}`)
	require.Equal(t, string(messages.CodeInvalidCommand), next("wallets.events.create-wallet-rejected.w-not-derived")["code"])

	publish("credit-wallet", "w1", "c1", `{"walletID":"w1","amount":{"asset":"USD/2","amount":100},"metadata":{"why":"topup"}}`)
	first := next("wallets.events.wallet-credited.w1")
	require.Equal(t, false, first["replayed"])
	require.Equal(t, "main", first["balance"])

	time.Sleep(1100 * time.Millisecond) // past the duplicate window: the republish is stored again
	publish("credit-wallet", "w1", "c1", `{"walletID":"w1","amount":{"asset":"USD/2","amount":100},"metadata":{"why":"topup"}}`)
	again := next("wallets.events.wallet-credited.w1")
	require.Equal(t, true, again["replayed"])
	require.Equal(t, first["transactionID"], again["transactionID"])

	publish("credit-wallet", "w1", "c1-other", `{"walletID":"w1","amount":{"asset":"USD/2","amount":5},"balance":"savings"}`)
	require.Equal(t, string(messages.CodeBalanceNotFound), next("wallets.events.credit-wallet-rejected.w1")["code"])

	time.Sleep(1100 * time.Millisecond)
	publish("credit-wallet", "w1", "c1", `{"walletID":"w1","amount":{"asset":"USD/2","amount":101}}`)
	require.Equal(t, string(messages.CodeKeyReused), next("wallets.events.credit-wallet-rejected.w1")["code"])

	publish("credit-wallet", "w1", "c-bad", `{"walletID":"w1","amount":{"asset":"USD/2","amount":-1}}`)
	require.Equal(t, string(messages.CodeInvalidCommand), next("wallets.events.credit-wallet-rejected.w1")["code"])
	dlq, err := js.Stream(ctx, messages.StreamDLQ)
	require.NoError(t, err)
	dead, err := dlq.GetLastMsgForSubject(ctx, "wallets.dlq.credit-wallet.w1")
	require.NoError(t, err)
	require.Equal(t, string(messages.CodeInvalidCommand), dead.Header.Get(messages.HeaderDLQCode))

	// Debits: one immediate, one into a hold; one short of funds.
	publish("debit-wallet", "w1", "d1", `{"walletID":"w1","amount":{"asset":"USD/2","amount":30}}`)
	debited := next("wallets.events.wallet-debited.w1")
	require.Equal(t, false, debited["replayed"])
	require.Nil(t, debited["hold"])
	publish("debit-wallet", "w1", "h1", `{"walletID":"w1","amount":{"asset":"USD/2","amount":20},"pending":true,"description":"pre-auth"}`)
	held := next("wallets.events.wallet-debited.w1")
	require.Equal(t, messages.HoldIDOf("h1"), held["hold"].(map[string]any)["id"])
	publish("debit-wallet", "w1", "d2", `{"walletID":"w1","amount":{"asset":"USD/2","amount":51}}`)
	require.Equal(t, string(messages.CodeInsufficientFunds), next("wallets.events.debit-wallet-rejected.w1")["code"])

	// Holds: confirm part of one, void another.
	publish("confirm-hold", "w1", "cf1", `{"holdID":"`+messages.HoldIDOf("h1")+`","amount":5}`)
	require.Equal(t, "5", fmt.Sprint(next("wallets.events.hold-confirmed.w1")["amount"]))
	publish("debit-wallet", "w1", "h2", `{"walletID":"w1","amount":{"asset":"USD/2","amount":10},"pending":true}`)
	next("wallets.events.wallet-debited.w1")
	publish("void-hold", "w1", "v1", `{"holdID":"`+messages.HoldIDOf("h2")+`"}`)
	require.Equal(t, messages.HoldIDOf("h2"), next("wallets.events.hold-voided.w1")["holdID"])
	publish("void-hold", "w1", "v2", `{"holdID":"`+messages.HoldIDOf("h2")+`"}`)
	require.Equal(t, string(messages.CodeHoldClosed), next("wallets.events.void-hold-rejected.w1")["code"])

	c := testutil.LedgerClient(t, b.addrs.LedgerURL, 10*time.Second)
	a, found, err := c.GetAccount(ctx, "wallets-002", "wallets:w1:main")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, "50", a.Volumes["USD/2"].Balance.String(), "credited 100 once, debited 30, held 20 and 10, 10 back")
	hold, _, err := c.GetAccount(ctx, "wallets-002", "wallets:holds:"+strings.ReplaceAll(messages.HoldIDOf("h1"), "-", ""))
	require.NoError(t, err)
	require.Equal(t, "15", hold.Volumes["USD/2"].Balance.String(), "held 20, 5 confirmed")
	page, err := c.ListTransactions(ctx, "wallets-002", nil, 0, "")
	require.NoError(t, err)
	require.Len(t, page.Data, 6)
	require.Equal(t, map[string]string{"wallets/transaction": "true", "wallets/custom_data_why": "topup"}, page.Data[5].Metadata)
}
