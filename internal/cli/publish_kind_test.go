package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
)

// TestPublishEveryKind drives `publish <kind>` against `run`: a wallet is
// created under the ID its key derives (printed), credited, debited into a
// hold (its ID printed), the hold confirmed; a republish under the same key
// of another body is KEY_REUSED decided by the publisher (exit 3); a
// rejection by the worker exits 3; a body the worker would refuse is refused
// before anything connects (exit 1).
func TestPublishEveryKind(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	publish := func(want int, args ...string) []map[string]any {
		t.Helper()
		var out, errOut bytes.Buffer
		code := Main(ctx, append(append([]string{"publish"}, args...), "--nats-url", b.addrs.NATSURL, "--timeout", "20s"),
			Env{Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }})
		require.Equal(t, want, code, "stdout: %s\nstderr: %s", &out, &errOut)
		var objs []map[string]any
		dec := json.NewDecoder(&out)
		for dec.More() {
			var o map[string]any
			require.NoError(t, dec.Decode(&o))
			objs = append(objs, o)
		}
		return objs
	}

	got := publish(ExitOK, "create-wallet", "--key", "pk-w", "--body", `{"name":"carol"}`, "--wait")
	wallet := messages.WalletIDOf("pk-w")
	require.Equal(t, wallet, got[0]["walletID"])
	require.Equal(t, "wallet-created", got[1]["type"])
	require.Equal(t, "wallets.events.wallet-created."+wallet, got[1]["subject"])

	body := filepath.Join(t.TempDir(), "credit.json")
	require.NoError(t, os.WriteFile(body, []byte(`{"walletID":"`+wallet+`","amount":{"asset":"EUR/2","amount":500}}`), 0o600))
	got = publish(ExitOK, "credit-wallet", "--key", "pk-c", "--body", "@"+body, "--wait")
	require.Equal(t, "wallets.commands.credit-wallet."+wallet, got[0]["subject"])
	require.Equal(t, "wallet-credited", got[1]["type"])

	got = publish(ExitOK, "debit-wallet", "--key", "pk-h", "--wait",
		"--body", `{"walletID":"`+wallet+`","amount":{"asset":"EUR/2","amount":200},"pending":true}`)
	hold := messages.HoldIDOf("pk-h")
	require.Equal(t, hold, got[0]["holdID"])
	require.Equal(t, hold, got[1]["event"].(map[string]any)["hold"].(map[string]any)["id"])

	got = publish(ExitOK, "confirm-hold", "--wallet", wallet, "--key", "pk-cf", "--body", `{"holdID":"`+hold+`","final":true}`, "--wait")
	require.Equal(t, "hold-confirmed", got[1]["type"])

	// The same command again, within the duplicate window: its original's outcome.
	got = publish(ExitOK, "debit-wallet", "--key", "pk-h", "--wait",
		"--body", `{"walletID":"`+wallet+`","amount":{"asset":"EUR/2","amount":200},"pending":true}`)
	require.Equal(t, true, got[0]["duplicate"])
	require.Equal(t, "wallet-debited", got[1]["type"])
	require.Nil(t, got[1]["decidedBy"])

	// The same key with another body, within the duplicate window.
	got = publish(ExitRejected, "credit-wallet", "--key", "pk-c", "--wait",
		"--body", `{"walletID":"`+wallet+`","amount":{"asset":"EUR/2","amount":501}}`)
	require.Equal(t, true, got[0]["duplicate"])
	require.Equal(t, "publisher", got[1]["decidedBy"])
	require.Equal(t, string(messages.CodeKeyReused), got[1]["event"].(map[string]any)["code"])

	// Rejected by the worker: the hold is closed.
	got = publish(ExitRejected, "void-hold", "--wallet", wallet, "--key", "pk-v", "--body", `{"holdID":"`+hold+`"}`, "--wait")
	require.Equal(t, "void-hold-rejected", got[1]["type"])
	require.Equal(t, string(messages.CodeHoldClosed), got[1]["event"].(map[string]any)["code"])

	// Refused before anything connects.
	for _, args := range [][]string{
		{"credit-wallet", "--body", `{"walletID":"w","amount":{"asset":"EUR/2","amount":-1}}`},
		{"credit-wallet", "--body", `{"amount":{"asset":"EUR/2","amount":1}}`},
		{"create-wallet", "--key", "k", "--wallet", "not-derived", "--body", `{"name":"x"}`},
		{"void-hold", "--wallet", "w", "--body", `{"holdID":"h","extra":1}`},
		{"update-wallet", "--body", ``},
	} {
		var errOut bytes.Buffer
		code := Main(ctx, append([]string{"publish"}, append(args, "--nats-url", "nats://127.0.0.1:1")...), Env{Stderr: &errOut, Getenv: func(string) string { return "" }})
		require.Equal(t, ExitError, code, "%v", args)
		require.True(t, strings.Contains(errOut.String(), "invalid command") || strings.Contains(errOut.String(), "--body"), "%v: %s", args, &errOut)
	}
	var errOut bytes.Buffer
	require.Equal(t, ExitUsage, Main(ctx, []string{"publish", "transfer"}, Env{Stderr: &errOut}))
	require.Contains(t, errOut.String(), "credit-wallet")
}
