package ledgeradapter_test

import (
	"context"
	"fmt"
	"net/http/httptest"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// Example writes a balance's metadata twice under one idempotency key, as
// two attempts of one command would, against the embedded ledger.
func Example() {
	client, stop := exampleLedger()
	defer stop()
	ctx := context.Background()

	md := map[string]string{"wallets/balances": "true", "wallets/balances/name": "gift"}
	for attempt := 1; attempt <= 2; attempt++ {
		res, err := client.AddAccountMetadata(ctx, "wallets-002", "wallets:w1:gift", md, "command-42")
		fmt.Printf("attempt %d: err=%v hit=%v\n", attempt, err, res.IdempotencyHit)
	}

	acc, found, err := client.GetAccount(ctx, "wallets-002", "wallets:w1:gift")
	fmt.Println(found, err, acc.Metadata["wallets/balances/name"])

	_, err = client.AddAccountMetadata(ctx, "wallets-002", "wallets:w1:gift", map[string]string{"other": "x"}, "command-42")
	fmt.Println("reused key, retryable:", ledgeradapter.IsRetryable(err))

	_, _, err = client.GetAccount(ctx, "wallets-002", "wallets::gift")
	fmt.Println(err)
	// Output:
	// attempt 1: err=<nil> hit=false
	// attempt 2: err=<nil> hit=true
	// true <nil> gift
	// reused key, retryable: false
	// ledgeradapter: GetAccount: ledgeradapter: invalid account address: "wallets::gift" does not match ^[a-zA-Z0-9_-]+(:[a-zA-Z0-9_-]+)*$
}

// exampleLedger serves the embedded ledger, in memory, over HTTP, creates the
// ledger wallets-002 in it, and returns a client of it and a func that stops
// it all.
func exampleLedger() (*ledgeradapter.Client, func()) {
	ledger, err := embeddedledger.Open("") // in memory
	if err != nil {
		panic(err)
	}
	srv := httptest.NewServer(ledger.Handler())
	stop := func() { srv.Close(); _ = ledger.Close() }
	client, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: srv.URL})
	if err == nil {
		err = client.EnsureLedger(context.Background(), "wallets-002")
	}
	if err != nil {
		stop()
		panic(err)
	}
	return client, stop
}
