package handlers_test

import (
	"context"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Bodies the wallets service (a0e80ed) sent the ledger for debits of wallet
// 40057e88-aa91-5a6c-b63d-3555adf9d5c7 (docs/wallets-writes.md,
// debit-wallet): k-d1 an immediate debit of 100 with metadata, description
// and reference; k-d2 50 from ["savings","main"] to another wallet; k-h1 a
// pending debit of 200 with metadata and a description.
const (
	observedDebit      = `{"metadata":{"wallets/custom_data_m":"v","wallets/transaction":"true"},"reference":"ref-d1","script":{"plain":"vars {\n    monetary $amount\n    account $destination\n}\n\nsend $amount (\n    source = {\n        @wallets:40057e88aa915a6cb63d3555adf9d5c7:main\n    }\n    destination = $destination\n)","vars":{"amount":"USD/2 100","destination":"world"}}}`
	observedDebitNamed = `{"metadata":{"wallets/transaction":"true"},"script":{"plain":"vars {\n    monetary $amount\n    account $destination\n}\n\nsend $amount (\n    source = {\n        @wallets:40057e88aa915a6cb63d3555adf9d5c7:savings\n        @wallets:40057e88aa915a6cb63d3555adf9d5c7:main\n    }\n    destination = $destination\n)","vars":{"amount":"USD/2 50","destination":"wallets:5ed41b0bdf094dd9b9b6cc07cf5ffbd9:main"}}}`
	observedHold       = `{"metadata":{"wallets/custom_data_order":"o-1","wallets/custom_data_q":"a\"b\\c\nd","wallets/transaction":"true"},"script":{"plain":"vars {\n    monetary $amount\n    account $destination\n}\n\nsend $amount (\n    source = {\n        @wallets:40057e88aa915a6cb63d3555adf9d5c7:main\n    }\n    destination = $destination\n)\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"destination\", \"{\\\"type\\\":\\\"account\\\",\\\"value\\\":\\\"world\\\"}\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"void_destination\", \"{\\\"type\\\":\\\"account\\\",\\\"value\\\":\\\"wallets:40057e88aa915a6cb63d3555adf9d5c7:main\\\"}\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/custom_data_order\", \"o-1\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/custom_data_q\", \"a\\\"b\\\\c\\nd\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/holds/asset\", \"USD/2\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/holds/description\", \"pre-auth\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/holds/id\", \"228b7527-276a-51bc-8c62-c8ecf02566cc\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/holds/subject\", \"{\\\"balance\\\":\\\"\\\",\\\"identifier\\\":\\\"world\\\",\\\"type\\\":\\\"ACCOUNT\\\"}\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/holds/wallet_id\", \"40057e88-aa91-5a6c-b63d-3555adf9d5c7\")\nset_account_meta(@wallets:holds:228b7527276a51bc8c62c8ecf02566cc, \"wallets/spec/type\", \"wallets.hold\")","vars":{"amount":"USD/2 200","destination":"wallets:holds:228b7527276a51bc8c62c8ecf02566cc"}}}`
)

const walletK1 = "40057e88-aa91-5a6c-b63d-3555adf9d5c7"

func TestDebitRequestIsTheWalletsServices(t *testing.T) {
	t.Parallel()
	h := &handlers.DebitWallet{LedgerName: "wallets-002"}
	main := "wallets:40057e88aa915a6cb63d3555adf9d5c7:main"
	usd := func(n int64) messages.Monetary { return messages.Monetary{Asset: "USD/2", Amount: big.NewInt(n)} }
	for _, tc := range []struct {
		name, key string
		cmd       messages.DebitWallet
		sources   []string
		observed  string
	}{
		{"immediate", "k-d1", messages.DebitWallet{WalletID: walletK1, Amount: usd(100), Metadata: map[string]string{"m": "v"},
			Description: "coffee", Reference: "ref-d1"}, []string{main}, observedDebit},
		{"named balances to a wallet", "k-d2", messages.DebitWallet{WalletID: walletK1, Amount: usd(50), Balances: []string{"savings", "main"},
			Destination: &messages.WalletSubject{Type: messages.SubjectTypeWallet, Identifier: "5ed41b0b-df09-4dd9-b9b6-cc07cf5ffbd9"}},
			[]string{"wallets:40057e88aa915a6cb63d3555adf9d5c7:savings", main}, observedDebitNamed},
		{"pending", "k-h1", messages.DebitWallet{WalletID: walletK1, Amount: usd(200), Pending: true,
			Metadata: map[string]string{"order": "o-1", "q": "a\"b\\c\nd"}, Description: "pre-auth"}, []string{main}, observedHold},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, hold := h.Request(tc.key, tc.cmd, tc.sources)
			want := inputOf(t, tc.observed)
			require.Equal(t, want.Script.Plain, req.Script.Plain, "every character of the script counts for the ledger's idempotency")
			require.Equal(t, want.Script.Vars, req.Script.Vars)
			require.Equal(t, want.Metadata, req.Metadata)
			require.Equal(t, want.Reference, req.Reference)
			require.Equal(t, tc.cmd.Pending, hold != nil)
		})
	}
}

