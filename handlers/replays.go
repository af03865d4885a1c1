package handlers

import (
	"context"
	"errors"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// ErrNotWritten is what the read-only ledgers of Wallets.Replays answer to
// a metadata write that their key did not make: its dry run found no
// idempotency hit, or the ledger makes no dry runs.
var ErrNotWritten = errors.New("handlers: read-only: not written")

// MetadataDryRunner makes a dry run of a metadata write under its key:
// IdempotencyHit when the key already applied the same write, nothing
// written either way (*ledgeradapter.Client and *ledgeradapter.Batcher).
type MetadataDryRunner interface {
	DryRunAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (ledgeradapter.WriteResult, error)
}

// Replays are the seven kinds of w over read-only views of its ledgers: a
// transaction or a metadata write goes as a dry run under its key (the
// ledger's idempotency hit, when the key applied it; a metadata write
// without one is ErrNotWritten, as is every metadata write when the ledger
// is no MetadataDryRunner), create-balance claims nothing, and no chain
// forms. A command they decide as replayed was applied before, as the kind
// would answer its redelivery; they change nothing, whatever they answer.
// The worker asks them about a command delivered past its retry budget,
// whose last delivery may have written without settling (its worker died
// between the write and the event).
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

// readOnly is a Ledger that reads and does not write: a metadata write is
// a dry run, whose idempotency hit is the write's replay.
type readOnly struct{ Ledger }

func (r readOnly) AddAccountMetadata(ctx context.Context, ledger, address string, metadata map[string]string, key string) (ledgeradapter.WriteResult, error) {
	d, ok := r.Ledger.(MetadataDryRunner)
	if !ok || key == "" {
		return ledgeradapter.WriteResult{}, ErrNotWritten
	}
	res, err := d.DryRunAccountMetadata(ctx, ledger, address, metadata, key)
	if err != nil {
		return ledgeradapter.WriteResult{}, err
	}
	if !res.IdempotencyHit {
		return ledgeradapter.WriteResult{}, ErrNotWritten
	}
	return res, nil
}

// dryRuns is a HoldLedger whose transactions are dry runs.
type dryRuns struct{ HoldLedger }

func (d dryRuns) CreateTransaction(ctx context.Context, ledger string, req ledgeradapter.TransactionRequest, key string) (ledgeradapter.TransactionResult, error) {
	req.DryRun = true
	return d.HoldLedger.CreateTransaction(ctx, ledger, req, key)
}
