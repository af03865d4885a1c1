package producer_test

import (
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

// TestCommandConstructors: each constructor builds the subject the worker
// reads and refuses what the worker's decoder refuses.
func TestCommandConstructors(t *testing.T) {
	c, err := producer.CreateWallet("k1", messages.CreateWallet{Name: "alice"})
	require.NoError(t, err)
	require.Equal(t, "wallets.commands.create-wallet."+messages.WalletIDOf("k1"), c.Subject())
	require.JSONEq(t, `{"name":"alice"}`, string(c.Body))

	c, err = producer.CreditWallet(messages.CreditWallet{WalletID: "w1", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(5)}})
	require.NoError(t, err)
	require.Equal(t, "wallets.commands.credit-wallet.w1", c.Subject())
	_, err = producer.CreditWallet(messages.CreditWallet{WalletID: "w1", Amount: messages.Monetary{Asset: "USD/2", Amount: big.NewInt(-5)}})
	var ve *messages.ValidationError
	require.ErrorAs(t, err, &ve)

	_, err = producer.DebitWallet(messages.DebitWallet{WalletID: "w1", Amount: messages.Monetary{Asset: "not an asset", Amount: big.NewInt(5)}})
	require.ErrorAs(t, err, &ve)
	c, err = producer.VoidHold(messages.VoidHold{WalletID: "w1", HoldID: messages.HoldIDOf("h")})
	require.NoError(t, err)
	require.Equal(t, "wallets.commands.void-hold.w1", c.Subject())
	_, err = producer.ConfirmHold(messages.ConfirmHold{WalletID: "w1"})
	require.ErrorAs(t, err, &ve, "a hold ID is required")
	_, err = producer.UpdateWallet(messages.UpdateWallet{WalletID: "w.1", Metadata: map[string]string{"a": "b"}})
	require.Error(t, err, "a wallet that is not one subject token")

	_, err = producer.NewCommand("transfer", "w1", []byte(`{}`), "k")
	require.ErrorContains(t, err, "unknown command kind")
	c, err = producer.NewCommand(messages.KindUpdateWallet, "", []byte(`{"walletID":"w2","metadata":{"a":"b"}}`), "k")
	require.NoError(t, err)
	require.Equal(t, "w2", c.WalletID, "the wallet taken from the body")
}
