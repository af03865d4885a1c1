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

// CommandRejected is the body of a command-rejected event: a command of a
// kind no worker knows.
type CommandRejected struct {
	Key      string `json:"key"`
	WalletID string `json:"walletID"`
	Code     Code   `json:"code"`
	Message  string `json:"message"`
}

// EventSubject is the subject of walletID's events named event (an
// unusable walletID becomes UnknownWallet).
func EventSubject(event, walletID string) string {
	return "wallets.events." + event + "." + subjectToken(walletID)
}

// KindDLQSubject is the dead-letter subject of walletID's commands of kind.
func KindDLQSubject(kind, walletID string) string {
	return "wallets.dlq." + kind + "." + subjectToken(walletID)
}

// SafeHeaderValue makes s fit in a NATS header value: printable ASCII only
// (others become '?'), at most max bytes.
func SafeHeaderValue(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			clean = false
			break
		}
	}
	if clean && len(s) <= max {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < max; i++ {
		if c := s[i]; c >= 0x20 && c <= 0x7e {
			b.WriteByte(c)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
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

// KindOfSubject returns the kind token of a command subject
// (wallets.commands.<kind>.<wallet>): what follows the prefix, up to the next
// dot. It does not say whether the kind is known.
func KindOfSubject(subject string) string {
	rest, _ := strings.CutPrefix(subject, SubjectCommandsPrefix)
	token, _, _ := strings.Cut(rest, ".")
	return token
}

// WalletFromSubject returns the wallet token of a command, event or dead-letter
// subject, or UnknownWallet when it has none that is valid.
//
// Those subjects are wallets.<commands|events|dlq>.<kind or event>.<wallet>,
// of any kind or event.
func WalletFromSubject(subject string) string {
	tokens := strings.Split(subject, ".")
	if len(tokens) != 4 || tokens[0] != "wallets" || tokens[2] == "" {
		return UnknownWallet
	}
	switch tokens[1] {
	case "commands", "events", "dlq":
		return subjectToken(tokens[3])
	}
	return UnknownWallet
}

func subjectToken(walletID string) string {
	if !isToken(walletID) {
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
