package handlers

import (
	"context"

	"github.com/wallets-worker/wallets-worker/messages"
)

// CreateBalanceHandler decides CreateBalance commands; *CreateBalance is the
// one that writes to the ledger.
type CreateBalanceHandler interface {
	Handle(ctx context.Context, key string, cmd messages.CreateBalance) (Outcome, error)
}

// CreateBalanceKind is the create-balance kind (SPEC §3), decided by h.
func CreateBalanceKind(h CreateBalanceHandler) Kind { return createBalanceKind{h: h} }

type createBalanceKind struct{ h CreateBalanceHandler }

func (createBalanceKind) Name() string { return messages.KindCreateBalance }

// Decode returns the command as far as it could be read, also on error, so
// that its rejection names what it can.
func (k createBalanceKind) Decode(subject string, data []byte) (Command, error) {
	cmd, err := messages.DecodeCreateBalance(subject, data)
	return createBalanceCommand{h: k.h, cmd: cmd}, err
}

// Reject builds a balance-create-rejected outcome. The key is made safe for
// a header; an invalid command's walletID is not to be trusted (it may even
// contradict the subject), so its rejection goes where the producer sent the
// command: to the subject's wallet, or to UnknownWallet when it has none.
func (createBalanceKind) Reject(key, subject string, c Command, code messages.Code, message string) Result {
	var cmd messages.CreateBalance
	if cc, ok := c.(createBalanceCommand); ok {
		cmd = cc.cmd
	}
	o := Reject(messages.SafeHeaderValue(key, messages.MaxKeyBytes), cmd, code, message)
	if code == messages.CodeInvalidCommand {
		o.Rejected.WalletID = walletOfSubject(subject)
	}
	return o
}

type createBalanceCommand struct {
	h   CreateBalanceHandler
	cmd messages.CreateBalance
}

func (c createBalanceCommand) Handle(ctx context.Context, key string) (Result, error) {
	o, err := c.h.Handle(ctx, key, c.cmd)
	if err != nil {
		return nil, err
	}
	return o, nil
}
