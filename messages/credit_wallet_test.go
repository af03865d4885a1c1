package messages_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
)

func TestDecodeCreditWallet(t *testing.T) {
	t.Parallel()
	subject := messages.CreditWalletSubject("w1")
	c, err := messages.DecodeCreditWallet(subject, []byte(`{"walletID":"w1","amount":{"asset":"USD/2","amount":100000000000000000000000},
		"balance":"savings","sources":[{"type":"WALLET","identifier":"w2"},{"type":"ACCOUNT","identifier":"bank:in-flow"}],
		"metadata":{"why":"topup"},"reference":"r1","timestamp":"2026-01-02T03:04:05.123456789+02:00"}`))
	require.NoError(t, err)
	require.Equal(t, "100000000000000000000000", c.Amount.Amount.String(), "amounts beyond 2^64")
	require.Equal(t, "savings", c.Balance)
	require.Len(t, c.Sources, 2)
	require.Equal(t, "2026-01-02T01:04:05.123456789Z", c.Timestamp.Format("2006-01-02T15:04:05.999999999Z07:00"))

	withBalance, err := messages.DecodeCreditWallet(subject, []byte(`{"walletID":"w1","amount":{"asset":"USD","amount":1},
		"sources":[{"type":"ACCOUNT","identifier":"bank:in","balance":"any thing"}]}`))
	require.NoError(t, err, "an ACCOUNT with a balance, which the wallets service takes and ignores")
	require.Equal(t, "any thing", withBalance.Sources[0].Balance)

	zero, err := messages.DecodeCreditWallet(subject, []byte(`{"walletID":"w1","amount":{"asset":"USD","amount":0}}`))
	require.NoError(t, err, "zero, as the wallets service allows it")
	require.Zero(t, zero.Amount.Amount.Sign())

	for name, body := range map[string]string{
		"not JSON":             `{`,
		"unknown field":        `{"walletID":"w1","amount":{"asset":"USD","amount":1},"colour":"red"}`,
		"field in other case":  `{"WalletID":"w1","amount":{"asset":"USD","amount":1}}`,
		"duplicated field":     `{"walletID":"w1","walletID":"w1","amount":{"asset":"USD","amount":1}}`,
		"no amount":            `{"walletID":"w1"}`,
		"negative amount":      `{"walletID":"w1","amount":{"asset":"USD","amount":-1}}`,
		"fractional amount":    `{"walletID":"w1","amount":{"asset":"USD","amount":1.5}}`,
		"amount as a string":   `{"walletID":"w1","amount":{"asset":"USD","amount":"1"}}`,
		"bad asset":            `{"walletID":"w1","amount":{"asset":"usd","amount":1}}`,
		"unknown amount field": `{"walletID":"w1","amount":{"asset":"USD","amount":1,"scale":2}}`,
		"other wallet":         `{"walletID":"w2","amount":{"asset":"USD","amount":1}}`,
		"bad balance":          `{"walletID":"w1","amount":{"asset":"USD","amount":1},"balance":"a:b"}`,
		"unknown source type":  `{"walletID":"w1","amount":{"asset":"USD","amount":1},"sources":[{"type":"BANK","identifier":"x"}]}`,
		"bad account source":   `{"walletID":"w1","amount":{"asset":"USD","amount":1},"sources":[{"type":"ACCOUNT","identifier":"a::b"}]}`,
		"bad timestamp":        `{"walletID":"w1","amount":{"asset":"USD","amount":1},"timestamp":"yesterday"}`,
		"metadata not strings": `{"walletID":"w1","amount":{"asset":"USD","amount":1},"metadata":{"n":1}}`,
	} {
		_, err := messages.DecodeCreditWallet(subject, []byte(body))
		require.Error(t, err, name)
		require.True(t, messages.IsValidationError(err), "%s: %v", name, err)
	}
	_, err = messages.DecodeCreditWallet("wallets.commands.create-balance.w1", []byte(`{"walletID":"w1","amount":{"asset":"USD","amount":1}}`))
	require.True(t, messages.IsValidationError(err), "another kind's subject")
}

func TestDecodeCreateWallet(t *testing.T) {
	t.Parallel()
	subject := messages.CreateWalletSubject("k1")
	require.Equal(t, "wallets.commands.create-wallet."+messages.WalletIDOf("k1"), subject)
	c, err := messages.DecodeCreateWallet(subject, []byte(`{"name":"alice","metadata":{"tier":"gold"}}`))
	require.NoError(t, err)
	require.Equal(t, messages.WalletIDOf("k1"), c.WalletID)
	require.Equal(t, "alice", c.Name)
	_, err = messages.DecodeCreateWallet(subject, []byte(`{}`))
	require.NoError(t, err, "name and metadata are optional, as in the wallets service")
	for name, body := range map[string]string{
		"unknown field":   `{"name":"a","walletID":"x"}`,
		"name not string": `{"name":1}`,
		"metadata values": `{"metadata":{"a":1}}`,
		"not an object":   `[]`,
	} {
		_, err := messages.DecodeCreateWallet(subject, []byte(body))
		require.True(t, messages.IsValidationError(err), "%s: %v", name, err)
	}
}

