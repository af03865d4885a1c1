package handlers_test

import (
	"context"
	"encoding/json"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// observedCredit is the body the wallets service (a0e80ed) sent the ledger
// for POST /wallets/40057e88-aa91-5a6c-b63d-3555adf9d5c7/credit with
// {"amount":{"asset":"USD/2","amount":1000},"metadata":{"why":"topup"},"reference":"ref-c1"}
// (docs/wallets-writes.md, credit-wallet).
const observedCredit = `{"metadata":{"wallets/custom_data_why":"topup","wallets/transaction":"true"},"reference":"ref-c1","script":{"plain":"vars {\n    monetary $amount\n    account $destination\n}\n\nsend $amount (\n    source = {\n        @world\n    }\n    destination = $destination\n)\n","vars":{"amount":"USD/2 1000","destination":"wallets:40057e88aa915a6cb63d3555adf9d5c7:main"}}}`

// observedWalletSources is the same service's body for a credit of 10 to
// wallet 5ed41b0b-df09-4dd9-b9b6-cc07cf5ffbd9 from the main and savings
// balances of the wallet above.
const observedWalletSources = `{"metadata":{"wallets/transaction":"true"},"script":{"plain":"vars {\n    monetary $amount\n    account $destination\n}\n\nsend $amount (\n    source = {\n        @wallets:40057e88aa915a6cb63d3555adf9d5c7:main\n        @wallets:40057e88aa915a6cb63d3555adf9d5c7:savings\n    }\n    destination = $destination\n)\n","vars":{"amount":"USD/2 10","destination":"wallets:5ed41b0bdf094dd9b9b6cc07cf5ffbd9:main"}}}`

// ledgerInput is what the ledger compares of a transaction request (its
// idempotency hash covers the parsed input, not the bytes).
type ledgerInput struct {
	Metadata  map[string]string `json:"metadata"`
	Reference string            `json:"reference"`
	Script    struct {
		Plain string            `json:"plain"`
		Vars  map[string]string `json:"vars"`
	} `json:"script"`
}

func inputOf(t *testing.T, body string) ledgerInput {
	t.Helper()
	var in ledgerInput
	require.NoError(t, json.Unmarshal([]byte(body), &in))
	return in
}

func TestCreditRequestIsTheWalletsServices(t *testing.T) {
	t.Parallel()
	h := &handlers.CreditWallet{LedgerName: "wallets-002"}
	for _, tc := range []struct {
		name     string
		cmd      messages.CreditWallet
		observed string
	}{
		{"from @world", messages.CreditWallet{
			WalletID: "40057e88-aa91-5a6c-b63d-3555adf9d5c7", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(1000)},
			Metadata: map[string]string{"why": "topup"}, Reference: "ref-c1",
		}, observedCredit},
		{"from two balances of another wallet", messages.CreditWallet{
			WalletID: "5ed41b0b-df09-4dd9-b9b6-cc07cf5ffbd9", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(10)},
			Sources: []messages.WalletSubject{
				{Type: messages.SubjectTypeWallet, Identifier: "40057e88-aa91-5a6c-b63d-3555adf9d5c7"},
				{Type: messages.SubjectTypeWallet, Identifier: "40057e88-aa91-5a6c-b63d-3555adf9d5c7", Balance: "savings"},
			},
		}, observedWalletSources},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := h.Request(tc.cmd)
			want := inputOf(t, tc.observed)
			require.Equal(t, want.Script.Plain, req.Script.Plain, "every character of the script counts for the ledger's idempotency")
			require.Equal(t, want.Script.Vars, req.Script.Vars)
			require.Equal(t, want.Metadata, req.Metadata)
			require.Equal(t, want.Reference, req.Reference)
		})
	}
}

