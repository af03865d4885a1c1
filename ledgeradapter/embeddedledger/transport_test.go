package embeddedledger_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// TestTransportServesTheClient: the ledger client works through the
// in-process transport as over a connection, errors included.
func TestTransportServesTheClient(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l, err := embeddedledger.Open("")
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	c, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: "http://embedded",
		HTTPClient: &http.Client{Transport: l.Transport()}})
	require.NoError(t, err)

	require.NoError(t, c.Healthcheck(ctx))
	require.NoError(t, c.EnsureLedger(ctx, "l"))
	res, err := c.AddAccountMetadata(ctx, "l", "w:1:main", map[string]string{"a": "1"}, "k")
	require.NoError(t, err)
	require.False(t, res.IdempotencyHit)
	res, err = c.AddAccountMetadata(ctx, "l", "w:1:main", map[string]string{"a": "1"}, "k")
	require.NoError(t, err)
	require.True(t, res.IdempotencyHit)
	_, err = c.AddAccountMetadata(ctx, "l", "w:2:main", map[string]string{"a": "1"}, "k")
	require.ErrorIs(t, err, ledgeradapter.ErrIdempotencyConflict)
	acc, found, err := c.GetAccount(ctx, "l", "w:1:main")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, map[string]string{"a": "1"}, acc.Metadata)
	_, found, err = c.GetAccount(ctx, "l", "w:9:main")
	require.NoError(t, err)
	require.False(t, found)

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err = c.GetAccount(cancelled, "l", "w:1:main")
	require.ErrorIs(t, err, context.Canceled)
}
