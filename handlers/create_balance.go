package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Ledger is what CreateBalance needs of a Formance ledger.
type Ledger interface {
	GetAccount(ctx context.Context, ledger, address string) (ledgeradapter.Account, bool, error)
	AddAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (ledgeradapter.WriteResult, error)
}

// Claimer makes one command the only writer of a balance across every worker.
// Claim returns nil when the command with key may write the balance at
// account (it holds the claim, newly or again), an error wrapping ErrClaimed
// when another command holds a live claim, or another error when the claim
// could not be checked.
type Claimer interface {
	Claim(ctx context.Context, ledger, account, key string) error
}

// ErrClaimed is wrapped by Claimer errors when another command holds the claim.
var ErrClaimed = errors.New("balance is claimed by another command")

// DefaultClaimDeferral is how long a command that lost the claim waits before
// it looks again, unless CreateBalance.ClaimDeferral says otherwise.
const DefaultClaimDeferral = 50 * time.Millisecond

// CreateBalance decides and applies CreateBalance commands.
type CreateBalance struct {
	Ledger        Ledger
	LedgerName    string
	AccountPrefix string
	// Claim, when set, is consulted before every ledger write.
	Claim Claimer
	// ClaimDeferral is the delay asked for when the claim is held by another
	// command (DefaultClaimDeferral when zero); the worker adds jitter.
	ClaimDeferral time.Duration
	// ClaimReadMaxAge is how old the read that found the balance absent may
	// be when its claim is won. An older read is done again before the
	// write: the claim of another command may have expired after that
	// command wrote the balance, and after the read, so winning the claim
	// no longer proves that nobody wrote. Zero re-reads after every claim;
	// the worker uses Config.ClaimReadMaxAge.
	ClaimReadMaxAge time.Duration
}

// Validate reports every configuration problem at once.
func (h *CreateBalance) Validate() error {
	var errs []error
	if h.Ledger == nil {
		errs = append(errs, errors.New("handlers: Ledger is required"))
	}
	if err := ledgeradapter.ValidateLedgerName(h.LedgerName); err != nil {
		errs = append(errs, fmt.Errorf("handlers: ledger name: %w", err))
	}
	if h.AccountPrefix != "" {
		if err := ledgeradapter.ValidateAddress(strings.ReplaceAll(h.AccountPrefix, "-", "")); err != nil {
			errs = append(errs, fmt.Errorf("handlers: account prefix %q: %w", h.AccountPrefix, err))
		}
	}
	return errors.Join(errs...)
}

// Handle applies one command. It returns an Outcome, or a *RetryError when the
// command should be tried again later; the same command may be handled any
// number of times, concurrently too, and is applied at most once.
func (h *CreateBalance) Handle(ctx context.Context, key string, cmd messages.CreateBalance) (Outcome, error) {
	if err := messages.ValidateKey(key); err != nil {
		return Reject(key, cmd, messages.CodeInvalidCommand, err.Error()), nil
	}
	if err := cmd.Validate(); err != nil {
		return Reject(key, cmd, messages.CodeInvalidCommand, err.Error()), nil
	}
	address := AccountAddress(h.AccountPrefix, cmd.WalletID, cmd.Name)
	if err := ledgeradapter.ValidateAddress(address); err != nil {
		// Only dashes were left out: "wallets:-:x" would become the
		// pattern "wallets::x" that the ledger matches against any account.
		return Reject(key, cmd, messages.CodeInvalidCommand,
			fmt.Sprintf("account address %q is not a valid ledger address once dashes are removed", address)), nil
	}

	readAt := time.Now()
	account, found, err := h.Ledger.GetAccount(ctx, h.LedgerName, address)
	if err != nil {
		return h.ledgerFailure(key, cmd, "read account", err)
	}
	if found {
		if o, done := h.decideExisting(key, cmd, address, account.Metadata); done {
			return o, nil
		}
	}

	if h.Claim != nil {
		if err := h.Claim.Claim(ctx, h.LedgerName, address, key); err != nil {
			if errors.Is(err, ErrClaimed) {
				d := h.ClaimDeferral
				if d <= 0 {
					d = DefaultClaimDeferral
				}
				return Outcome{}, &RetryError{Err: err, Delay: d, Deferred: true}
			}
			return Outcome{}, transient("claim balance %s: %w", address, err)
		}
		if time.Since(readAt) > h.ClaimReadMaxAge {
			account, found, err = h.Ledger.GetAccount(ctx, h.LedgerName, address)
			if err != nil {
				return h.ledgerFailure(key, cmd, "read account again after its claim", err)
			}
			if found {
				if o, done := h.decideExisting(key, cmd, address, account.Metadata); done {
					return o, nil
				}
			}
		}
	}

	res, err := h.Ledger.AddAccountMetadata(ctx, h.LedgerName, address, BalanceMetadata(key, cmd), LedgerIdempotencyKey(key))
	if err != nil {
		if isIdempotencyConflict(err) {
			return Reject(key, cmd, messages.CodeKeyReused,
				"the key was already used by the ledger for a different write"), nil
		}
		return h.ledgerFailure(key, cmd, "write balance metadata", err)
	}
	return h.created(key, cmd, address, cmd.Balance(), res.IdempotencyHit), nil
}

