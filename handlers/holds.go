package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// HoldLedger is what the hold commands need of the ledger.
type HoldLedger interface {
	TxLedger
	ListTransactions(ctx context.Context, ledger string, filter map[string]any, pageSize int, cursor string) (ledgeradapter.TransactionsPage, error)
}

// confirmScript and voidScript render the wallets service's scripts
// (docs/wallets-writes.md, confirm-hold and void-hold): two-space
// indentation; confirm ends with a newline, void does not.
func confirmScript(final bool, asset string) string {
	var b strings.Builder
	b.WriteString("vars {\n  account $hold\n  account $dest\n")
	if final {
		b.WriteString("  account $void_destination\n")
	}
	b.WriteString("  monetary $amount\n}\n\nsend $amount (\n  source = $hold\n  destination = $dest\n)\n")
	if final {
		b.WriteString("send [" + asset + " *] (\n  source = $hold\n  destination = $void_destination\n)\n")
	}
	return b.String()
}

func voidScript(asset string, postings []ledgeradapter.Posting) string {
	var b strings.Builder
	b.WriteString("vars {\n  account $hold\n}\n\nsend [" + asset + " *] (\n  source = $hold\n  destination = {\n")
	for _, p := range postings {
		b.WriteString("    max [" + p.Asset + " " + p.Amount.String() + "] to @" + p.Source + "\n")
	}
	b.WriteString("    remaining kept\n  }\n)")
	return b.String()
}

// hold is a hold as the wallets service reads it from its account.
type hold struct {
	address, walletID, asset string
	destination              messages.WalletSubject
	remaining                *big.Int
}

// readHold reads a hold's account; nil when there is no hold of that ID.
func readHold(ctx context.Context, l TxLedger, ledger, prefix, holdID string) (*hold, error) {
	address := HoldAddress(prefix, holdID)
	a, found, err := l.GetAccount(ctx, ledger, address)
	if err != nil || !found || a.Metadata[MetadataSpecType] != SpecTypeHold {
		return nil, err
	}
	h := &hold{address: address, walletID: a.Metadata[MetadataHoldWalletID], asset: a.Metadata[MetadataHoldAsset], remaining: new(big.Int)}
	if err := json.Unmarshal([]byte(a.Metadata[MetadataHoldSubject]), &h.destination); err != nil {
		return nil, fmt.Errorf("hold %s: its destination cannot be read: %w", holdID, err)
	}
	if v, ok := a.Volumes[h.asset]; ok {
		h.remaining = v.Balance
	}
	return h, nil
}

// holdCommand is what confirm and void share: the command's kind names,
// and how a write that the hold's state refuses is told from a replay of
// this very command.
type holdCommand struct {
	ledger                 TxLedger
	ledgerName, prefix     string
	settledEvent, rejEvent string
}

func (c holdCommand) reject(key, wallet string, code messages.Code, msg string) (Result, error) {
	return rejected(c.rejEvent, key, wallet, code, msg), nil
}

// replayOr answers a request that the hold's state refuses (closed, or
// short of the amount): the wallets service refuses it, but when this very
// request was already applied under the key, a redelivery or republish of a
// command that succeeded, it is a replay. A dry run with the key tells,
// without writing.
func (c holdCommand) replayOr(ctx context.Context, key string, req ledgeradapter.TransactionRequest, ev messages.HoldSettled, code messages.Code, msg string) (Result, error) {
	req.DryRun = true
	res, err := c.ledger.CreateTransaction(ctx, c.ledgerName, req, key)
	switch {
	case err == nil && res.IdempotencyHit:
		ev.TransactionID, ev.Replayed = res.Transaction.ID, true
		return succeeded(c.settledEvent, ev.WalletID, true, ev), nil
	case errors.Is(err, ledgeradapter.ErrIdempotencyConflict):
		return c.reject(key, ev.WalletID, messages.CodeKeyReused, "the key made another transaction: "+err.Error())
	case err == nil, errors.Is(err, ledgeradapter.ErrInsufficientFunds), errors.Is(err, ledgeradapter.ErrNoPostings):
		return c.reject(key, ev.WalletID, code, msg)
	}
	return txFailure(c.rejEvent, key, ev.WalletID, "look the key up", err)
}

