package handlers

import "context"

type walletExclusiveKey struct{}

// WithWalletExclusive marks ctx as the context of a command that no other
// command of its wallet can run beside: until it is settled, no worker
// applies another command of that wallet. The worker marks the commands that
// hold their wallet's line (SPEC §8, run --order wallet), and only those: a
// command that went ahead of its line, or one applied with --order none, is
// not marked.
func WithWalletExclusive(ctx context.Context) context.Context {
	return context.WithValue(ctx, walletExclusiveKey{}, true)
}

// WalletExclusive reports whether ctx was marked by WithWalletExclusive. A
// handler may then skip what only guards against another command of the same
// wallet running at the same time: CreateBalance skips its claim, since a
// balance belongs to one wallet and its creates to that wallet's line.
func WalletExclusive(ctx context.Context) bool {
	v, _ := ctx.Value(walletExclusiveKey{}).(bool)
	return v
}
