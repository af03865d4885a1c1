package handlers_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/messages"
)

// walletsBalance is how the wallets service decodes a replay marker (its
// Balance type: name omitempty, expiresAt RFC 3339 or null, int priority).
type walletsBalance struct {
	Name      string     `json:"name,omitempty"`
	ExpiresAt *time.Time `json:"expiresAt"`
	Priority  int        `json:"priority"`
}

func TestAccountAddress(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name                      string
		prefix, walletID, balance string
		want                      string
	}{
		{"no prefix", "", "w1", "savings", "wallets:w1:savings"},
		{"prefix", "acme", "w1", "savings", "acme:wallets:w1:savings"},
		{"prefix with segments", "acme:eu", "w1", "gift", "acme:eu:wallets:w1:gift"},
		{"dashes in wallet and name", "", "a-b-c", "gift-card", "wallets:abc:giftcard"},
		{"dashes in prefix too", "my-org:e-u", "w1", "n", "myorg:eu:wallets:w1:n"},
		{"UUID wallet", "", "0b6f2d6e-4e2a-4f3a-9f0a-2b9c1d8e7a31", "n", "wallets:0b6f2d6e4e2a4f3a9f0a2b9c1d8e7a31:n"},
		{"aliases collapse", "", "ab", "n", "wallets:ab:n"},
		{"dash-only wallet leaves an empty segment", "", "-", "n", "wallets::n"},
		{"underscores kept", "", "w_1", "n_2", "wallets:w_1:n_2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			require.Equal(t, tt.want, handlers.AccountAddress(tt.prefix, tt.walletID, tt.balance))
		})
	}
}

func TestMarkerKey(t *testing.T) {
	t.Parallel()

	// sha256("abc"), FIPS 180-2 test vector.
	require.Equal(t,
		"wallets/balances/idempotency/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		handlers.MarkerKey("abc"))
	require.True(t, strings.HasPrefix(handlers.MarkerKey("k"), handlers.MetadataIdempotencyPrefix))
	require.NotEqual(t, handlers.MarkerKey("k1"), handlers.MarkerKey("k2"))
}

func TestLedgerIdempotencyKey(t *testing.T) {
	t.Parallel()

	key := strings.Repeat("k", messages.MaxKeyBytes)
	lik := handlers.LedgerIdempotencyKey(key)
	require.LessOrEqual(t, len(lik), 255, "the ledger stores Idempotency-Key in varchar(255)")
	require.Equal(t, handlers.LedgerKeyPrefix+key, lik)
	require.NotEqual(t, "k1", handlers.LedgerIdempotencyKey("k1"), "must not collide with a key the wallets service forwards verbatim")
}

func TestBalanceMetadata(t *testing.T) {
	t.Parallel()

	at := time.Date(2027, 1, 1, 2, 0, 0, 500_000_000, time.FixedZone("X", 2*3600))

	t.Run("with expiry", func(t *testing.T) {
		t.Parallel()

		cmd := messages.CreateBalance{WalletID: "w-1", Name: "savings", Priority: -2, ExpiresAt: &at}
		md := handlers.BalanceMetadata("k1", cmd)
		require.Equal(t, map[string]string{
			"wallets/id":                 "w-1",
			"wallets/balances":           "true",
			"wallets/balances/name":      "savings",
			"wallets/balances/expiresAt": "2027-01-01T00:00:00.5Z",
			"wallets/balances/priority":  "-2",
			handlers.MarkerKey("k1"):     `{"name":"savings","expiresAt":"2027-01-01T00:00:00.5Z","priority":-2,"walletID":"w-1"}`,
		}, md)

		var wb walletsBalance
		require.NoError(t, json.Unmarshal([]byte(md[handlers.MarkerKey("k1")]), &wb))
		require.Equal(t, "savings", wb.Name)
		require.Equal(t, -2, wb.Priority)
		require.True(t, wb.ExpiresAt.Equal(at))
	})

	t.Run("never expires", func(t *testing.T) {
		t.Parallel()

		md := handlers.BalanceMetadata("k1", messages.CreateBalance{WalletID: "w1", Name: "n"})
		require.Equal(t, "", md[handlers.MetadataBalanceExpiresAt])
		require.Equal(t, "0", md[handlers.MetadataBalancePriority])
		require.JSONEq(t, `{"name":"n","expiresAt":null,"priority":0,"walletID":"w1"}`, md[handlers.MarkerKey("k1")])
	})

	t.Run("pure: same bytes for equal commands", func(t *testing.T) {
		t.Parallel()

		sameInstant := at.UTC()
		a := handlers.BalanceMetadata("k1", messages.CreateBalance{WalletID: "w1", Name: "n", Priority: 1, ExpiresAt: &at})
		b := handlers.BalanceMetadata("k1", messages.CreateBalance{WalletID: "w1", Name: "n", Priority: 1, ExpiresAt: &sameInstant})
		ja, err := json.Marshal(a)
		require.NoError(t, err)
		jb, err := json.Marshal(b)
		require.NoError(t, err)
		require.Equal(t, string(ja), string(jb))
	})

	t.Run("does not alias the command", func(t *testing.T) {
		t.Parallel()

		local := at
		cmd := messages.CreateBalance{WalletID: "w1", Name: "n", ExpiresAt: &local}
		md := handlers.BalanceMetadata("k1", cmd)
		require.Equal(t, at, local, "the command's time was modified")
		require.Equal(t, "2027-01-01T00:00:00.5Z", md[handlers.MetadataBalanceExpiresAt])
	})
}

// TestExpiryRoundedAsTheWalletsService: an expiry with nanoseconds is
// written rounded to the microsecond, in UTC, as the wallets service writes
// it (wallets a0e80ed stores 2030-01-02T03:04:05.123456789+02:00 as
// 2030-01-02T01:04:05.123457Z), in the balance keys and the marker alike.
func TestExpiryRoundedAsTheWalletsService(t *testing.T) {
	t.Parallel()
	at, err := time.Parse(time.RFC3339Nano, "2030-01-02T03:04:05.123456789+02:00")
	require.NoError(t, err)
	md := handlers.BalanceMetadata("k", messages.CreateBalance{WalletID: "w1", Name: "b", ExpiresAt: &at})
	require.Equal(t, "2030-01-02T01:04:05.123457Z", md[handlers.MetadataBalanceExpiresAt])
	require.Contains(t, md[handlers.MarkerKey("k")], `"expiresAt":"2030-01-02T01:04:05.123457Z"`)

	// A marker written with nanoseconds by an earlier version still replays.
	ns := at.UTC()
	require.True(t, messages.Balance{Name: "b", ExpiresAt: &ns}.Equal(messages.CreateBalance{WalletID: "w1", Name: "b", ExpiresAt: &at}.Balance()))
}
