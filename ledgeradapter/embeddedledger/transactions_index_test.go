package embeddedledger_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// TestListByAccountUsesItsIndex: a list filtered on one account (as a hold's
// void reads its debit) answers exactly what the same filter answers read
// over every transaction, page by page, whether the account is a source, a
// destination or either; and a database of the previous schema gets its
// transactions indexed when it is opened.
func TestListByAccountUsesItsIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	open := func() (*embeddedledger.Ledger, *ledgeradapter.Client) {
		l, err := embeddedledger.Open(dir)
		require.NoError(t, err)
		c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: "http://embedded", HTTPClient: &http.Client{Transport: l.Transport()}})
		require.NoError(t, err)
		return l, c
	}
	l, c := open()
	require.NoError(t, c.EnsureLedger(ctx, "l"))
	for i := range 60 {
		// a:i%4 receives from world; every third also sends on to b.
		script := fmt.Sprintf("send [USD/2 10] (\n  source = @world\n  destination = @a:%d\n)\n", i%4)
		if i%3 == 0 {
			script += fmt.Sprintf("send [USD/2 5] (\n  source = @a:%d\n  destination = @b\n)\n", i%4)
		}
		_, err := c.CreateTransaction(ctx, "l", ledgeradapter.TransactionRequest{Script: &ledgeradapter.Script{Plain: script}}, "")
		require.NoError(t, err)
	}
	list := func(filter map[string]any) []uint64 {
		var ids []uint64
		cursor := ""
		for {
			page, err := c.ListTransactions(ctx, "l", filter, 4, cursor)
			require.NoError(t, err)
			for _, tx := range page.Data {
				ids = append(ids, tx.ID)
			}
			if page.Next == "" {
				return ids
			}
			cursor = page.Next
		}
	}
	match := func(field, address string) map[string]any {
		return map[string]any{"$match": map[string]any{field: address}}
	}
	// $or over one filter is the same filter, read over every transaction.
	scanned := func(field, address string) []uint64 { return list(map[string]any{"$or": []any{match(field, address)}}) }
	check := func() {
		for _, tc := range []struct{ field, address string }{
			{"destination", "a:1"}, {"source", "a:1"}, {"account", "a:1"}, {"destination", "b"}, {"source", "b"}, {"account", "world"}, {"destination", "nobody"},
		} {
			want := scanned(tc.field, tc.address)
			require.Equal(t, want, list(match(tc.field, tc.address)), "%s %s", tc.field, tc.address)
			require.Equal(t, want, list(map[string]any{"$and": []any{match(tc.field, tc.address), map[string]any{"$not": map[string]any{"$match": map[string]any{"id": 0}}}}}), "%s %s in $and", tc.field, tc.address)
		}
		require.Len(t, scanned("destination", "a:1"), 15)
		require.Len(t, scanned("source", "a:1"), 5)
		require.Len(t, scanned("destination", "b"), 20)
		require.Empty(t, scanned("source", "b"))
	}
	check()

	// The previous schema: no index table, version 2.
	require.NoError(t, l.Close())
	db, err := sql.Open("sqlite", filepath.Join(dir, embeddedledger.FileName))
	require.NoError(t, err)
	_, err = db.Exec("DROP TABLE transaction_accounts; PRAGMA user_version = 2")
	require.NoError(t, err)
	require.NoError(t, db.Close())
	l, c = open()
	defer l.Close()
	check()
}
