package handlers

import (
	"errors"
	"fmt"
	"time"

	"github.com/wallets-worker/wallets-worker/messages"
)

// Outcome is what one command came to: exactly one of Created and Rejected is
// set. The worker publishes it as the command's outcome event.
type Outcome struct {
	Created  *messages.BalanceCreated
	Rejected *messages.BalanceCreateRejected
}

// Code is the rejection code, or "" for a created or replayed balance.
func (o Outcome) Code() messages.Code {
	if o.Rejected != nil {
		return o.Rejected.Code
	}
	return ""
}

// Event is the balance-created or balance-create-rejected event (Result).
func (o Outcome) Event() (string, string, any) {
	switch {
	case o.Created != nil:
		return messages.EventBalanceCreated, o.Created.WalletID, o.Created
	case o.Rejected != nil:
		return messages.EventBalanceCreateRejected, o.Rejected.WalletID, o.Rejected
	}
	return "", "", nil
}

// Reason is the rejection's message (Result).
func (o Outcome) Reason() string {
	if o.Rejected != nil {
		return o.Rejected.Message
	}
	return ""
}

// Replayed tells a replayed balance (Result).
func (o Outcome) Replayed() bool { return o.Created != nil && o.Created.Replayed }

// Label is "created", "replayed" or the code in lower case (Result).
func (o Outcome) Label() string {
	switch {
	case o.Replayed():
		return "replayed"
	case o.Created != nil:
		return "created"
	}
	return labelOf(o.Code())
}

// Reject builds a rejected outcome.
func Reject(key string, cmd messages.CreateBalance, code messages.Code, message string) Outcome {
	return Outcome{Rejected: &messages.BalanceCreateRejected{
		Key: key, WalletID: cmd.WalletID, Name: cmd.Name, Code: code, Message: message,
	}}
}

// RetryError says the command could not be decided now and should be tried
// again later. It is the only error Handle returns.
type RetryError struct {
	Err error
	// Delay, when non-zero, is how long to wait before the next attempt;
	// zero leaves the delay to the caller's backoff policy.
	Delay time.Duration
	// Deferred marks a wait for another command (a live claim on the same
	// balance) rather than a failure: it should not use up the retry budget.
	Deferred bool
	// NoTimeLeft marks a ledger call that was not sent because the attempt's
	// deadline came before its request could be answered (a batched call
	// that waited for its turn): nothing was tried, so it is no attempt, and
	// a new attempt window is all it needs.
	NoTimeLeft bool
}

func (e *RetryError) Error() string {
	if e.NoTimeLeft {
		return "not sent: " + e.Err.Error()
	}
	if e.Deferred {
		return "deferred: " + e.Err.Error()
	}
	return "retryable: " + e.Err.Error()
}

func (e *RetryError) Unwrap() error { return e.Err }

func transient(format string, args ...any) error {
	return &RetryError{Err: fmt.Errorf(format, args...)}
}

// AsRetry returns the *RetryError in err's chain, if any.
func AsRetry(err error) (*RetryError, bool) {
	var r *RetryError
	ok := errors.As(err, &r)
	return r, ok
}