// decideExisting settles a command whose account already exists, when it can
// be settled without writing: a replay, KEY_REUSED or ALREADY_EXISTS.
func (h *CreateBalance) decideExisting(key string, cmd messages.CreateBalance, address string, md map[string]string) (Outcome, bool) {
	if raw := md[MarkerKey(key)]; raw != "" {
		var m marker
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			return Reject(key, cmd, messages.CodeLedgerRejected,
				fmt.Sprintf("replay marker of this key on %s is not valid JSON: %v", address, err)), true
		}
		stored := m.balance()
		if (m.WalletID != "" && m.WalletID != cmd.WalletID) || !stored.Equal(cmd.Balance()) {
			return Reject(key, cmd, messages.CodeKeyReused,
				"this key created the balance with a different command"), true
		}
		return h.created(key, cmd, address, stored, true), true
	}
	if md[MetadataBalances] == "true" {
		return Reject(key, cmd, messages.CodeAlreadyExists,
			fmt.Sprintf("balance %q of wallet %q was created by another command", cmd.Name, cmd.WalletID)), true
	}
	// An account that is not a balance (one that only received funds, say)
	// is adopted, as the wallets service does.
	return Outcome{}, false
}

func (h *CreateBalance) created(key string, cmd messages.CreateBalance, address string, b messages.Balance, replayed bool) Outcome {
	return Outcome{Created: &messages.BalanceCreated{
		Key: key, WalletID: cmd.WalletID, Balance: b,
		Ledger: h.LedgerName, Account: address, Replayed: replayed,
	}}
}

func (h *CreateBalance) ledgerFailure(key string, cmd messages.CreateBalance, op string, err error) (Outcome, error) {
	if errors.Is(err, ledgeradapter.ErrNoTimeLeft) {
		return Outcome{}, &RetryError{Err: fmt.Errorf("%s: %w", op, err), NoTimeLeft: true}
	}
	if ledgeradapter.IsRetryable(err) || isLedgerUnavailable(err) {
		return Outcome{}, transient("%s: %w", op, err)
	}
	return Reject(key, cmd, messages.CodeLedgerRejected, fmt.Sprintf("%s: %v", op, err)), nil
}

// isIdempotencyConflict recognises the ledger's answer to a key it has stored
// with another input (CONTRACT §3): 400 VALIDATION "invalid idempotency hash".
func isIdempotencyConflict(err error) bool {
	return errors.Is(err, ledgeradapter.ErrIdempotencyConflict)
}

// isLedgerUnavailable recognises answers that say the ledger itself is not
// usable yet (deleted or not created, or its schema awaiting an upgrade):
// nothing is wrong with the command, so it waits, within its retry budget,
// rather than being dead-lettered at once.
func isLedgerUnavailable(err error) bool {
	var le *ledgeradapter.Error
	return errors.Is(err, ledgeradapter.ErrLedgerNotFound) ||
		(errors.As(err, &le) && le.ErrorCode == "OUTDATED_SCHEMA")
}
