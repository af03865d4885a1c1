package cli

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
)

// TestRunRefusedCredentialsFailAtOnce: `run` against a NATS server that
// refuses its password exits 1 at once, naming the failure, not the password.
func TestRunRefusedCredentialsFailAtOnce(t *testing.T) {
	t.Parallel()
	const password, wrong = "run-pw-11aa", "run-pw-wrong-22bb"
	ns := testutil.NATSServer(t, &server.Options{JetStream: true, Username: "alice", Password: password})

	var stderr bytes.Buffer
	start := time.Now()
	code := Main(context.Background(), []string{"run", "--nats-url", ns.ClientURL(), "--nats-user", "alice", "--nats-password", wrong,
		"--data-dir", t.TempDir(), "--embedded-ledger-addr", "127.0.0.1:0", "--http-addr", ""},
		Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitError, code, stderr.String())
	require.Less(t, time.Since(start), 5*time.Second)
	require.Contains(t, stderr.String(), "authentication failed")
	require.NotContains(t, stderr.String(), wrong)

	stderr.Reset()
	code = Main(context.Background(), []string{"run", "--nats-user", "alice", "--nats-password", wrong}, Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitUsage, code, stderr.String())
	require.Contains(t, stderr.String(), "need --nats-url")
	require.NotContains(t, stderr.String(), wrong)
}

// TestRunAuthenticates: the right password gets a worker consuming.
func TestRunAuthenticates(t *testing.T) {
	t.Parallel()
	const password = "run-pw-33cc"
	ns := testutil.NATSServer(t, &server.Options{JetStream: true, Username: "alice", Password: password})
	b := setup(t, "--nats-url", ns.ClientURL(), "--nats-user", "alice", "--nats-password", password)
	code, out, errOut := b.cli(t, "publish", "create-balance", "--nats-url", ns.ClientURL(), "--nats-user", "alice", "--nats-password", password,
		"--wallet", "w1", "--name", "x", "--wait", "--timeout", "20s")
	require.Equal(t, ExitOK, code, errOut)
	require.Len(t, decodeLines(t, out), 2)
	require.NotContains(t, b.logs.String(), password)
}
