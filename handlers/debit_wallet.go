package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Metadata of a hold's account (docs/wallets-writes.md, debit-wallet).
const (
	SpecTypeHold            = "wallets.hold"
	MetadataHoldWalletID    = "wallets/holds/wallet_id"
	MetadataHoldID          = "wallets/holds/id"
	MetadataHoldAsset       = "wallets/holds/asset"
	MetadataHoldDescription = "wallets/holds/description"
	MetadataHoldSubject     = "wallets/holds/subject"
	MetadataDestination     = "destination"
	MetadataVoidDestination = "void_destination"
)

// HoldAddress is a hold's account: [<prefix>:]wallets:holds:<id>, dashes
// removed.
func HoldAddress(prefix, holdID string) string { return AccountAddress(prefix, "holds", holdID) }

// debitScript renders the wallets service's debit script: the credit
// script's text without its last newline, then, for a hold, one
// set_account_meta line per metadata entry, sorted by key, each after a
// newline, the key as is and the value Go-quoted.
func debitScript(sources []string, hold string, holdMetadata map[string]string) string {
	s := strings.TrimSuffix(creditScript(sources), "\n")
	if hold == "" {
		return s
	}
	keys := make([]string, 0, len(holdMetadata))
	for k := range holdMetadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(s)
	for _, k := range keys {
		fmt.Fprintf(&b, "\nset_account_meta(@%s, \"%s\", %s)", hold, k, strconv.Quote(holdMetadata[k]))
	}
	return b.String()
}

// DebitWallet decides debit-wallet commands: it writes exactly the
// transaction the wallets service writes for the same debit request, with
// the command's key as the ledger Idempotency-Key, for the reason given on
// CreditWallet.
type DebitWallet struct {
	Ledger        TxLedger
	LedgerName    string
	AccountPrefix string
	// Now is the clock that tells expired balances (time.Now when nil).
	Now func() time.Time
	// Chain, when set, is the chain a debit of the main balance rides (one
	// transaction, no read; pending or not).
	Chain *Chain
}

// DebitWalletKind is the debit-wallet kind, decided by h.
func DebitWalletKind(h *DebitWallet) Kind { return debitWalletKind{h: h} }

type debitWalletKind struct{ h *DebitWallet }

func (debitWalletKind) Name() string { return messages.KindDebitWallet }

func (k debitWalletKind) Decode(subject string, data []byte) (Command, error) {
	cmd, err := messages.DecodeDebitWallet(subject, data)
	return debitWalletCommand{h: k.h, cmd: cmd}, err
}

func (debitWalletKind) Reject(key, subject string, c Command, code messages.Code, message string) Result {
	wallet := walletOfSubject(subject)
	if cc, ok := c.(debitWalletCommand); ok && code != messages.CodeInvalidCommand {
		wallet = cc.cmd.WalletID
	}
	return rejected(messages.EventDebitWalletRejected, messages.SafeHeaderValue(key, messages.MaxKeyBytes), wallet, code, message)
}

type debitWalletCommand struct {
	h   *DebitWallet
	cmd messages.DebitWallet
}

func (c debitWalletCommand) Handle(ctx context.Context, key string) (Result, error) {
	return c.h.Handle(ctx, key, c.cmd)
}

// Chain: a debit of named balances reads them first, so it rides none.
func (c debitWalletCommand) Chain() *Chain {
	if len(c.cmd.Balances) > 0 {
		return nil
	}
	return c.h.Chain
}

func (c debitWalletCommand) link(key string) link {
	req, hold := c.h.Request(key, c.cmd, []string{AccountAddress(c.h.AccountPrefix, c.cmd.WalletID, messages.MainBalance)})
	return link{ledger: c.h.LedgerName, request: req, key: key,
		applied: func(tx ledgeradapter.Transaction, replayed bool) Result {
			return c.h.applied(key, c.cmd, hold, tx, replayed)
		},
		failure: func(op string, err error) (Result, error) { return c.h.failure(key, c.cmd, op, err) }}
}

