package ledgeradapter_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// ExampleClient_Bulk writes three balances in one request, one of them
// under a key the ledger already holds for another write, and reads them
// back in one request.
func ExampleClient_Bulk() {
	client, stop := exampleLedger()
	defer stop()
	ctx := context.Background()
	if _, err := client.AddAccountMetadata(ctx, "wallets-002", "wallets:w0:gift", map[string]string{"n": "0"}, "used"); err != nil {
		panic(err)
	}

	results, err := client.Bulk(ctx, "wallets-002", []ledgeradapter.BulkAddMetadata{
		{Address: "wallets:w1:gift", Metadata: map[string]string{"n": "1"}, IdempotencyKey: "k1"},
		{Address: "wallets:w2:gift", Metadata: map[string]string{"n": "2"}, IdempotencyKey: "used"},
		{Address: "wallets:w3:gift", Metadata: map[string]string{"n": "3"}, IdempotencyKey: "k3"},
	})
	fmt.Println("request:", err)
	for i, r := range results {
		fmt.Printf("element %d: applied=%v key reused=%v\n", i, r.Err == nil, errors.Is(r.Err, ledgeradapter.ErrIdempotencyConflict))
	}

	accounts, err := client.ListAccounts(ctx, "wallets-002", []string{"wallets:w1:gift", "wallets:w2:gift", "wallets:w3:gift"})
	fmt.Println(len(accounts), err, accounts["wallets:w3:gift"].Metadata["n"])
	// Output:
	// request: <nil>
	// element 0: applied=true key reused=false
	// element 1: applied=false key reused=true
	// element 2: applied=true key reused=false
	// 2 <nil> 3
}
