package handlers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// TxLedger is what the money commands need of the ledger.
type TxLedger interface {
	GetAccount(ctx context.Context, ledger, address string) (ledgeradapter.Account, bool, error)
	CreateTransaction(ctx context.Context, ledger string, req ledgeradapter.TransactionRequest, idempotencyKey string) (ledgeradapter.TransactionResult, error)
}

// createTransaction is l.CreateTransaction, sent a second time, identical,
// when the ledger answers that the request's reference is taken (409
// CONFLICT). The ledger looks the Idempotency-Key up before it inserts the
// transaction, and its reference check comes at the insert: an attempt of
// the same command that was still running at the lookup (one given up on
// after a timeout) and committed since meets this one at the reference,
// not at the key. Sent again, the same key and body are that attempt's
// idempotency hit (replayed); a reference another command took conflicts
// again, and stays the refusal.
func createTransaction(ctx context.Context, l TxLedger, ledger string, req ledgeradapter.TransactionRequest, key string) (ledgeradapter.TransactionResult, error) {
	res, err := l.CreateTransaction(ctx, ledger, req, key)
	if err != nil && req.Reference != "" && errors.Is(err, ledgeradapter.ErrReferenceConflict) {
		return l.CreateTransaction(ctx, ledger, req, key)
	}
	return res, err
}

// Ledger metadata of the money commands (docs/wallets-writes.md).
const (
	// MetadataTransaction marks every transaction the wallets service makes.
	MetadataTransaction = "wallets/transaction"
	// MetadataCustomDataPrefix prefixes each of the caller's metadata keys.
	MetadataCustomDataPrefix = "wallets/custom_data_"
)

// creditScript renders the wallets service's credit script for sources, as
// it sends it: four-space indentation, one "@<account>" line per source, a
// newline after the last ")" (docs/wallets-writes.md, credit-wallet).
func creditScript(sources []string) string {
	var b strings.Builder
	b.WriteString("vars {\n    monetary $amount\n    account $destination\n}\n\nsend $amount (\n    source = {\n")
	for _, s := range sources {
		b.WriteString("        @" + s + "\n")
	}
	b.WriteString("    }\n    destination = $destination\n)\n")
	return b.String()
}

// SubjectAccount is the ledger account of a subject, as the wallets service
// resolves it: an ACCOUNT as given, a WALLET's balance (main when none is
// named) under the prefix, dashes removed.
func SubjectAccount(prefix string, s messages.WalletSubject) string {
	if s.Type == messages.SubjectTypeAccount {
		return s.Identifier
	}
	balance := s.Balance
	if balance == "" {
		balance = messages.MainBalance
	}
	return AccountAddress(prefix, s.Identifier, balance)
}

// transactionMetadata is the metadata of a transaction the wallets service
// makes: the mark, and each of the caller's entries under its prefix.
func transactionMetadata(md map[string]string) map[string]string {
	out := make(map[string]string, len(md)+1)
	for k, v := range md {
		out[MetadataCustomDataPrefix+k] = v
	}
	out[MetadataTransaction] = "true"
	return out
}

// CreditWallet decides credit-wallet commands: it writes exactly the
// transaction the wallets service writes for the same credit request.
//
// The ledger Idempotency-Key is the command's key itself, not a namespaced
// one: the wallets service replays a credit only through the ledger's
// Idempotency-Key, so the same request replayed through its API with the
// same key replays the command's transaction only if both sent that key
// (docs/wallets-writes.md, "Which Idempotency-Key to send the ledger").
type CreditWallet struct {
	Ledger        TxLedger
	LedgerName    string
	AccountPrefix string
	// Chain, when set, is the chain a credit to the main balance rides
	// (one transaction, no read): consecutive ones of a wallet go to the
	// ledger together.
	Chain *Chain
}

// CreditWalletKind is the credit-wallet kind, decided by h.
func CreditWalletKind(h *CreditWallet) Kind { return creditWalletKind{h: h} }

type creditWalletKind struct{ h *CreditWallet }

func (creditWalletKind) Name() string { return messages.KindCreditWallet }

func (k creditWalletKind) Decode(subject string, data []byte) (Command, error) {
	cmd, err := messages.DecodeCreditWallet(subject, data)
	return creditWalletCommand{h: k.h, cmd: cmd}, err
}

func (creditWalletKind) Reject(key, subject string, c Command, code messages.Code, message string) Result {
	wallet := ""
	if cc, ok := c.(creditWalletCommand); ok && code != messages.CodeInvalidCommand {
		wallet = cc.cmd.WalletID
	} else {
		wallet = walletOfSubject(subject)
	}
	return rejected(messages.EventCreditWalletRejected, messages.SafeHeaderValue(key, messages.MaxKeyBytes), wallet, code, message)
}

type creditWalletCommand struct {
	h   *CreditWallet
	cmd messages.CreditWallet
}

func (c creditWalletCommand) Handle(ctx context.Context, key string) (Result, error) {
	return c.h.Handle(ctx, key, c.cmd)
}

// Chain: a credit to a named balance reads it first, so it rides none.
func (c creditWalletCommand) Chain() *Chain {
	if c.cmd.Balance != "" {
		return nil
	}
	return c.h.Chain
}

