package handlers

import (
	"context"
	"encoding/json"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Bodies the wallets service (a0e80ed) sent the ledger for hold
// 228b7527-276a-51bc-8c62-c8ecf02566cc of wallet
// 40057e88-aa91-5a6c-b63d-3555adf9d5c7 and hold 871b9bed-… of the same
// wallet (docs/wallets-writes.md): confirm 50, confirm 20 final, and a void
// of a hold made by one posting of 40 from savings.
const (
	observedConfirm      = `{"metadata":{"wallets/transaction":"true"},"script":{"plain":"vars {\n  account $hold\n  account $dest\n  monetary $amount\n}\n\nsend $amount (\n  source = $hold\n  destination = $dest\n)\n","vars":{"amount":"USD/2 50","dest":"world","hold":"wallets:holds:228b7527276a51bc8c62c8ecf02566cc"}}}`
	observedConfirmFinal = `{"metadata":{"wallets/transaction":"true"},"script":{"plain":"vars {\n  account $hold\n  account $dest\n  account $void_destination\n  monetary $amount\n}\n\nsend $amount (\n  source = $hold\n  destination = $dest\n)\nsend [USD/2 *] (\n  source = $hold\n  destination = $void_destination\n)\n","vars":{"amount":"USD/2 20","dest":"world","hold":"wallets:holds:228b7527276a51bc8c62c8ecf02566cc","void_destination":"wallets:40057e88aa915a6cb63d3555adf9d5c7:main"}}}`
	observedVoid         = `{"metadata":{"wallets/transaction":"true"},"script":{"plain":"vars {\n  account $hold\n}\n\nsend [USD/2 *] (\n  source = $hold\n  destination = {\n    max [USD/2 40] to @wallets:40057e88aa915a6cb63d3555adf9d5c7:savings\n    remaining kept\n  }\n)","vars":{"hold":"wallets:holds:871b9bedc162535fa32af0c50a0be6c1"}}}`
)

type observedTx struct {
	Metadata map[string]string `json:"metadata"`
	Script   struct {
		Plain string            `json:"plain"`
		Vars  map[string]string `json:"vars"`
	} `json:"script"`
}

func requireSameTx(t *testing.T, observed string, req ledgeradapter.TransactionRequest) {
	t.Helper()
	var want observedTx
	require.NoError(t, json.Unmarshal([]byte(observed), &want))
	require.Equal(t, want.Script.Plain, req.Script.Plain)
	require.Equal(t, want.Script.Vars, req.Script.Vars)
	require.Equal(t, want.Metadata, req.Metadata)
}

func TestHoldRequestsAreTheWalletsServices(t *testing.T) {
	t.Parallel()
	h := &ConfirmHold{}
	hd := &hold{address: "wallets:holds:228b7527276a51bc8c62c8ecf02566cc", walletID: "40057e88-aa91-5a6c-b63d-3555adf9d5c7", asset: "USD/2",
		destination: messages.WalletSubject{Type: messages.SubjectTypeAccount, Identifier: "world"}}
	requireSameTx(t, observedConfirm, h.Request(hd, big.NewInt(50), false))
	requireSameTx(t, observedConfirmFinal, h.Request(hd, big.NewInt(20), true))
	void := ledgeradapter.TransactionRequest{
		Script: &ledgeradapter.Script{Plain: voidScript("USD/2", []ledgeradapter.Posting{{Source: "wallets:40057e88aa915a6cb63d3555adf9d5c7:savings",
			Destination: "wallets:holds:871b9bedc162535fa32af0c50a0be6c1", Amount: big.NewInt(40), Asset: "USD/2"}}),
			Vars: map[string]string{"hold": "wallets:holds:871b9bedc162535fa32af0c50a0be6c1"}},
		Metadata: transactionMetadata(nil),
	}
	requireSameTx(t, observedVoid, void)
}

// holdsOf starts a ledger where wallet w1 was credited 500 USD/2, then
// debited 100 into a hold under each of keys.
func holdsOf(t *testing.T, keys ...string) (*testutil.Ledger, context.Context) {
	t.Helper()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	usd := func(n int64) messages.Monetary { return messages.Monetary{Asset: "USD/2", Amount: big.NewInt(n)} }
	_, err := (&CreditWallet{Ledger: l.Client, LedgerName: "wallets-002"}).Handle(ctx, "c1", messages.CreditWallet{WalletID: "w1", Amount: usd(500)})
	require.NoError(t, err)
	debit := &DebitWallet{Ledger: l.Client, LedgerName: "wallets-002"}
	for _, k := range keys {
		r, err := debit.Handle(ctx, k, messages.DebitWallet{WalletID: "w1", Amount: usd(100), Pending: true})
		require.NoError(t, err)
		require.Empty(t, r.Code())
	}
	return l, ctx
}

func TestHoldOutcomes(t *testing.T) {
	t.Parallel()
	const ledger = "wallets-002"
	l, ctx := holdsOf(t, "h1", "h2")
	h1, h2 := messages.HoldIDOf("h1"), messages.HoldIDOf("h2")
	balance := func(address string) string {
		a, _, err := l.Client.GetAccount(ctx, ledger, address)
		require.NoError(t, err)
		return a.Volumes["USD/2"].Balance.String()
	}
	confirm := &ConfirmHold{Ledger: l.Client, LedgerName: ledger}
	void := &VoidHold{Ledger: l.Client, LedgerName: ledger}
	code := func(r Result, err error) messages.Code {
		t.Helper()
		require.NoError(t, err)
		return r.Code()
	}
	replayed := func(r Result, err error) bool {
		t.Helper()
		require.NoError(t, err)
		require.Empty(t, r.Code(), r.Reason())
		return r.Replayed()
	}

	require.False(t, replayed(confirm.Handle(ctx, "cf1", messages.ConfirmHold{WalletID: "w1", HoldID: h1, Amount: big.NewInt(30)})))
	require.True(t, replayed(confirm.Handle(ctx, "cf1", messages.ConfirmHold{WalletID: "w1", HoldID: h1, Amount: big.NewInt(30)})), "open: the ledger's hit")
	require.Equal(t, "70", balance(HoldAddress("", h1)))
	require.Equal(t, messages.CodeInsufficientFunds, code(confirm.Handle(ctx, "cf2", messages.ConfirmHold{WalletID: "w1", HoldID: h1, Amount: big.NewInt(71)})))
	require.False(t, replayed(confirm.Handle(ctx, "cf3", messages.ConfirmHold{WalletID: "w1", HoldID: h1, Amount: big.NewInt(20), Final: true})))
	require.Equal(t, "0", balance(HoldAddress("", h1)), "final: the rest goes back")
	require.Equal(t, "350", balance("wallets:w1:main"), "500 - 2×100 held + 50 back")
	require.True(t, replayed(confirm.Handle(ctx, "cf3", messages.ConfirmHold{WalletID: "w1", HoldID: h1, Amount: big.NewInt(20), Final: true})),
		"closed, yet this very command: a replay, not HOLD_CLOSED")
	require.Equal(t, messages.CodeHoldClosed, code(confirm.Handle(ctx, "cf4", messages.ConfirmHold{WalletID: "w1", HoldID: h1, Amount: big.NewInt(5)})))
	require.Equal(t, messages.CodeHoldClosed, code(confirm.Handle(ctx, "cf5", messages.ConfirmHold{WalletID: "w1", HoldID: h1})))
	require.Equal(t, messages.CodeHoldNotFound, code(confirm.Handle(ctx, "cf6", messages.ConfirmHold{WalletID: "w1", HoldID: messages.HoldIDOf("nope")})))
	require.Equal(t, messages.CodeInvalidCommand, code(confirm.Handle(ctx, "cf7", messages.ConfirmHold{WalletID: "w2", HoldID: h2})))

	require.False(t, replayed(void.Handle(ctx, "v1", messages.VoidHold{WalletID: "w1", HoldID: h2})))
	require.Equal(t, "0", balance(HoldAddress("", h2)))
	require.Equal(t, "450", balance("wallets:w1:main"))
	require.True(t, replayed(void.Handle(ctx, "v1", messages.VoidHold{WalletID: "w1", HoldID: h2})), "closed by this very void: a replay")
	require.Equal(t, messages.CodeHoldClosed, code(void.Handle(ctx, "v2", messages.VoidHold{WalletID: "w1", HoldID: h2})))
	require.Equal(t, messages.CodeHoldNotFound, code(void.Handle(ctx, "v3", messages.VoidHold{WalletID: "w1", HoldID: messages.HoldIDOf("nope")})))
	require.Equal(t, "450", balance("wallets:w1:main"), "no replay wrote twice")
}

// A confirm of all that is left replays when it is this very command that
// emptied the hold (its redelivery after its write landed), though what was
// left is gone; another command's confirm of all is HOLD_CLOSED, its key's
// own earlier confirm of a part included.
func TestConfirmAllReplays(t *testing.T) {
	t.Parallel()
	const ledger = "wallets-002"
	l, ctx := holdsOf(t, "h1", "h2")
	h1, h2 := messages.HoldIDOf("h1"), messages.HoldIDOf("h2")
	confirm := &ConfirmHold{Ledger: l.Client, LedgerName: ledger}
	settled := func(r Result, err error) messages.HoldSettled {
		t.Helper()
		require.NoError(t, err)
		require.Empty(t, r.Code(), r.Reason())
		_, _, body := r.Event()
		return body.(messages.HoldSettled)
	}

	part := settled(confirm.Handle(ctx, "p1", messages.ConfirmHold{WalletID: "w1", HoldID: h1, Amount: big.NewInt(30)}))
	all := settled(confirm.Handle(ctx, "all", messages.ConfirmHold{WalletID: "w1", HoldID: h1}))
	require.False(t, all.Replayed)
	require.Equal(t, "70", all.Amount.String())

	again := settled(confirm.Handle(ctx, "all", messages.ConfirmHold{WalletID: "w1", HoldID: h1}))
	require.True(t, again.Replayed, "this very command emptied the hold")
	require.Equal(t, all.TransactionID, again.TransactionID)
	require.Equal(t, "70", again.Amount.String(), "what it confirmed then")
	require.NotEqual(t, part.TransactionID, again.TransactionID)

	for _, k := range []string{"other", "p1"} {
		r, err := confirm.Handle(ctx, k, messages.ConfirmHold{WalletID: "w1", HoldID: h1})
		require.NoError(t, err)
		require.Equal(t, messages.CodeHoldClosed, r.Code(), "%s did not empty the hold", k)
	}

	// A confirm of a part that voided the rest emptied the hold, but not
	// as a confirm of all would have: under its key, a confirm of all is
	// another command.
	settled(confirm.Handle(ctx, "f1", messages.ConfirmHold{WalletID: "w1", HoldID: h2, Amount: big.NewInt(30), Final: true}))
	for _, final := range []bool{true, false} {
		r, err := confirm.Handle(ctx, "f1", messages.ConfirmHold{WalletID: "w1", HoldID: h2, Final: final})
		require.NoError(t, err)
		require.Equal(t, messages.CodeHoldClosed, r.Code())
	}
	a, _, err := l.Client.GetAccount(ctx, ledger, "world")
	require.NoError(t, err)
	require.Equal(t, "130", a.Volumes["USD/2"].Input.String(), "confirmed once each: 30 and 70, then 30, to the world")
}

// zeroVoidFirst lists, before the transactions out of a hold, a void of
// nothing (a posting of zero out of the hold): v2.4.12 commits one when a
// void read the hold before a confirm emptied it and committed after (the
// embedded ledger refuses it, NO_POSTINGS).
type zeroVoidFirst struct {
	HoldLedger
	zero ledgeradapter.Transaction
}

func (l zeroVoidFirst) ListTransactions(ctx context.Context, ledger string, filter map[string]any, pageSize int, cursor string) (ledgeradapter.TransactionsPage, error) {
	page, err := l.HoldLedger.ListTransactions(ctx, ledger, filter, pageSize, cursor)
	if err == nil && cursor == "" {
		page.Data = append([]ledgeradapter.Transaction{l.zero}, page.Data...)
	}
	return page, err
}

// A void of nothing committed after the confirm of all that emptied the
// hold does not hide it: the confirm's redelivery still replays.
func TestConfirmAllReplaysBehindAVoidOfNothing(t *testing.T) {
	t.Parallel()
	l, ctx := holdsOf(t, "h1")
	h1 := messages.HoldIDOf("h1")
	cmd := messages.ConfirmHold{WalletID: "w1", HoldID: h1}
	r, err := (&ConfirmHold{Ledger: l.Client, LedgerName: "wallets-002"}).Handle(ctx, "all", cmd)
	require.NoError(t, err)
	require.Empty(t, r.Code())
	hold := HoldAddress("", h1)
	zero := ledgeradapter.Transaction{ID: 99,
		Postings:          []ledgeradapter.Posting{{Source: hold, Destination: AccountAddress("", "w1", messages.MainBalance), Asset: "USD/2", Amount: new(big.Int)}},
		PostCommitVolumes: map[string]ledgeradapter.Volumes{hold: {"USD/2": {Input: big.NewInt(100), Output: big.NewInt(100), Balance: new(big.Int)}}}}
	r, err = (&ConfirmHold{Ledger: zeroVoidFirst{HoldLedger: l.Client, zero: zero}, LedgerName: "wallets-002"}).Handle(ctx, "all", cmd)
	require.NoError(t, err)
	require.Empty(t, r.Code(), r.Reason())
	require.True(t, r.Replayed())
}
