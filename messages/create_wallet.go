package messages

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"
)

// The create-wallet kind (SPEC §7): the wallets service's POST /wallets as a
// command. Its subject's wallet is the ID derived from the key
// (WalletIDOf), which the publisher computes before it publishes.
const (
	KindCreateWallet          = "create-wallet"
	EventWalletCreated        = "wallet-created"
	EventCreateWalletRejected = "create-wallet-rejected"

	subjectCreateWalletPrefix = SubjectCommandsPrefix + KindCreateWallet + "."

	// CodeConflict: the wallet's address belongs to an account that is not
	// a wallet (SPEC §7).
	CodeConflict Code = "CONFLICT"
)

// idNamespace is the wallets service's namespace of the IDs it derives
// from an idempotency key (formancehq/wallets a0e80ed).
var idNamespace = uuid.MustParse("0b6f2d6e-4e2a-4f3a-9f0a-2b9c1d8e7a31")

// WalletIDOf is the ID of the wallet that create-wallet with key creates, as
// the wallets service derives it: the name-based (v5) UUID of
// "wallet:<key>" in its namespace.
func WalletIDOf(key string) string { return uuid.NewSHA1(idNamespace, []byte("wallet:"+key)).String() }

// HoldIDOf is the ID of the hold a pending debit with key makes, as the
// wallets service derives it ("hold:<key>").
func HoldIDOf(key string) string { return uuid.NewSHA1(idNamespace, []byte("hold:"+key)).String() }

// CreateWallet is the create-wallet command: the wallets service's create
// request. WalletID is not in the body: it is the subject's, and must be
// WalletIDOf(key).
type CreateWallet struct {
	WalletID string            `json:"-"`
	Name     string            `json:"name"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// WalletCreated is the body of a wallet-created event: the wallet as the
// wallets service answers its creation (its response snapshot), also on a
// replay.
type WalletCreated struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	Wallet   Wallet `json:"wallet"`
	Ledger   string `json:"ledger"`
	Replayed bool   `json:"replayed"`
}

// Wallet is a wallet as the wallets service renders it on creation, field
// for field: its JSON is the stored response snapshot.
type Wallet struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Metadata  map[string]string `json:"metadata"`
	CreatedAt time.Time         `json:"createdAt"`
	Ledger    string            `json:"ledger"`
	Balances  WalletBalances    `json:"balances"`
}

// WalletBalances is the balances part of a created wallet: its main
// balance, without assets yet.
type WalletBalances struct {
	Main struct {
		ExpiresAt *time.Time     `json:"expiresAt"`
		Priority  int64          `json:"priority"`
		Assets    map[string]any `json:"assets"`
	} `json:"main"`
}

// CreateWalletSubject is the subject of the create-wallet with key.
func CreateWalletSubject(key string) string { return subjectCreateWalletPrefix + WalletIDOf(key) }

// DecodeCreateWallet decodes a create-wallet received on subject: a body of
// the request's fields only (name and metadata, both optional), strictly.
// That the subject's wallet is the key's is checked where the key is known.
func DecodeCreateWallet(subject string, body []byte) (CreateWallet, error) {
	var c CreateWallet
	wallet, err := envelope(subject, subjectCreateWalletPrefix, body)
	c.WalletID = wallet
	if err != nil {
		return c, err
	}
	err = decodeFields(body, func(name string, raw json.RawMessage) error {
		switch name {
		case FieldName:
			if string(raw) == "null" {
				return nil // absent, as the wallets service decodes it
			}
			if raw[0] != '"' || json.Unmarshal(raw, &c.Name) != nil {
				return invalid(name, "must be a string")
			}
		case "metadata":
			if string(raw) != "null" && strictUnmarshal(raw, &c.Metadata) != nil {
				return invalid(name, "must be an object of strings")
			}
		default:
			return invalid(name, "is not a field of the command")
		}
		return nil
	})
	return c, err
}