func (c holdCommand) apply(ctx context.Context, key string, req ledgeradapter.TransactionRequest, ev messages.HoldSettled) (Result, error) {
	res, err := c.ledger.CreateTransaction(ctx, c.ledgerName, req, key)
	if err != nil {
		return txFailure(c.rejEvent, key, ev.WalletID, "create transaction", err)
	}
	ev.TransactionID, ev.Replayed = res.Transaction.ID, res.IdempotencyHit
	return succeeded(c.settledEvent, ev.WalletID, res.IdempotencyHit, ev), nil
}

// ConfirmHold decides confirm-hold commands as the wallets service decides
// POST /holds/{id}/confirm, with the command's key as the ledger
// Idempotency-Key (for the reason given on CreditWallet), and one
// difference: where the service answers HOLD_CLOSED or INSUFFICIENT_FUND to
// a replay of a confirm that emptied or drew on the hold, a replay of the
// same command replays (see replayOr, and replayAll for a confirm of "all
// that is left").
type ConfirmHold struct {
	Ledger        HoldLedger
	LedgerName    string
	AccountPrefix string
}

// ConfirmHoldKind is the confirm-hold kind, decided by h.
func ConfirmHoldKind(h *ConfirmHold) Kind { return confirmHoldKind{h: h} }

type confirmHoldKind struct{ h *ConfirmHold }

func (confirmHoldKind) Name() string { return messages.KindConfirmHold }

func (k confirmHoldKind) Decode(subject string, data []byte) (Command, error) {
	cmd, err := messages.DecodeConfirmHold(subject, data)
	return confirmHoldCommand{h: k.h, cmd: cmd}, err
}

func (confirmHoldKind) Reject(key, subject string, _ Command, code messages.Code, message string) Result {
	return rejected(messages.EventConfirmHoldRejected, messages.SafeHeaderValue(key, messages.MaxKeyBytes), walletOfSubject(subject), code, message)
}

type confirmHoldCommand struct {
	h   *ConfirmHold
	cmd messages.ConfirmHold
}

func (c confirmHoldCommand) Handle(ctx context.Context, key string) (Result, error) {
	return c.h.Handle(ctx, key, c.cmd)
}

func (h *ConfirmHold) common() holdCommand {
	return holdCommand{ledger: h.Ledger, ledgerName: h.LedgerName, prefix: h.AccountPrefix,
		settledEvent: messages.EventHoldConfirmed, rejEvent: messages.EventConfirmHoldRejected}
}

// Request is the transaction that confirms amount of the hold.
func (h *ConfirmHold) Request(hd *hold, amount *big.Int, final bool) ledgeradapter.TransactionRequest {
	vars := map[string]string{
		"hold":   hd.address,
		"dest":   SubjectAccount(h.AccountPrefix, hd.destination),
		"amount": hd.asset + " " + amount.String(),
	}
	if final {
		vars["void_destination"] = AccountAddress(h.AccountPrefix, hd.walletID, messages.MainBalance)
	}
	return ledgeradapter.TransactionRequest{
		Script:   &ledgeradapter.Script{Plain: confirmScript(final, hd.asset), Vars: vars},
		Metadata: transactionMetadata(nil),
	}
}

// Handle confirms part or all of a hold: HOLD_NOT_FOUND, HOLD_CLOSED when
// nothing is left, INSUFFICIENT_FUNDS for more than is left (each a replay
// instead when this command already applied).
func (h *ConfirmHold) Handle(ctx context.Context, key string, cmd messages.ConfirmHold) (Result, error) {
	c := h.common()
	hd, err := readHold(ctx, h.Ledger, h.LedgerName, h.AccountPrefix, cmd.HoldID)
	switch {
	case err != nil:
		return txFailure(c.rejEvent, key, cmd.WalletID, "read hold", err)
	case hd == nil:
		return c.reject(key, cmd.WalletID, messages.CodeHoldNotFound, fmt.Sprintf("hold %s does not exist", cmd.HoldID))
	case hd.walletID != cmd.WalletID:
		return c.reject(key, cmd.WalletID, messages.CodeInvalidCommand,
			fmt.Sprintf("invalid command: subject: hold %s is wallet %q's, not %q's", cmd.HoldID, hd.walletID, cmd.WalletID))
	}
	ev := messages.HoldSettled{Key: key, WalletID: cmd.WalletID, HoldID: cmd.HoldID, Final: cmd.Final, Ledger: h.LedgerName}
	all := cmd.Amount == nil || cmd.Amount.Sign() == 0
	switch {
	case all && hd.remaining.Sign() <= 0:
		return h.replayAll(ctx, key, hd, cmd, ev)
	case all:
		ev.Amount = new(big.Int).Set(hd.remaining)
		return c.apply(ctx, key, h.Request(hd, ev.Amount, cmd.Final), ev)
	}
	ev.Amount = cmd.Amount
	req := h.Request(hd, cmd.Amount, cmd.Final)
	switch {
	case hd.remaining.Sign() <= 0:
		return c.replayOr(ctx, key, req, ev, messages.CodeHoldClosed, fmt.Sprintf("hold %s is closed", cmd.HoldID))
	case cmd.Amount.Cmp(hd.remaining) > 0:
		return c.replayOr(ctx, key, req, ev, messages.CodeInsufficientFunds,
			fmt.Sprintf("hold %s has %s %s left, less than %s", cmd.HoldID, hd.remaining, hd.asset, cmd.Amount))
	}
	return c.apply(ctx, key, req, ev)
}