// debitRefusal is a debit refused before the ledger is written.
type debitRefusal struct {
	code    messages.Code
	message string
}

func (e *debitRefusal) Error() string { return e.message }

// sources resolves the source accounts of a debit as the wallets service
// does with a key: the main balance when none is named; named balances
// read in order, an expired one skipped, one expiring later refused (its
// resolution could change between attempts); every balance ("*") refused.
func (h *DebitWallet) sources(ctx context.Context, cmd messages.DebitWallet) ([]string, error) {
	if len(cmd.Balances) == 0 {
		return []string{AccountAddress(h.AccountPrefix, cmd.WalletID, messages.MainBalance)}, nil
	}
	if cmd.Balances[0] == messages.AllBalances {
		return nil, &debitRefusal{messages.CodeNotIdempotent, "debit cannot be made idempotent: every balance (\"*\") was asked for"}
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	var out []string
	for _, name := range cmd.Balances {
		a, found, err := h.Ledger.GetAccount(ctx, h.LedgerName, AccountAddress(h.AccountPrefix, cmd.WalletID, name))
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, &debitRefusal{messages.CodeBalanceNotFound, fmt.Sprintf("balance %q of wallet %q does not exist", name, cmd.WalletID)}
		}
		if raw := a.Metadata[MetadataBalanceExpiresAt]; raw != "" {
			exp, err := time.Parse(time.RFC3339Nano, raw)
			if err == nil && !exp.IsZero() {
				if exp.Before(now()) {
					continue
				}
				return nil, &debitRefusal{messages.CodeNotIdempotent, fmt.Sprintf("debit cannot be made idempotent: balance %q expires at %s", name, raw)}
			}
		}
		stored := a.Metadata[MetadataBalanceName]
		if err := messages.ValidateBalanceName(stored); err != nil {
			return nil, &debitRefusal{messages.CodeBalanceNotFound, fmt.Sprintf("account of balance %q is not a balance", name)}
		}
		out = append(out, AccountAddress(h.AccountPrefix, cmd.WalletID, stored))
	}
	if len(out) == 0 {
		return nil, &debitRefusal{messages.CodeInsufficientFunds, "every balance asked for has expired"}
	}
	return out, nil
}

// Request is the ledger transaction of a debit from sources, and its hold
// for a pending debit (no ledger call).
func (h *DebitWallet) Request(key string, cmd messages.DebitWallet, sources []string) (ledgeradapter.TransactionRequest, *messages.Hold) {
	dest := messages.WalletSubject{Type: messages.SubjectTypeAccount, Identifier: "world"}
	if cmd.Destination != nil {
		dest = *cmd.Destination
	}
	destination := SubjectAccount(h.AccountPrefix, dest)
	var hold *messages.Hold
	var holdAddress string
	var holdMetadata map[string]string
	if cmd.Pending {
		hold = &messages.Hold{ID: messages.HoldIDOf(key), WalletID: cmd.WalletID, Destination: dest, Asset: cmd.Amount.Asset,
			Metadata: cmd.Metadata, Description: cmd.Description}
		if hold.Metadata == nil {
			hold.Metadata = map[string]string{}
		}
		holdAddress = HoldAddress(h.AccountPrefix, hold.ID)
		subject, _ := json.Marshal(map[string]string{"type": dest.Type, "identifier": dest.Identifier, "balance": dest.Balance})
		account := func(a string) string {
			b, _ := json.Marshal(struct {
				Type  string `json:"type"`
				Value string `json:"value"`
			}{"account", a})
			return string(b)
		}
		holdMetadata = map[string]string{
			MetadataSpecType:        SpecTypeHold,
			MetadataHoldWalletID:    cmd.WalletID,
			MetadataHoldID:          hold.ID,
			MetadataHoldAsset:       cmd.Amount.Asset,
			MetadataHoldDescription: cmd.Description,
			MetadataHoldSubject:     string(subject),
			MetadataDestination:     account(destination),
			MetadataVoidDestination: account(AccountAddress(h.AccountPrefix, cmd.WalletID, messages.MainBalance)),
		}
		for k, v := range cmd.Metadata {
			holdMetadata[MetadataCustomDataPrefix+k] = v
		}
		destination = holdAddress
	}
	req := ledgeradapter.TransactionRequest{
		Script: &ledgeradapter.Script{Plain: debitScript(sources, holdAddress, holdMetadata), Vars: map[string]string{
			"amount":      cmd.Amount.Asset + " " + cmd.Amount.Amount.String(),
			"destination": destination,
		}},
		Metadata:  transactionMetadata(cmd.Metadata),
		Reference: cmd.Reference,
	}
	if cmd.Timestamp != nil {
		req.Timestamp = cmd.Timestamp.UTC().Round(time.Microsecond)
	}
	return req, hold
}

