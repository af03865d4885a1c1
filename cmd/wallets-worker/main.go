// Command wallets-worker applies the wallets service's write commands
// (create-wallet, update-wallet, create-balance, credit-wallet, debit-wallet,
// confirm-hold, void-hold) from NATS JetStream to a Formance ledger. See the README, and `wallets-worker --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wallets-worker/wallets-worker/internal/cli"
)

func main() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	os.Exit(cli.Main(context.Background(), os.Args[1:], cli.Env{
		Stdout: os.Stdout, Stderr: os.Stderr, Signals: sigs,
	}))
}
