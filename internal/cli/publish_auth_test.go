package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/worker"
)

// TestPublishAuthenticates runs `publish create-balance` against a NATS
// server that requires a user and password.
func TestPublishAuthenticates(t *testing.T) {
	t.Parallel()
	const password, wrong = "cli-pw-8e41f0", "cli-pw-wrong-93b7aa"
	ns := testutil.NATSServer(t, &server.Options{JetStream: true, Username: "alice", Password: password})
	_, js := testutil.Connect(t, ns.ClientURL(), nats.UserInfo("alice", password))
	require.NoError(t, worker.Provision(context.Background(), js, worker.Config{}))

	pwFile := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(pwFile, []byte(password+"\n"), 0o600))

	publish := func(env map[string]string, args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		args = append([]string{"publish", "create-balance", "--nats-url", ns.ClientURL(), "--wallet", "w1", "--name", "x", "--timeout", "10s"}, args...)
		code := Main(context.Background(), args, Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return env[k] }})
		return code, stdout.String(), stderr.String()
	}

	code, out, errOut := publish(nil, "--nats-user", "alice", "--nats-password", password, "--key", "k1")
	require.Equal(t, ExitOK, code, errOut)
	lines := decodeLines(t, out)
	require.Len(t, lines, 1)
	require.Equal(t, "k1", lines[0]["key"])

	// The same from the environment, the password from a file.
	code, out, errOut = publish(map[string]string{"WALLETS_WORKER_NATS_USER": "alice", "WALLETS_WORKER_NATS_PASSWORD_FILE": pwFile}, "--key", "k1")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, true, decodeLines(t, out)[0]["duplicate"])

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"wrong password", nil, []string{"--nats-user", "alice", "--nats-password", wrong}},
		{"wrong password from the environment", map[string]string{"WALLETS_WORKER_NATS_PASSWORD": wrong}, []string{"--nats-user", "alice"}},
		{"no credentials", nil, nil},
	} {
		code, out, errOut = publish(tc.env, tc.args...)
		require.Equal(t, ExitError, code, "%s: %s", tc.name, errOut)
		require.Empty(t, out, tc.name)
		require.Contains(t, errOut, "authentication failed", tc.name)
		require.Contains(t, errOut, "Authorization Violation", tc.name)
		require.NotContains(t, errOut, wrong, tc.name)
		require.NotContains(t, errOut, password, tc.name)
	}

	// A setting that cannot work fails before any connection (exit 1, SPEC §2).
	code, _, errOut = publish(nil, "--nats-user", "alice", "--nats-password", password, "--nats-token", wrong)
	require.Equal(t, ExitError, code, errOut)
	require.Contains(t, errOut, "different methods")
	require.NotContains(t, errOut, wrong)
	require.NotContains(t, errOut, password)
}