// Handle applies a debit: its sources resolved (NOT_IDEMPOTENT,
// BALANCE_NOT_FOUND, INSUFFICIENT_FUNDS when every one expired), then one
// transaction, into a new hold when pending. A replay of the key with the
// same command is the ledger's Idempotency-Hit (replayed), with another
// command KEY_REUSED; funds that do not cover it, INSUFFICIENT_FUNDS.
func (h *DebitWallet) Handle(ctx context.Context, key string, cmd messages.DebitWallet) (Result, error) {
	sources, err := h.sources(ctx, cmd)
	var refusal *debitRefusal
	switch {
	case errors.As(err, &refusal):
		return rejected(messages.EventDebitWalletRejected, key, cmd.WalletID, refusal.code, refusal.message), nil
	case err != nil:
		return h.failure(key, cmd, "read balance", err)
	}
	req, hold := h.Request(key, cmd, sources)
	res, err := createTransaction(ctx, h.Ledger, h.LedgerName, req, key)
	if err != nil {
		return h.failure(key, cmd, "create transaction", err)
	}
	return h.applied(key, cmd, hold, res.Transaction, res.IdempotencyHit), nil
}

// applied is the outcome of a debit whose transaction is tx.
func (h *DebitWallet) applied(key string, cmd messages.DebitWallet, hold *messages.Hold, tx ledgeradapter.Transaction, replayed bool) Result {
	return succeeded(messages.EventWalletDebited, cmd.WalletID, replayed, messages.WalletDebited{
		Key: key, WalletID: cmd.WalletID, Amount: cmd.Amount, Ledger: h.LedgerName,
		TransactionID: tx.ID, Hold: hold, Replayed: replayed,
	})
}

func (h *DebitWallet) failure(key string, cmd messages.DebitWallet, op string, err error) (Result, error) {
	return txFailure(messages.EventDebitWalletRejected, key, cmd.WalletID, op, err)
}

// txFailure is the outcome of a money command's failed ledger call: a retry
// for what may pass, a rejection with its code for what will not.
func txFailure(event, key, wallet, op string, err error) (Result, error) {
	code := messages.CodeLedgerRejected
	switch {
	case errors.Is(err, ledgeradapter.ErrNoTimeLeft):
		return nil, &RetryError{Err: fmt.Errorf("%s: %w", op, err), NoTimeLeft: true}
	case ledgeradapter.IsRetryable(err) || isLedgerUnavailable(err):
		return nil, transient("%s: %w", op, err)
	case errors.Is(err, ledgeradapter.ErrIdempotencyConflict):
		code = messages.CodeKeyReused
	case errors.Is(err, ledgeradapter.ErrInsufficientFunds):
		code = messages.CodeInsufficientFunds
	}
	return rejected(event, key, wallet, code, fmt.Sprintf("%s: %v", op, err)), nil
}
