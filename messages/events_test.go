package messages_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
)

// TestWireNames pins every name SPEC §3 fixes: renaming a constant must fail
// here, not in production.
func TestWireNames(t *testing.T) {
	t.Parallel()

	// The consumer takes every kind (SPEC §7).
	require.Equal(t, messages.SubjectCommands, messages.SubjectConsumerFilter)
	// Keyed by the constants, so two constants sharing a value do not compile.
	pinned := map[string]string{
		messages.StreamCommands:            "WALLETS_COMMANDS",
		messages.StreamEvents:              "WALLETS_EVENTS",
		messages.StreamDLQ:                 "WALLETS_DLQ",
		messages.ConsumerName:              "wallets-worker",
		messages.SubjectCommands:           "wallets.commands.>",
		messages.SubjectEvents:             "wallets.events.>",
		messages.SubjectDLQ:                "wallets.dlq.>",
		messages.SubjectBalanceCreatedAll:  "wallets.events.balance-created.*",
		messages.SubjectBalanceRejectedAll: "wallets.events.balance-create-rejected.*",
		messages.UnknownWallet:             "_",
		messages.HeaderMsgID:               "Nats-Msg-Id",
		messages.HeaderCommandKey:          "Wallets-Command-Key",
		messages.HeaderCommandSeq:          "Wallets-Command-Seq",
		messages.HeaderDLQCode:             "Wallets-Dlq-Code",
		messages.HeaderDLQReason:           "Wallets-Dlq-Reason",
		messages.HeaderOriginalSubject:     "Wallets-Original-Subject",
		messages.HeaderOriginalSeq:         "Wallets-Original-Seq",
		messages.HeaderDeliveries:          "Wallets-Deliveries",
	}
	for got, want := range pinned {
		require.Equal(t, want, got)
	}

	codes := map[messages.Code]string{
		messages.CodeAlreadyExists:    "ALREADY_EXISTS",
		messages.CodeKeyReused:        "KEY_REUSED",
		messages.CodeInvalidCommand:   "INVALID_COMMAND",
		messages.CodeLedgerRejected:   "LEDGER_REJECTED",
		messages.CodeRetriesExhausted: "RETRIES_EXHAUSTED",
	}
	for got, want := range codes {
		require.Equal(t, want, string(got))
	}
}

func TestCode_DeadLetters(t *testing.T) {
	t.Parallel()

	tests := []struct {
		code messages.Code
		want bool
	}{
		{messages.CodeInvalidCommand, true},
		{messages.CodeLedgerRejected, true},
		{messages.CodeRetriesExhausted, true},
		{messages.CodeAlreadyExists, false},
		{messages.CodeKeyReused, false},
		{"", false},
		{"invalid_command", false},
	}
	for _, tt := range tests {
		t.Run(string(tt.code), func(t *testing.T) {
			t.Parallel()

			require.Equal(t, tt.want, tt.code.DeadLetters())
		})
	}
}

func TestSubjects(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		got  string
		want string
	}{
		{"command", messages.CreateBalanceSubject("w1"), "wallets.commands.create-balance.w1"},
		{"created", messages.BalanceCreatedSubject("w-1_A"), "wallets.events.balance-created.w-1_A"},
		{"created, empty wallet", messages.BalanceCreatedSubject(""), "wallets.events.balance-created._"},
		{"created, dotted wallet", messages.BalanceCreatedSubject("a.b"), "wallets.events.balance-created._"},
		{"created, wildcard wallet", messages.BalanceCreatedSubject(">"), "wallets.events.balance-created._"},
		{"created, non-ASCII wallet", messages.BalanceCreatedSubject("é"), "wallets.events.balance-created._"},
		{"rejected", messages.BalanceCreateRejectedSubject("w1"), "wallets.events.balance-create-rejected.w1"},
		{"rejected, wildcard wallet", messages.BalanceCreateRejectedSubject("*"), "wallets.events.balance-create-rejected._"},
		{"rejected, space in wallet", messages.BalanceCreateRejectedSubject("a b"), "wallets.events.balance-create-rejected._"},
		{"dead letter", messages.DLQSubject("w1"), "wallets.dlq.create-balance.w1"},
		{"dead letter, empty wallet", messages.DLQSubject(""), "wallets.dlq.create-balance._"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			require.Equal(t, tt.want, tt.got)
		})
	}
}

