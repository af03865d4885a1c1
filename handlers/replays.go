package handlers

import (
	"context"
	"errors"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// ErrNotWritten is what the read-only ledgers of Wallets.Replays answer to
// a write they cannot make a dry run of (a metadata write).
var ErrNotWritten = errors.New("handlers: read-only: not written")

// Replays are the seven kinds of w over read-only views of its ledgers: a
// transaction goes as a dry run under its key (the ledger's idempotency
// hit, when the key applied it), a metadata write is refused
// (ErrNotWritten), create-balance claims nothing, and no chain forms. A
// command they decide as replayed was applied before, as the kind would
// answer its redelivery; they change nothing, whatever they answer. The
// worker asks them about a command delivered past its retry budget, whose
// last delivery may have written without settling (its worker died between
// the write and the event).
func (w Wallets) Replays() Kinds {
	ro := w
	if w.Balances != nil {
		b := *w.Balances
		b.Ledger, b.Claim = readOnly{b.Ledger}, nil
		ro.Balances = &b
	}
	if w.Writes != nil {
		ro.Writes = readOnly{w.Writes}
	}
	if w.Transactions != nil {
		ro.Transactions = dryRuns{w.Transactions}
	}
	ro.ChainLength = 1
	return ro.Kinds()
}

// readOnly is a Ledger that reads and does not write.
type readOnly struct{ Ledger }

func (readOnly) AddAccountMetadata(context.Context, string, string, map[string]string, string) (ledgeradapter.WriteResult, error) {
	return ledgeradapter.WriteResult{}, ErrNotWritten
}

// dryRuns is a HoldLedger whose transactions are dry runs.
type dryRuns struct{ HoldLedger }

func (d dryRuns) CreateTransaction(ctx context.Context, ledger string, req ledgeradapter.TransactionRequest, key string) (ledgeradapter.TransactionResult, error) {
	req.DryRun = true
	return d.HoldLedger.CreateTransaction(ctx, ledger, req, key)
}