func TestDecodeHoldCommands(t *testing.T) {
	t.Parallel()
	c, err := messages.DecodeConfirmHold(messages.ConfirmHoldSubject("w1"), []byte(`{"holdID":"h-1","amount":100000000000000000000000,"final":true}`))
	require.NoError(t, err)
	require.Equal(t, "w1", c.WalletID)
	require.Equal(t, "100000000000000000000000", c.Amount.String())
	require.True(t, c.Final)
	c, err = messages.DecodeConfirmHold(messages.ConfirmHoldSubject("w1"), []byte(`{"holdID":"h-1"}`))
	require.NoError(t, err)
	require.Nil(t, c.Amount, "no amount: all that is left")
	v, err := messages.DecodeVoidHold(messages.VoidHoldSubject("w1"), []byte(`{"holdID":"h-1"}`))
	require.NoError(t, err)
	require.Equal(t, "h-1", v.HoldID)
	for name, body := range map[string]string{
		"no hold":         `{}`,
		"negative amount": `{"holdID":"h","amount":-1}`,
		"fraction":        `{"holdID":"h","amount":1.5}`,
		"unknown field":   `{"holdID":"h","walletID":"w1"}`,
	} {
		_, err := messages.DecodeConfirmHold(messages.ConfirmHoldSubject("w1"), []byte(body))
		require.True(t, messages.IsValidationError(err), "%s: %v", name, err)
	}
	_, err = messages.DecodeVoidHold(messages.VoidHoldSubject("w1"), []byte(`{"holdID":"h","amount":1}`))
	require.True(t, messages.IsValidationError(err), "a void takes no amount")
}

func TestDecodeUpdateWallet(t *testing.T) {
	t.Parallel()
	c, err := messages.DecodeUpdateWallet(messages.UpdateWalletSubject("w1"), []byte(`{"walletID":"w1","metadata":{"a":"b"}}`))
	require.NoError(t, err)
	require.Equal(t, map[string]string{"a": "b"}, c.Metadata)
	for name, body := range map[string]string{
		"other wallet":  `{"walletID":"w2","metadata":{}}`,
		"no wallet":     `{"metadata":{}}`,
		"bad metadata":  `{"walletID":"w1","metadata":{"a":1}}`,
		"unknown field": `{"walletID":"w1","name":"x"}`,
	} {
		_, err := messages.DecodeUpdateWallet(messages.UpdateWalletSubject("w1"), []byte(body))
		require.True(t, messages.IsValidationError(err), "%s: %v", name, err)
	}
}

// An optional string sent as null is absent, as the wallets service's JSON
// decoding reads it; a required one sent as null is still refused.
func TestOptionalStringsMayBeNull(t *testing.T) {
	t.Parallel()
	credit, err := messages.DecodeCreditWallet(messages.CreditWalletSubject("w1"),
		[]byte(`{"walletID":"w1","amount":{"asset":"USD","amount":1},"balance":null,"reference":null}`))
	require.NoError(t, err)
	require.Empty(t, credit.Balance)
	require.Empty(t, credit.Reference)

	debit, err := messages.DecodeDebitWallet(messages.DebitWalletSubject("w1"),
		[]byte(`{"walletID":"w1","amount":{"asset":"USD","amount":1},"description":null,"reference":null}`))
	require.NoError(t, err)
	require.Empty(t, debit.Description)
	require.Empty(t, debit.Reference)

	wallet, err := messages.DecodeCreateWallet(messages.CreateWalletSubject("k1"), []byte(`{"name":null}`))
	require.NoError(t, err)
	require.Empty(t, wallet.Name)

	_, err = messages.DecodeCreditWallet(messages.CreditWalletSubject("w1"), []byte(`{"walletID":null,"amount":{"asset":"USD","amount":1}}`))
	require.True(t, messages.IsValidationError(err), "walletID is required: %v", err)
	_, err = messages.DecodeDebitWallet(messages.DebitWalletSubject("w1"), []byte(`{"walletID":null,"amount":{"asset":"USD","amount":1}}`))
	require.True(t, messages.IsValidationError(err), "walletID is required: %v", err)
}
