package handlers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/wallets-worker/wallets-worker/messages"
)

// Metadata keys the wallets service reads (SPEC §4).
const (
	MetadataWalletID          = "wallets/id"
	MetadataBalances          = "wallets/balances"
	MetadataBalanceName       = "wallets/balances/name"
	MetadataBalanceExpiresAt  = "wallets/balances/expiresAt"
	MetadataBalancePriority   = "wallets/balances/priority"
	MetadataIdempotencyPrefix = "wallets/balances/idempotency/"
)

// LedgerKeyPrefix namespaces the ledger Idempotency-Key of every write this
// worker makes, so that a command key can never collide with the key of
// another kind of write on the same ledger (the wallets service forwards its
// clients' keys verbatim). With MaxKeyBytes it stays under the ledger's 255.
const LedgerKeyPrefix = "wallets-worker/create-balance/v1/"

// AccountAddress is the ledger account of a balance, computed exactly as the
// wallets service does: [prefix:]wallets:<walletID>:<name>, then every "-" of
// the whole string removed.
func AccountAddress(prefix, walletID, name string) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(walletID) + len(name) + 10)
	if prefix != "" {
		b.WriteString(prefix)
		b.WriteByte(':')
	}
	b.WriteString("wallets:")
	b.WriteString(walletID)
	b.WriteByte(':')
	b.WriteString(name)
	return strings.ReplaceAll(b.String(), "-", "")
}

// MarkerKey is the metadata key of key's replay marker.
func MarkerKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return MetadataIdempotencyPrefix + hex.EncodeToString(sum[:])
}

// LedgerIdempotencyKey is the ledger Idempotency-Key of every attempt of the
// command with this key.
func LedgerIdempotencyKey(key string) string {
	return LedgerKeyPrefix + key
}

// marker is the replay marker's value. The wallets service writes name,
// expiresAt and priority; WalletID is ours, and tells apart two wallets whose
// IDs differ only by dashes and so share one account. The wallets service
// ignores it.
type marker struct {
	Name      string     `json:"name,omitempty"`
	ExpiresAt *time.Time `json:"expiresAt"`
	Priority  int64      `json:"priority"`
	WalletID  string     `json:"walletID,omitempty"`
}

func markerOf(walletID string, b messages.Balance) marker {
	return marker{Name: b.Name, ExpiresAt: b.ExpiresAt, Priority: b.Priority, WalletID: walletID}
}

func (m marker) balance() messages.Balance {
	b := messages.Balance{Name: m.Name, Priority: m.Priority}
	if m.ExpiresAt != nil {
		t := m.ExpiresAt.UTC()
		b.ExpiresAt = &t
	}
	return b
}

// BalanceMetadata is the exact metadata one CreateBalance writes: the balance
// keys and key's replay marker. It is a pure function of its inputs, so every
// attempt of a command sends identical bytes.
func BalanceMetadata(key string, cmd messages.CreateBalance) map[string]string {
	b := cmd.Balance()
	expiresAt := ""
	if b.ExpiresAt != nil {
		expiresAt = b.ExpiresAt.Format(time.RFC3339Nano)
	}
	m, _ := json.Marshal(markerOf(cmd.WalletID, b)) // cannot fail: plain fields, years checked by Validate
	return map[string]string{
		MetadataWalletID:         cmd.WalletID,
		MetadataBalances:         "true",
		MetadataBalanceName:      b.Name,
		MetadataBalanceExpiresAt: expiresAt,
		MetadataBalancePriority:  strconv.FormatInt(b.Priority, 10),
		MarkerKey(key):           string(m),
	}
}
