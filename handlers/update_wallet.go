package handlers

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// UpdateWallet decides update-wallet commands as the wallets service decides
// PATCH /wallets/{id}: the main account's whole metadata written again with
// the new custom data merged over it, under the command's key as the ledger
// Idempotency-Key (the service replays an update only through the ledger's
// key, so both sides must send the same one). A replay is the ledger's hit;
// if the wallet's metadata changed in between, the body differs and the
// ledger refuses the key: KEY_REUSED (the wallets service answers 500).
//
// Its write goes to the ledger in a request of its own when Ledger can send
// one alone (SoloWriter, a Batcher): the replay is known only by the
// ledger's idempotency hit, which the answer to a bulk does not carry.
type UpdateWallet struct {
	Ledger        Ledger
	LedgerName    string
	AccountPrefix string
}

// SoloWriter is a Ledger that batches writes (a Batcher) and can send one
// in a request of its own, whose answer says whether it was an idempotency
// hit.
type SoloWriter interface {
	AddAccountMetadataAlone(ctx context.Context, ledger, address string, metadata map[string]string, idempotencyKey string) (ledgeradapter.WriteResult, error)
}

// UpdateWalletKind is the update-wallet kind, decided by h.
func UpdateWalletKind(h *UpdateWallet) Kind { return updateWalletKind{h: h} }

type updateWalletKind struct{ h *UpdateWallet }

func (updateWalletKind) Name() string { return messages.KindUpdateWallet }

func (k updateWalletKind) Decode(subject string, data []byte) (Command, error) {
	cmd, err := messages.DecodeUpdateWallet(subject, data)
	return updateWalletCommand{h: k.h, cmd: cmd}, err
}

func (updateWalletKind) Reject(key, subject string, _ Command, code messages.Code, message string) Result {
	return rejected(messages.EventUpdateWalletRejected, messages.SafeHeaderValue(key, messages.MaxKeyBytes), walletOfSubject(subject), code, message)
}

type updateWalletCommand struct {
	h   *UpdateWallet
	cmd messages.UpdateWallet
}

func (c updateWalletCommand) Handle(ctx context.Context, key string) (Result, error) {
	return c.h.Handle(ctx, key, c.cmd)
}

// Handle merges the command's metadata over the wallet's.
func (h *UpdateWallet) Handle(ctx context.Context, key string, cmd messages.UpdateWallet) (Result, error) {
	address := AccountAddress(h.AccountPrefix, cmd.WalletID, messages.MainBalance)
	a, found, err := h.Ledger.GetAccount(ctx, h.LedgerName, address)
	if err != nil {
		return txFailure(messages.EventUpdateWalletRejected, key, cmd.WalletID, "read the wallet's account", err)
	}
	if !found || a.Metadata[MetadataSpecType] != SpecTypePrimary {
		return rejected(messages.EventUpdateWalletRejected, key, cmd.WalletID, messages.CodeWalletNotFound,
			fmt.Sprintf("wallet %q does not exist", cmd.WalletID)), nil
	}
	md := maps.Clone(a.Metadata)
	for k, v := range cmd.Metadata {
		md[MetadataCustomDataPrefix+k] = v
	}
	write := h.Ledger.AddAccountMetadata
	if s, ok := h.Ledger.(SoloWriter); ok {
		write = s.AddAccountMetadataAlone
	}
	res, err := write(ctx, h.LedgerName, address, md, key)
	if err != nil {
		return txFailure(messages.EventUpdateWalletRejected, key, cmd.WalletID, "write the wallet's account", err)
	}
	custom := map[string]string{}
	for k, v := range md {
		if name, ok := strings.CutPrefix(k, MetadataCustomDataPrefix); ok {
			custom[name] = v
		}
	}
	return succeeded(messages.EventWalletUpdated, cmd.WalletID, res.IdempotencyHit, messages.WalletUpdated{
		Key: key, WalletID: cmd.WalletID, Metadata: custom, Ledger: h.LedgerName, Replayed: res.IdempotencyHit,
	}), nil
}
