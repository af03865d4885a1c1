package messages

import (
	"strconv"
	"strings"
)

// BalanceCreated is the body of a balance-created event.
type BalanceCreated struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	// Balance is the balance as the original create stored it, also on replay.
	Balance Balance `json:"balance"`
	Ledger  string  `json:"ledger"`
	Account string  `json:"account"`
	// Replayed is true when the balance was created by an earlier delivery or
	// publish of the same command.
	Replayed bool `json:"replayed"`
}

// BalanceCreateRejected is the body of a balance-create-rejected event.
type BalanceCreateRejected struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	Name     string `json:"name"`
	Code     Code   `json:"code"`
	Message  string `json:"message"`
}

// CreateBalanceSubject is the subject a command for walletID is published on.
func CreateBalanceSubject(walletID string) string {
	return subjectCreateBalancePrefix + walletID
}

// BalanceCreatedSubject is the subject of walletID's balance-created events.
func BalanceCreatedSubject(walletID string) string {
	return subjectBalanceCreatedPrefix + subjectToken(walletID)
}

// BalanceCreateRejectedSubject is the subject of walletID's rejections; an
// unusable walletID becomes UnknownWallet.
func BalanceCreateRejectedSubject(walletID string) string {
	return subjectBalanceRejectedPrefix + subjectToken(walletID)
}

// DLQSubject is the dead-letter subject for walletID's commands.
func DLQSubject(walletID string) string {
	return subjectDLQCreateBalance + subjectToken(walletID)
}

// WalletFromSubject returns the wallet token of a command, event or dead-letter
// subject, or UnknownWallet when it has none that is valid.
func WalletFromSubject(subject string) string {
	for _, prefix := range []string{subjectCreateBalancePrefix, subjectBalanceCreatedPrefix, subjectBalanceRejectedPrefix, subjectDLQCreateBalance} {
		if rest, ok := strings.CutPrefix(subject, prefix); ok {
			return subjectToken(rest)
		}
	}
	return UnknownWallet
}

func subjectToken(walletID string) string {
	if !tokenPattern.MatchString(walletID) {
		return UnknownWallet
	}
	return walletID
}

// EventMsgID is the Nats-Msg-Id of the outcome event of the command stored at
// seq with key: a redelivery of that stored command yields the same ID (and so
// no second event), a later republish of the key gets a new sequence.
func EventMsgID(key string, seq uint64) string {
	return key + ":" + strconv.FormatUint(seq, 10)
}
