package cli

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/messages"
)

// TestProvision: `provision` creates what `run` would, with run's settings
// (flags or WALLETS_WORKER_* variables), and exits; without --nats-url it
// refuses to start, rather than provision an embedded server nobody uses.
func TestProvision(t *testing.T) {
	t.Parallel()
	ns := testutil.NATS(t)

	var stderr bytes.Buffer
	getenv := func(k string) string {
		return map[string]string{EnvName("ack-wait"): "45s"}[k]
	}
	code := Main(context.Background(), []string{"provision", "--nats-url", ns.ClientURL(), "--duplicate-window", "3m"}, Env{Stderr: &stderr, Getenv: getenv})
	require.Equal(t, ExitOK, code, stderr.String())

	_, js := testutil.Connect(t, ns.ClientURL())
	ctx := context.Background()
	s, err := js.Stream(ctx, messages.StreamCommands)
	require.NoError(t, err)
	require.Equal(t, 3*time.Minute, s.CachedInfo().Config.Duplicates)
	c, err := js.Consumer(ctx, messages.StreamCommands, messages.ConsumerName)
	require.NoError(t, err)
	require.Equal(t, 45*time.Second, c.CachedInfo().Config.AckWait)
	for _, name := range []string{messages.StreamEvents, messages.StreamDLQ} {
		_, err := js.Stream(ctx, name)
		require.NoError(t, err, name)
	}
	_, err = js.KeyValue(ctx, messages.BucketClaims)
	require.NoError(t, err)

	stderr.Reset()
	code = Main(context.Background(), []string{"provision"}, Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitUsage, code)
	require.Contains(t, stderr.String(), "needs --nats-url")
}