func TestDebitOutcomes(t *testing.T) {
	t.Parallel()
	l := testutil.StartLedger(t, testutil.LedgerOptions{})
	ctx := context.Background()
	require.NoError(t, l.Client.EnsureLedger(ctx, "wallets-002"))
	credit := &handlers.CreditWallet{Ledger: l.Client, LedgerName: "wallets-002"}
	_, err := credit.Handle(ctx, "c1", messages.CreditWallet{WalletID: "w1", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(100)}})
	require.NoError(t, err)
	h := &handlers.DebitWallet{Ledger: l.Client, LedgerName: "wallets-002"}
	debit := func(n int64) messages.DebitWallet {
		return messages.DebitWallet{WalletID: "w1", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(n)}}
	}
	balance := func(address string) string {
		a, _, err := l.Client.GetAccount(ctx, "wallets-002", address)
		require.NoError(t, err)
		return a.Volumes["USD/2"].Balance.String()
	}

	r, err := h.Handle(ctx, "d1", debit(30))
	require.NoError(t, err)
	require.Empty(t, r.Code())
	r, err = h.Handle(ctx, "d1", debit(30))
	require.NoError(t, err)
	require.True(t, r.Replayed())
	require.Equal(t, "70", balance("wallets:w1:main"), "debited once")

	r, err = h.Handle(ctx, "d1", debit(31))
	require.NoError(t, err)
	require.Equal(t, messages.CodeKeyReused, r.Code())
	r, err = h.Handle(ctx, "d2", debit(71))
	require.NoError(t, err)
	require.Equal(t, messages.CodeInsufficientFunds, r.Code())

	pending := debit(20)
	pending.Pending = true
	pending.Description = "pre-auth"
	r, err = h.Handle(ctx, "h1", pending)
	require.NoError(t, err)
	_, _, body := r.Event()
	hold := body.(messages.WalletDebited).Hold
	require.NotNil(t, hold)
	require.Equal(t, messages.HoldIDOf("h1"), hold.ID)
	require.Equal(t, "20", balance(handlers.HoldAddress("", hold.ID)))
	require.Equal(t, "50", balance("wallets:w1:main"))
	a, _, err := l.Client.GetAccount(ctx, "wallets-002", handlers.HoldAddress("", hold.ID))
	require.NoError(t, err)
	require.Equal(t, "wallets.hold", a.Metadata["wallets/spec/type"])
	require.Equal(t, `{"balance":"","identifier":"world","type":"ACCOUNT"}`, a.Metadata["wallets/holds/subject"])
	require.Equal(t, "pre-auth", a.Metadata["wallets/holds/description"])

	all := debit(1)
	all.Balances = []string{"*"}
	r, err = h.Handle(ctx, "d3", all)
	require.NoError(t, err)
	require.Equal(t, messages.CodeNotIdempotent, r.Code())
	named := debit(1)
	named.Balances = []string{"nope"}
	r, err = h.Handle(ctx, "d4", named)
	require.NoError(t, err)
	require.Equal(t, messages.CodeBalanceNotFound, r.Code())

	// An expired balance is skipped; one that expires later cannot be
	// debited idempotently.
	past, future := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	cb := &handlers.CreateBalance{Ledger: l.Client, LedgerName: "wallets-002"}
	_, err = cb.Handle(ctx, "b1", messages.CreateBalance{WalletID: "w1", Name: "old", ExpiresAt: &past})
	require.NoError(t, err)
	_, err = cb.Handle(ctx, "b2", messages.CreateBalance{WalletID: "w1", Name: "later", ExpiresAt: &future})
	require.NoError(t, err)
	// main as a wallet's main balance, as a created wallet has it
	_, err = l.Client.AddAccountMetadata(ctx, "wallets-002", "wallets:w1:main",
		map[string]string{"wallets/balances": "true", "wallets/balances/name": "main", "wallets/id": "w1"}, "")
	require.NoError(t, err)
	skip := debit(5)
	skip.Balances = []string{"old", "main"}
	r, err = h.Handle(ctx, "d5", skip)
	require.NoError(t, err)
	require.Empty(t, r.Code(), "%v", r.Reason())
	require.Equal(t, "45", balance("wallets:w1:main"))
	onlyOld := debit(5)
	onlyOld.Balances = []string{"old"}
	r, err = h.Handle(ctx, "d6", onlyOld)
	require.NoError(t, err)
	require.Equal(t, messages.CodeInsufficientFunds, r.Code())
	later := debit(5)
	later.Balances = []string{"later"}
	r, err = h.Handle(ctx, "d7", later)
	require.NoError(t, err)
	require.Equal(t, messages.CodeNotIdempotent, r.Code())
}

// A pending debit to an ACCOUNT that names a balance, which the wallets
// service takes: the money goes to the account itself, and the hold keeps
// the balance in its subject, as the service's does.
func TestPendingDebitToAnAccountWithABalance(t *testing.T) {
	t.Parallel()
	h := &handlers.DebitWallet{LedgerName: "wallets-002"}
	main := "wallets:40057e88aa915a6cb63d3555adf9d5c7:main"
	cmd := messages.DebitWallet{WalletID: walletK1, Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(5)}, Pending: true,
		Destination: &messages.WalletSubject{Type: messages.SubjectTypeAccount, Identifier: "bank:out", Balance: "x"}}
	req, hold := h.Request("k-ab", cmd, []string{main})
	require.NotNil(t, hold)
	meta := map[string]string{} // the hold's metadata the script sets, unquoted
	for _, line := range strings.Split(req.Script.Plain, "\n") {
		rest, ok := strings.CutPrefix(line, "set_account_meta(")
		if parts := strings.SplitN(rest, ", ", 3); ok && len(parts) == 3 {
			v := strings.TrimSuffix(strings.TrimPrefix(parts[2], `"`), `")`)
			meta[strings.Trim(parts[1], `"`)] = strings.ReplaceAll(v, `\"`, `"`)
		}
	}
	require.Equal(t, `{"type":"account","value":"bank:out"}`, meta["destination"], "the account itself is the hold's destination")
	require.Equal(t, `{"balance":"x","identifier":"bank:out","type":"ACCOUNT"}`, meta["wallets/holds/subject"], "the hold's subject keeps the balance")
}