// replayAll answers a confirm of all that is left on a hold with nothing
// left: HOLD_CLOSED, as the wallets service answers, unless this very
// command emptied the hold (a redelivery after its write landed, its event
// not yet stored). What it confirmed is gone from the hold, but the
// transaction that emptied the hold is the newest that moved anything out
// of it (only a void of nothing, postings of zero, can come after it), and
// if it moved everything to the hold's destination it is what a confirm of
// all would have written: that request, tried under the key in a dry run,
// is the ledger's hit when this command wrote it. Any other transaction (a
// void, a confirm that voided the rest, or none) is not a confirm of all:
// HOLD_CLOSED. A list or two, and at most one dry run.
func (h *ConfirmHold) replayAll(ctx context.Context, key string, hd *hold, cmd messages.ConfirmHold, ev messages.HoldSettled) (Result, error) {
	c := h.common()
	closed := func() (Result, error) {
		return c.reject(key, cmd.WalletID, messages.CodeHoldClosed, fmt.Sprintf("hold %s is closed", cmd.HoldID))
	}
	dest := SubjectAccount(h.AccountPrefix, hd.destination)
	filter := map[string]any{"$match": map[string]any{"source": hd.address}}
	for cursor := ""; ; {
		page, err := h.Ledger.ListTransactions(ctx, h.LedgerName, filter, holdTransactionsPage, cursor)
		if err != nil {
			return txFailure(c.rejEvent, key, cmd.WalletID, "list the hold's transactions", err)
		}
		for _, tx := range page.Data {
			toDest, elsewhere := emptiedInto(tx, hd, dest)
			switch {
			case toDest == nil && !elsewhere:
				continue // moved nothing out of the hold
			case elsewhere || toDest.Sign() <= 0:
				return closed()
			}
			if v, ok := tx.PostCommitVolumes[hd.address][hd.asset]; ok && v.Balance != nil && v.Balance.Sign() != 0 {
				return closed() // it did not empty the hold
			}
			req := h.Request(hd, toDest, cmd.Final)
			req.DryRun = true
			res, err := h.Ledger.CreateTransaction(ctx, h.LedgerName, req, key)
			switch {
			case err == nil && res.IdempotencyHit:
				ev.Amount, ev.TransactionID, ev.Replayed = toDest, res.Transaction.ID, true
				return succeeded(c.settledEvent, ev.WalletID, true, ev), nil
			case err == nil, errors.Is(err, ledgeradapter.ErrIdempotencyConflict),
				errors.Is(err, ledgeradapter.ErrInsufficientFunds), errors.Is(err, ledgeradapter.ErrNoPostings):
				return closed()
			}
			return txFailure(c.rejEvent, key, cmd.WalletID, "look the key up", err)
		}
		if page.Next == "" {
			return closed()
		}
		cursor = page.Next
	}
}

// holdTransactionsPage is the page size replayAll lists a hold's
// transactions with: a void of nothing may come after the transaction it
// looks for, rarely more than one.
const holdTransactionsPage = 5

// emptiedInto is what tx moved out of the hold hd: the amount it sent to
// dest (nil for none), and whether it sent anything elsewhere. Postings of
// zero do not count.
func emptiedInto(tx ledgeradapter.Transaction, hd *hold, dest string) (toDest *big.Int, elsewhere bool) {
	for _, p := range tx.Postings {
		switch {
		case p.Source != hd.address || p.Asset != hd.asset || p.Amount == nil || p.Amount.Sign() == 0:
		case p.Destination == dest && toDest == nil:
			toDest = p.Amount
		default:
			elsewhere = true
		}
	}
	return toDest, elsewhere
}