func (c creditWalletCommand) link(key string) link {
	return link{ledger: c.h.LedgerName, request: c.h.Request(c.cmd), key: key,
		applied: func(tx ledgeradapter.Transaction, replayed bool) Result { return c.h.applied(key, c.cmd, tx, replayed) },
		failure: func(op string, err error) (Result, error) { return c.h.failure(key, c.cmd, op, err) }}
}

// Request is the ledger transaction of a credit (no ledger call).
func (h *CreditWallet) Request(cmd messages.CreditWallet) ledgeradapter.TransactionRequest {
	sources := []string{"world"}
	if len(cmd.Sources) > 0 {
		sources = sources[:0]
		for _, s := range cmd.Sources {
			sources = append(sources, SubjectAccount(h.AccountPrefix, s))
		}
	}
	balance := cmd.Balance
	if balance == "" {
		balance = messages.MainBalance
	}
	req := ledgeradapter.TransactionRequest{
		Script: &ledgeradapter.Script{Plain: creditScript(sources), Vars: map[string]string{
			"amount":      cmd.Amount.Asset + " " + cmd.Amount.Amount.String(),
			"destination": AccountAddress(h.AccountPrefix, cmd.WalletID, balance),
		}},
		Metadata:  transactionMetadata(cmd.Metadata),
		Reference: cmd.Reference,
	}
	if cmd.Timestamp != nil {
		// The wallets service's times have microsecond precision.
		req.Timestamp = cmd.Timestamp.UTC().Round(time.Microsecond)
	}
	return req
}

// Handle applies a credit: a named balance must exist (BALANCE_NOT_FOUND
// otherwise), then one transaction. A replay of the key with the same
// command is the ledger's Idempotency-Hit (replayed); with another command,
// KEY_REUSED.
func (h *CreditWallet) Handle(ctx context.Context, key string, cmd messages.CreditWallet) (Result, error) {
	balance := cmd.Balance
	if balance == "" {
		balance = messages.MainBalance
	}
	if cmd.Balance != "" {
		address := AccountAddress(h.AccountPrefix, cmd.WalletID, cmd.Balance)
		a, found, err := h.Ledger.GetAccount(ctx, h.LedgerName, address)
		if err != nil {
			return h.failure(key, cmd, "read balance", err)
		}
		if !found || a.Metadata[MetadataBalances] != "true" {
			return rejected(messages.EventCreditWalletRejected, key, cmd.WalletID, messages.CodeBalanceNotFound,
				fmt.Sprintf("balance %q of wallet %q does not exist", cmd.Balance, cmd.WalletID)), nil
		}
	}
	res, err := createTransaction(ctx, h.Ledger, h.LedgerName, h.Request(cmd), key)
	if err != nil {
		return h.failure(key, cmd, "create transaction", err)
	}
	return h.applied(key, cmd, res.Transaction, res.IdempotencyHit), nil
}

// applied is the outcome of a credit whose transaction is tx.
func (h *CreditWallet) applied(key string, cmd messages.CreditWallet, tx ledgeradapter.Transaction, replayed bool) Result {
	balance := cmd.Balance
	if balance == "" {
		balance = messages.MainBalance
	}
	return succeeded(messages.EventWalletCredited, cmd.WalletID, replayed, messages.WalletCredited{
		Key: key, WalletID: cmd.WalletID, Amount: cmd.Amount, Balance: balance, Ledger: h.LedgerName,
		TransactionID: tx.ID, Replayed: replayed,
	})
}

func (h *CreditWallet) failure(key string, cmd messages.CreditWallet, op string, err error) (Result, error) {
	return txFailure(messages.EventCreditWalletRejected, key, cmd.WalletID, op, err)
}

// success is the outcome of a command that succeeded, for the kinds other
// than create-balance: its event, wallet and body, and whether it replays
// an earlier one.
type success struct {
	event, wallet string
	body          any
	replayed      bool
}

func succeeded(event, wallet string, replayed bool, body any) Result {
	return success{event: event, wallet: wallet, body: body, replayed: replayed}
}

func (s success) Event() (string, string, any) { return s.event, s.wallet, s.body }
func (success) Code() messages.Code            { return "" }
func (success) Reason() string                 { return "" }
func (s success) Replayed() bool               { return s.replayed }
func (s success) Label() string {
	if s.replayed {
		return "replayed"
	}
	return "created"
}

// rejection is a <kind>-rejected outcome of the commands other than
// create-balance.
type rejection struct {
	event string
	body  messages.CommandRejected
}

func rejected(event, key, wallet string, code messages.Code, message string) Result {
	return rejection{event: event, body: messages.CommandRejected{Key: key, WalletID: wallet, Code: code, Message: message}}
}

func (r rejection) Event() (string, string, any) { return r.event, r.body.WalletID, r.body }
func (r rejection) Code() messages.Code          { return r.body.Code }
func (r rejection) Reason() string               { return r.body.Message }
func (r rejection) Label() string                { return labelOf(r.body.Code) }
func (rejection) Replayed() bool                 { return false }
