package handlers

import (
	"context"
	"fmt"
	"strings"

	"github.com/wallets-worker/wallets-worker/messages"
)

// The pipeline (package worker) moves and settles commands of any kind; a
// kind is its wire names (package messages), its decision (here), and one
// line in Kinds. The worker knows a kind only through these interfaces.

// Kind is one kind of command: the subject token after wallets.commands,
// how a stored command is read, and how one that cannot be decided is
// refused.
type Kind interface {
	// Name is the kind's subject token, e.g. "create-balance".
	Name() string
	// Decode reads a command stored on subject (whose second token is the
	// kind's name). An error makes the command INVALID_COMMAND.
	Decode(subject string, data []byte) (Command, error)
	// Reject is the outcome of a command of this kind refused without a
	// decision (INVALID_COMMAND, RETRIES_EXHAUSTED). cmd is what Decode
	// returned, nil when it failed; subject is where the command was stored.
	Reject(key, subject string, cmd Command, code messages.Code, message string) Result
}

// Command is a decoded command, ready to be decided.
type Command interface {
	// Handle decides the command. It returns a Result, or a *RetryError when
	// it cannot decide now.
	Handle(ctx context.Context, key string) (Result, error)
}

// Result is what one command came to, as the worker settles it.
type Result interface {
	// Event is the outcome event: its name (the subject token after
	// wallets.events), the wallet it is about ("" when none can be told)
	// and its body.
	Event() (name, wallet string, body any)
	// Code is the rejection code, "" for a command that succeeded.
	Code() messages.Code
	// Reason is the rejection's message, "" for a success.
	Reason() string
	// Label names the outcome in metrics and traces: "created",
	// "replayed", or the rejection code in lower case.
	Label() string
	// Replayed is true for a success that replays an earlier one.
	Replayed() bool
}

// Kinds is a set of kinds by name.
type Kinds map[string]Kind

// NewKinds registers kinds; two of one name are a programming error.
func NewKinds(kinds ...Kind) Kinds {
	out := Kinds{}
	for _, k := range kinds {
		if _, dup := out[k.Name()]; dup {
			panic(fmt.Sprintf("handlers: kind %q registered twice", k.Name()))
		}
		out[k.Name()] = k
	}
	return out
}

// Of returns the kind of a command stored on subject
// (wallets.commands.<kind>.<wallet>), and the kind's token.
func (ks Kinds) Of(subject string) (Kind, string, bool) {
	token := messages.KindOfSubject(subject)
	k, ok := ks[token]
	return k, token, ok
}

// UnknownKind is the outcome of a command stored under a kind no worker has:
// INVALID_COMMAND, on the command-rejected event of the subject's wallet.
func UnknownKind(key, subject, token string) Result {
	return unknownKind{key: key, wallet: walletOfSubject(subject), message: fmt.Sprintf("unknown command kind %q", token)}
}

type unknownKind struct{ key, wallet, message string }

func (u unknownKind) Event() (string, string, any) {
	return messages.EventCommandRejected, u.wallet, messages.CommandRejected{
		Key: u.key, WalletID: u.wallet, Code: messages.CodeInvalidCommand, Message: u.message}
}
func (unknownKind) Code() messages.Code { return messages.CodeInvalidCommand }
func (u unknownKind) Reason() string    { return u.message }
func (unknownKind) Label() string       { return labelOf(messages.CodeInvalidCommand) }
func (unknownKind) Replayed() bool      { return false }

// walletOfSubject is the wallet a subject names, "" when it names none that
// can be trusted.
func walletOfSubject(subject string) string {
	w := messages.WalletFromSubject(subject)
	if w == messages.UnknownWallet {
		return ""
	}
	return w
}

// labelOf is a rejection's Label: its code in lower case, "invalid" for
// INVALID_COMMAND.
func labelOf(c messages.Code) string {
	if c == messages.CodeInvalidCommand {
		return "invalid"
	}
	return strings.ToLower(string(c))
}