// VoidHold decides void-hold commands as the wallets service decides
// POST /holds/{id}/void, with the command's key as the ledger
// Idempotency-Key, and one difference: a replay of a void that closed the
// hold replays (its script depends only on the debit that made the hold),
// where the service answers HOLD_CLOSED.
type VoidHold struct {
	Ledger        HoldLedger
	LedgerName    string
	AccountPrefix string
}

// VoidHoldKind is the void-hold kind, decided by h.
func VoidHoldKind(h *VoidHold) Kind { return voidHoldKind{h: h} }

type voidHoldKind struct{ h *VoidHold }

func (voidHoldKind) Name() string { return messages.KindVoidHold }

func (k voidHoldKind) Decode(subject string, data []byte) (Command, error) {
	cmd, err := messages.DecodeVoidHold(subject, data)
	return voidHoldCommand{h: k.h, cmd: cmd}, err
}

func (voidHoldKind) Reject(key, subject string, _ Command, code messages.Code, message string) Result {
	return rejected(messages.EventVoidHoldRejected, messages.SafeHeaderValue(key, messages.MaxKeyBytes), walletOfSubject(subject), code, message)
}

type voidHoldCommand struct {
	h   *VoidHold
	cmd messages.VoidHold
}

func (c voidHoldCommand) Handle(ctx context.Context, key string) (Result, error) {
	return c.h.Handle(ctx, key, c.cmd)
}

// Handle voids a hold: everything left goes back to the sources of the
// debit that made it, each up to what it gave.
func (h *VoidHold) Handle(ctx context.Context, key string, cmd messages.VoidHold) (Result, error) {
	c := holdCommand{ledger: h.Ledger, ledgerName: h.LedgerName, prefix: h.AccountPrefix,
		settledEvent: messages.EventHoldVoided, rejEvent: messages.EventVoidHoldRejected}
	address := HoldAddress(h.AccountPrefix, cmd.HoldID)
	page, err := h.Ledger.ListTransactions(ctx, h.LedgerName, map[string]any{"$and": []any{
		map[string]any{"$match": map[string]any{"destination": address}},
	}}, 0, "")
	if err != nil {
		return txFailure(c.rejEvent, key, cmd.WalletID, "list the hold's transactions", err)
	}
	if len(page.Data) == 0 {
		return c.reject(key, cmd.WalletID, messages.CodeHoldNotFound, fmt.Sprintf("hold %s does not exist", cmd.HoldID))
	}
	if len(page.Data) > 1 {
		return c.reject(key, cmd.WalletID, messages.CodeLedgerRejected, fmt.Sprintf("hold %s: expected 1 transaction, got %d", cmd.HoldID, len(page.Data)))
	}
	hd, err := readHold(ctx, h.Ledger, h.LedgerName, h.AccountPrefix, cmd.HoldID)
	switch {
	case err != nil:
		return txFailure(c.rejEvent, key, cmd.WalletID, "read hold", err)
	case hd == nil:
		return c.reject(key, cmd.WalletID, messages.CodeHoldNotFound, fmt.Sprintf("hold %s does not exist", cmd.HoldID))
	case hd.walletID != cmd.WalletID:
		return c.reject(key, cmd.WalletID, messages.CodeInvalidCommand,
			fmt.Sprintf("invalid command: subject: hold %s is wallet %q's, not %q's", cmd.HoldID, hd.walletID, cmd.WalletID))
	}
	req := ledgeradapter.TransactionRequest{
		Script:   &ledgeradapter.Script{Plain: voidScript(hd.asset, page.Data[0].Postings), Vars: map[string]string{"hold": address}},
		Metadata: transactionMetadata(nil),
	}
	ev := messages.HoldSettled{Key: key, WalletID: cmd.WalletID, HoldID: cmd.HoldID, Ledger: h.LedgerName}
	if hd.remaining.Sign() <= 0 {
		return c.replayOr(ctx, key, req, ev, messages.CodeHoldClosed, fmt.Sprintf("hold %s is closed", cmd.HoldID))
	}
	return c.apply(ctx, key, req, ev)
}
