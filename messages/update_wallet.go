package messages

import (
	"encoding/json"
)

// The update-wallet kind (SPEC §7): the wallets service's
// PATCH /wallets/{walletID} as a command.
const (
	KindUpdateWallet          = "update-wallet"
	EventWalletUpdated        = "wallet-updated"
	EventUpdateWalletRejected = "update-wallet-rejected"

	// CodeWalletNotFound: no wallet of that ID.
	CodeWalletNotFound Code = "WALLET_NOT_FOUND"
)

// UpdateWallet is the update-wallet command: metadata merged over the
// wallet's.
type UpdateWallet struct {
	WalletID string            `json:"walletID"`
	Metadata map[string]string `json:"metadata"`
}

// WalletUpdated is the body of a wallet-updated event.
type WalletUpdated struct {
	Key      string            `json:"key"`
	WalletID string            `json:"walletID"`
	Metadata map[string]string `json:"metadata"`
	Ledger   string            `json:"ledger"`
	Replayed bool              `json:"replayed"`
}

// UpdateWalletSubject is the subject an update of walletID is published on.
func UpdateWalletSubject(walletID string) string {
	return SubjectCommandsPrefix + KindUpdateWallet + "." + walletID
}

// DecodeUpdateWallet decodes an update-wallet received on subject.
func DecodeUpdateWallet(subject string, body []byte) (UpdateWallet, error) {
	var c UpdateWallet
	prefix := SubjectCommandsPrefix + KindUpdateWallet + "."
	wallet, err := envelope(subject, prefix, body)
	if err != nil {
		return c, err
	}
	err = decodeFields(body, func(name string, raw json.RawMessage) error {
		switch name {
		case FieldWalletID:
			if raw[0] != '"' || json.Unmarshal(raw, &c.WalletID) != nil {
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
	if err != nil {
		return c, err
	}
	if err := validToken(FieldWalletID, c.WalletID); err != nil {
		return c, err
	}
	if wallet != c.WalletID {
		return c, invalid(FieldWalletID, "%q differs from the subject's wallet %q", c.WalletID, truncate(wallet))
	}
	return c, nil
}
