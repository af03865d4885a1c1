package messages

import (
	"encoding/json"
	"math/big"
)

// The confirm-hold and void-hold kinds (SPEC §7): the wallets service's
// POST /holds/{holdID}/confirm and /void as commands, published on the
// subject of the hold's wallet.
const (
	KindConfirmHold          = "confirm-hold"
	KindVoidHold             = "void-hold"
	EventHoldConfirmed       = "hold-confirmed"
	EventConfirmHoldRejected = "confirm-hold-rejected"
	EventHoldVoided          = "hold-voided"
	EventVoidHoldRejected    = "void-hold-rejected"

	// CodeHoldNotFound: no hold of that ID.
	CodeHoldNotFound Code = "HOLD_NOT_FOUND"
	// CodeHoldClosed: the hold has nothing left.
	CodeHoldClosed Code = "HOLD_CLOSED"
)

// ConfirmHold is the confirm-hold command: the hold, the amount to move to
// the hold's destination (empty or zero: all that is left), and whether to
// send what then remains back to the wallet (final).
type ConfirmHold struct {
	WalletID string   `json:"-"` // the subject's
	HoldID   string   `json:"holdID"`
	Amount   *big.Int `json:"amount,omitempty"`
	Final    bool     `json:"final,omitempty"`
}

// VoidHold is the void-hold command: the hold whose funds go back.
type VoidHold struct {
	WalletID string `json:"-"` // the subject's
	HoldID   string `json:"holdID"`
}

// HoldSettled is the body of hold-confirmed and hold-voided events.
type HoldSettled struct {
	Key           string   `json:"key"`
	WalletID      string   `json:"walletID"`
	HoldID        string   `json:"holdID"`
	Amount        *big.Int `json:"amount,omitempty"` // confirmed
	Final         bool     `json:"final,omitempty"`
	Ledger        string   `json:"ledger"`
	TransactionID uint64   `json:"transactionID"`
	Replayed      bool     `json:"replayed"`
}

// ConfirmHoldSubject and VoidHoldSubject are the subjects of commands on a
// hold of walletID.
func ConfirmHoldSubject(walletID string) string {
	return SubjectCommandsPrefix + KindConfirmHold + "." + walletID
}

func VoidHoldSubject(walletID string) string {
	return SubjectCommandsPrefix + KindVoidHold + "." + walletID
}

// decodeHoldCommand reads a hold command's subject and body: holdID (a
// UUID's characters), and the confirm's amount and final when confirm.
func decodeHoldCommand(kind, subject string, body []byte, confirm *ConfirmHold) (wallet, holdID string, err error) {
	prefix := SubjectCommandsPrefix + kind + "."
	wallet, err = envelope(subject, prefix, body)
	if err != nil {
		return wallet, "", err
	}
	err = decodeFields(body, func(name string, raw json.RawMessage) error {
		switch {
		case name == "holdID":
			if raw[0] != '"' || json.Unmarshal(raw, &holdID) != nil {
				return invalid(name, "must be a string")
			}
		case name == "amount" && confirm != nil:
			if string(raw) == "null" {
				return nil
			}
			n, ok := new(big.Int).SetString(string(raw), 10)
			if !ok || n.Sign() < 0 {
				return invalid(name, "must be an integer, zero or more")
			}
			confirm.Amount = n
		case name == "final" && confirm != nil:
			if string(raw) != "null" && json.Unmarshal(raw, &confirm.Final) != nil {
				return invalid(name, "must be a boolean")
			}
		default:
			return invalid(name, "is not a field of the command")
		}
		return nil
	})
	if err != nil {
		return wallet, holdID, err
	}
	if err := validToken("holdID", holdID); err != nil {
		return wallet, holdID, err
	}
	return wallet, holdID, validToken(FieldWalletID, wallet)
}

// DecodeConfirmHold decodes a confirm-hold received on subject.
func DecodeConfirmHold(subject string, body []byte) (ConfirmHold, error) {
	var c ConfirmHold
	wallet, hold, err := decodeHoldCommand(KindConfirmHold, subject, body, &c)
	c.WalletID, c.HoldID = wallet, hold
	return c, err
}

// DecodeVoidHold decodes a void-hold received on subject.
func DecodeVoidHold(subject string, body []byte) (VoidHold, error) {
	wallet, hold, err := decodeHoldCommand(KindVoidHold, subject, body, nil)
	return VoidHold{WalletID: wallet, HoldID: hold}, err
}
