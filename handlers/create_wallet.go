package handlers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// Metadata of a wallet's main account (docs/wallets-writes.md).
const (
	MetadataSpecType          = "wallets/spec/type"
	SpecTypePrimary           = "wallets.primary"
	MetadataWalletName        = "wallets/name"
	MetadataCreatedAt         = "wallets/createdAt"
	MetadataCreateRequestHash = "wallets/createRequestHash"
	MetadataCreateResponse    = "wallets/createResponse"
)

// CreateWalletKeyPrefix namespaces the ledger Idempotency-Key of a wallet's
// creation. The wallets service sends the client's key, but it decides a
// replay from the main account's fingerprint, never from the ledger's key
// (its creation time makes every attempt's body differ), so a namespaced
// key replays just as well, and keeps a client's key used for another kind
// of command from colliding with it in the ledger's one key space.
const CreateWalletKeyPrefix = "wallets-worker/create-wallet/v1/"

// CreateWallet decides create-wallet commands as the wallets service decides
// POST /wallets with an Idempotency-Key.
type CreateWallet struct {
	Ledger        Ledger
	LedgerName    string
	AccountPrefix string
	// Now is the clock of createdAt (time.Now when nil).
	Now func() time.Time
}

// CreateWalletKind is the create-wallet kind, decided by h.
func CreateWalletKind(h *CreateWallet) Kind { return createWalletKind{h: h} }

type createWalletKind struct{ h *CreateWallet }

func (createWalletKind) Name() string { return messages.KindCreateWallet }

func (k createWalletKind) Decode(subject string, data []byte) (Command, error) {
	cmd, err := messages.DecodeCreateWallet(subject, data)
	return createWalletCommand{h: k.h, cmd: cmd}, err
}

func (createWalletKind) Reject(key, subject string, _ Command, code messages.Code, message string) Result {
	return rejected(messages.EventCreateWalletRejected, messages.SafeHeaderValue(key, messages.MaxKeyBytes), walletOfSubject(subject), code, message)
}

type createWalletCommand struct {
	h   *CreateWallet
	cmd messages.CreateWallet
}

func (c createWalletCommand) Handle(ctx context.Context, key string) (Result, error) {
	return c.h.Handle(ctx, key, c.cmd)
}

// Fingerprint is the wallets service's wallets/createRequestHash of a create
// request: the hex SHA-256 of {"name","metadata"} as Go's encoding/json
// writes it (HTML characters escaped, keys sorted, metadata {} when none).
func Fingerprint(cmd messages.CreateWallet) string {
	md := cmd.Metadata
	if md == nil {
		md = map[string]string{}
	}
	b, _ := json.Marshal(struct {
		Name     string            `json:"name"`
		Metadata map[string]string `json:"metadata"`
	}{cmd.Name, md}) // plain strings: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Handle creates the wallet the key derives, or replays it: the main
// account holding this request's fingerprint is a replay (answered from
// its snapshot, nothing written), another fingerprint KEY_REUSED, an account
// there that is not a wallet CONFLICT.
func (h *CreateWallet) Handle(ctx context.Context, key string, cmd messages.CreateWallet) (Result, error) {
	reject := func(code messages.Code, msg string) (Result, error) {
		return rejected(messages.EventCreateWalletRejected, key, cmd.WalletID, code, msg), nil
	}
	if id := messages.WalletIDOf(key); cmd.WalletID != id {
		return reject(messages.CodeInvalidCommand, fmt.Sprintf("invalid command: subject: the wallet of key %q is %s, not %q", key, id, cmd.WalletID))
	}
	address := AccountAddress(h.AccountPrefix, cmd.WalletID, messages.MainBalance)
	fp := Fingerprint(cmd)
	decide := func(md map[string]string) (Result, error) {
		switch {
		case md[MetadataSpecType] != SpecTypePrimary:
			return reject(messages.CodeConflict, fmt.Sprintf("the wallet's address %s belongs to an account that is not a wallet", address))
		case md[MetadataCreateRequestHash] != fp:
			return reject(messages.CodeKeyReused, "the key created this wallet with another name or metadata")
		}
		var w messages.Wallet
		if err := json.Unmarshal([]byte(md[MetadataCreateResponse]), &w); err != nil {
			return reject(messages.CodeLedgerRejected, fmt.Sprintf("the wallet's stored response cannot be read: %v", err))
		}
		return succeeded(messages.EventWalletCreated, cmd.WalletID, true,
			messages.WalletCreated{Key: key, WalletID: cmd.WalletID, Wallet: w, Ledger: h.LedgerName, Replayed: true}), nil
	}

	a, found, err := h.Ledger.GetAccount(ctx, h.LedgerName, address)
	if err != nil {
		return h.failure(key, cmd, "read the wallet's account", err)
	}
	if found {
		return decide(a.Metadata)
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	w := messages.Wallet{ID: cmd.WalletID, Name: cmd.Name, Metadata: cmd.Metadata, CreatedAt: now().UTC(), Ledger: h.LedgerName}
	if w.Metadata == nil {
		w.Metadata = map[string]string{}
	}
	w.Balances.Main.Assets = map[string]any{}
	snapshot, _ := json.Marshal(w) // plain fields: cannot fail
	md := map[string]string{
		MetadataSpecType:          SpecTypePrimary,
		MetadataWalletName:        cmd.Name,
		MetadataWalletID:          cmd.WalletID,
		MetadataBalances:          "true",
		MetadataBalanceName:       messages.MainBalance,
		MetadataCreatedAt:         w.CreatedAt.Format(time.RFC3339Nano),
		MetadataCreateRequestHash: fp,
		MetadataCreateResponse:    string(snapshot),
	}
	for k, v := range cmd.Metadata {
		md[MetadataCustomDataPrefix+k] = v
	}
	if _, err := h.Ledger.AddAccountMetadata(ctx, h.LedgerName, address, md, CreateWalletKeyPrefix+key); err != nil {
		// A write that failed may be an earlier attempt's or a racing
		// delivery's success under another creation time: look again.
		a, found, rerr := h.Ledger.GetAccount(ctx, h.LedgerName, address)
		switch {
		case rerr != nil:
			// Whether the wallet exists is unknown: the read decides, so
			// that a refused write (another attempt's creation time) is not
			// taken for good while the wallet may be there.
			return h.failure(key, cmd, "read the wallet's account after its write failed ("+err.Error()+")", rerr)
		case found:
			return decide(a.Metadata)
		}
		return h.failure(key, cmd, "write the wallet's account", err)
	}
	return succeeded(messages.EventWalletCreated, cmd.WalletID, false,
		messages.WalletCreated{Key: key, WalletID: cmd.WalletID, Wallet: w, Ledger: h.LedgerName}), nil
}

func (h *CreateWallet) failure(key string, cmd messages.CreateWallet, op string, err error) (Result, error) {
	switch {
	case errors.Is(err, ledgeradapter.ErrNoTimeLeft):
		return nil, &RetryError{Err: fmt.Errorf("%s: %w", op, err), NoTimeLeft: true}
	case ledgeradapter.IsRetryable(err) || isLedgerUnavailable(err):
		return nil, transient("%s: %w", op, err)
	}
	return rejected(messages.EventCreateWalletRejected, key, cmd.WalletID, messages.CodeLedgerRejected, fmt.Sprintf("%s: %v", op, err)), nil
}