func TestWalletFromSubject(t *testing.T) {
	t.Parallel()

	tests := []struct {
		subject string
		want    string
	}{
		{"wallets.commands.create-balance.w1", "w1"},
		{"wallets.events.balance-created.w-1", "w-1"},
		{"wallets.events.balance-create-rejected.W_2", "W_2"},
		{"wallets.dlq.create-balance.w3", "w3"},
		{"wallets.commands.create-balance.", "_"},
		{"wallets.commands.create-balance", "_"},
		{"wallets.commands.create-balance.a.b", "_"},
		{"wallets.commands.create-balance.*", "_"},
		{"wallets.commands.create-wallet.w1", "w1"},
		{"wallets.events.other.w1", "w1"},
		{"wallets.other.create-balance.w1", "_"},
		{"wallets.commands..w1", "_"},
		{"", "_"},
		{"w1", "_"},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			t.Parallel()

			require.Equal(t, tt.want, messages.WalletFromSubject(tt.subject))
		})
	}

	t.Run("inverse of the builders", func(t *testing.T) {
		t.Parallel()

		for _, build := range []func(string) string{
			messages.CreateBalanceSubject, messages.BalanceCreatedSubject,
			messages.BalanceCreateRejectedSubject, messages.DLQSubject,
		} {
			require.Equal(t, "w-9", messages.WalletFromSubject(build("w-9")))
		}
	})
}

func TestEventMsgID(t *testing.T) {
	t.Parallel()

	require.Equal(t, "k1:42", messages.EventMsgID("k1", 42))
	require.Equal(t, "a:b:0", messages.EventMsgID("a:b", 0))
	require.Equal(t, "k:18446744073709551615", messages.EventMsgID("k", 1<<64-1))
	require.NotEqual(t, messages.EventMsgID("k", 1), messages.EventMsgID("k", 2))
}

// TestEventBodies pins the JSON of both events (SPEC §3).
func TestEventBodies(t *testing.T) {
	t.Parallel()

	at := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		event any
		want  string
	}{
		{
			name: "created",
			event: messages.BalanceCreated{
				Key: "k1", WalletID: "w1",
				Balance: messages.Balance{Name: "savings", Priority: 2, ExpiresAt: &at},
				Ledger:  "wallets-002", Account: "wallets:w1:savings", Replayed: true,
			},
			want: `{"key":"k1","walletID":"w1","balance":{"name":"savings","priority":2,"expiresAt":"2027-01-01T00:00:00Z"},` +
				`"ledger":"wallets-002","account":"wallets:w1:savings","replayed":true}`,
		},
		{
			name: "created, never expires, not replayed",
			event: messages.BalanceCreated{
				Key: "k1", WalletID: "w1", Balance: messages.Balance{Name: "n"},
				Ledger: "l", Account: "wallets:w1:n",
			},
			want: `{"key":"k1","walletID":"w1","balance":{"name":"n","priority":0,"expiresAt":null},` +
				`"ledger":"l","account":"wallets:w1:n","replayed":false}`,
		},
		{
			name: "rejected",
			event: messages.BalanceCreateRejected{
				Key: "k1", WalletID: "w1", Name: "n", Code: messages.CodeKeyReused, Message: "m",
			},
			want: `{"key":"k1","walletID":"w1","name":"n","code":"KEY_REUSED","message":"m"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			got, err := json.Marshal(tt.event)
			require.NoError(t, err)
			require.JSONEq(t, tt.want, string(got))
		})
	}

	t.Run("created decodes back", func(t *testing.T) {
		t.Parallel()

		var ev messages.BalanceCreated
		require.NoError(t, json.Unmarshal([]byte(tests[0].want), &ev))
		require.Equal(t, tests[0].event.(messages.BalanceCreated).Key, ev.Key)
		require.True(t, ev.Balance.Equal(tests[0].event.(messages.BalanceCreated).Balance))
	})
}