func TestCreditOutcomes(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	h := &handlers.CreditWallet{Ledger: l.Client, LedgerName: "wallets-002"}
	credit := func(amount int64) messages.CreditWallet {
		return messages.CreditWallet{WalletID: "w1", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(amount)}}
	}
	event := func(r handlers.Result) (string, any) {
		name, _, body := r.Event()
		return name, body
	}

	r, err := h.Handle(ctx, "k1", credit(100))
	require.NoError(t, err)
	name, body := event(r)
	require.Equal(t, messages.EventWalletCredited, name)
	first := body.(messages.WalletCredited)
	require.False(t, first.Replayed)
	require.Equal(t, "main", first.Balance)

	r, err = h.Handle(ctx, "k1", credit(100))
	require.NoError(t, err)
	_, body = event(r)
	require.True(t, body.(messages.WalletCredited).Replayed, "the same key and command: a replay")
	require.Equal(t, first.TransactionID, body.(messages.WalletCredited).TransactionID)

	r, err = h.Handle(ctx, "k1", credit(101))
	require.NoError(t, err)
	require.Equal(t, messages.CodeKeyReused, r.Code())

	named := credit(5)
	named.Balance = "savings"
	r, err = h.Handle(ctx, "k2", named)
	require.NoError(t, err)
	require.Equal(t, messages.CodeBalanceNotFound, r.Code())
	require.False(t, r.Code().DeadLetters())

	fromEmpty := credit(5)
	fromEmpty.Sources = []messages.WalletSubject{{Type: messages.SubjectTypeWallet, Identifier: "empty"}}
	r, err = h.Handle(ctx, "k3", fromEmpty)
	require.NoError(t, err)
	require.Equal(t, messages.CodeInsufficientFunds, r.Code())

	a, found, err := l.Client.GetAccount(ctx, "wallets-002", "wallets:w1:main")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, "100", a.Volumes["USD/2"].Balance.String(), "credited once")
}

// racedLedger answers the first transaction it lands with the reference
// conflict that an attempt of the same command, still running at the
// ledger's key lookup and committed since, meets at the insert.
type racedLedger struct {
	handlers.TxLedger
	raced bool
}

func (r *racedLedger) CreateTransaction(ctx context.Context, ledger string, req ledgeradapter.TransactionRequest, key string) (ledgeradapter.TransactionResult, error) {
	res, err := r.TxLedger.CreateTransaction(ctx, ledger, req, key)
	if err == nil && !r.raced {
		r.raced = true
		return ledgeradapter.TransactionResult{}, &ledgeradapter.Error{Op: "CreateTransaction", StatusCode: 409, ErrorCode: "CONFLICT", Err: ledgeradapter.ErrReferenceConflict}
	}
	return res, err
}

// A credit or debit whose reference its own earlier attempt took replays;
// one whose reference another command took is refused.
func TestMoneyCommandMeetsItsOwnReference(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	usd := func(n int64) messages.Monetary { return messages.Monetary{Asset: "USD/2", Amount: big.NewInt(n)} }

	credit := messages.CreditWallet{WalletID: "w1", Amount: usd(100), Reference: "ref-c1"}
	r, err := (&handlers.CreditWallet{Ledger: &racedLedger{TxLedger: l.Client}, LedgerName: "wallets-002"}).Handle(ctx, "k1", credit)
	require.NoError(t, err)
	require.Empty(t, r.Code(), "%+v", r)
	_, _, body := r.Event()
	require.True(t, body.(messages.WalletCredited).Replayed, "its own attempt's transaction")

	debit := messages.DebitWallet{WalletID: "w1", Amount: usd(10), Reference: "ref-d1"}
	r, err = (&handlers.DebitWallet{Ledger: &racedLedger{TxLedger: l.Client}, LedgerName: "wallets-002"}).Handle(ctx, "k2", debit)
	require.NoError(t, err)
	require.Empty(t, r.Code(), "%+v", r)
	_, _, body = r.Event()
	require.True(t, body.(messages.WalletDebited).Replayed)

	other := credit
	other.Amount = usd(1)
	r, err = (&handlers.CreditWallet{Ledger: l.Client, LedgerName: "wallets-002"}).Handle(ctx, "k3", other)
	require.NoError(t, err)
	require.Equal(t, messages.CodeLedgerRejected, r.Code(), "another command's reference")

	a, _, err := l.Client.GetAccount(ctx, "wallets-002", "wallets:w1:main")
	require.NoError(t, err)
	require.Equal(t, "90", a.Volumes["USD/2"].Balance.String(), "each applied once")
}
