package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer = testutil.SyncBuffer

func freeAddr(t *testing.T) string { return testutil.FreeAddr(t) }

type bundle struct {
	addrs Addrs
	logs  *syncBuffer
}

// setup runs `wallets-worker run` in process on its embedded defaults, on
// free ports and a temporary data dir, until the test ends.
func setup(t *testing.T, extra ...string) *bundle {
	t.Helper()
	b := &bundle{logs: &syncBuffer{}}
	b.addrs = startRun(t, b.logs, append([]string{
		"--data-dir", t.TempDir(),
		"--embedded-nats-addr", freeAddr(t),
		"--embedded-ledger-addr", freeAddr(t),
		"--http-addr", "127.0.0.1:0",
		"--log-level", "debug",
	}, extra...)...)
	return b
}

// startRun runs `wallets-worker run` with args in process, its logs in logs,
// and returns where it serves once it is ready. When the test ends it is
// cancelled and must exit 0.
func startRun(t *testing.T, logs *syncBuffer, args ...string) Addrs {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Addrs, 1)
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, append([]string{"run"}, args...), Env{Stderr: logs, Getenv: func(string) string { return "" }, Ready: func(a Addrs) { ready <- a }})
	}()
	var addrs Addrs
	select {
	case addrs = <-ready:
	case code := <-done:
		cancel()
		t.Fatalf("run exited with %d before it was ready:\n%s", code, logs)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("run not ready within 30s:\n%s", logs)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			require.Equal(t, ExitOK, code, "run's exit status; logs:\n%s", logs)
		case <-time.After(40 * time.Second):
			t.Errorf("run did not stop within 40s")
		}
	})
	return addrs
}

func (b *bundle) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), args, Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
	return code, stdout.String(), stderr.String()
}

func decodeLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			return out
		} else {
			require.NoError(t, err, "output %q", s)
		}
		out = append(out, m)
	}
}

func TestPublishWait(t *testing.T) {
	b := setup(t)
	pub := func(args ...string) (int, []map[string]any, string) {
		code, out, errOut := b.cli(t, append([]string{"publish", "create-balance", "--nats-url", b.addrs.NATSURL, "--wait", "--timeout", "20s"}, args...)...)
		return code, decodeLines(t, out), errOut
	}

	code, lines, errOut := pub("--wallet", "w1", "--name", "savings", "--priority", "2", "--expires-at", "2027-01-01T00:00:00Z", "--key", "k1")
	require.Equal(t, ExitOK, code, errOut)
	require.Len(t, lines, 2)
	require.Equal(t, "k1", lines[0]["key"])
	require.Equal(t, false, lines[0]["duplicate"])
	seq := lines[0]["seq"]
	require.Equal(t, "balance-created", lines[1]["type"])
	ev := lines[1]["event"].(map[string]any)
	require.Equal(t, false, ev["replayed"])
	require.Equal(t, map[string]any{"name": "savings", "priority": float64(2), "expiresAt": "2027-01-01T00:00:00Z"}, ev["balance"])

	// A duplicate publish: JetStream says so, and --wait still finds the
	// outcome of the stored command, published before the wait began.
	code, lines, errOut = pub("--wallet", "w1", "--name", "savings", "--priority", "2", "--expires-at", "2027-01-01T00:00:00Z", "--key", "k1")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, true, lines[0]["duplicate"])
	require.Equal(t, seq, lines[0]["seq"])
	require.Equal(t, "balance-created", lines[1]["type"])

	// Another key for the same balance is rejected: exit 3.
	code, lines, errOut = pub("--wallet", "w1", "--name", "savings", "--key", "k2")
	require.Equal(t, ExitRejected, code, errOut)
	require.Equal(t, "balance-create-rejected", lines[1]["type"])
	require.Equal(t, "ALREADY_EXISTS", lines[1]["event"].(map[string]any)["code"])

	// Without --key a fresh random key is used.
	code, lines, errOut = pub("--wallet", "w2", "--name", "gift")
	require.Equal(t, ExitOK, code, errOut)
	require.Len(t, lines[0]["key"], 32)
}

func TestPublishRefusesInvalidCommandsBeforeTheWire(t *testing.T) {
	t.Parallel()
	// No server at this address: a refused command never tries to connect.
	for _, args := range [][]string{
		{"--wallet", "w1", "--name", "main"},
		{"--wallet", "w.1", "--name", "x"},
		{"--wallet", "w1"},
		{"--wallet", "w1", "--name", "x", "--expires-at", "tomorrow"},
		{"--wallet", "w1", "--name", "x", "--key", strings.Repeat("k", 201)},
	} {
		var stderr bytes.Buffer
		code := Main(context.Background(), append([]string{"publish", "create-balance", "--nats-url", "nats://127.0.0.1:1"}, args...), Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
		require.Equal(t, ExitError, code, "%v: %s", args, stderr.String())
		require.NotContains(t, stderr.String(), "connect", "refused before any connection")
	}
}

// provisionedNATS starts a NATS server with the worker's streams and
// consumer, and no worker, until the test ends; it returns its URL.
func provisionedNATS(t *testing.T) string {
	t.Helper()
	url := testutil.NATS(t).ClientURL()
	_, js := testutil.Connect(t, url)
	require.NoError(t, worker.Provision(context.Background(), js, worker.Config{}))
	return url
}

func TestPublishTimeoutExitStatus(t *testing.T) {
	t.Parallel()
	// Streams and consumer exist, but no worker runs: no outcome can come.
	natsURL := provisionedNATS(t)

	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"publish", "create-balance", "--nats-url", natsURL, "--wallet", "w9", "--name", "x", "--wait", "--timeout", "1s"},
		Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitTimeout, code, stderr.String())
	require.Len(t, decodeLines(t, stdout.String()), 1, "the publish itself is reported")
	require.Contains(t, stderr.String(), "no outcome")
}

func TestEnvironmentVariables(t *testing.T) {
	t.Parallel()
	require.Equal(t, "WALLETS_WORKER_NATS_URL", EnvName("nats-url"))
	fs, f := runFlagSet(Env{Stderr: io.Discard})
	env := map[string]string{
		"WALLETS_WORKER_LEDGER_NAME": "from-env",
		"WALLETS_WORKER_CONCURRENCY": "7",
		"WALLETS_WORKER_ACK_WAIT":    "45s",
	}
	require.NoError(t, parse(fs, []string{"--concurrency", "3"}, func(k string) string { return env[k] }))
	require.Equal(t, "from-env", f.ledgerName)
	require.Equal(t, 3, f.w.Concurrency, "a flag on the command line wins over its variable")
	require.Equal(t, 45*time.Second, f.w.AckWait)

	fs, _ = runFlagSet(Env{Stderr: io.Discard})
	err := parse(fs, nil, func(k string) string {
		if k == "WALLETS_WORKER_CONCURRENCY" {
			return "many"
		}
		return ""
	})
	require.ErrorContains(t, err, "WALLETS_WORKER_CONCURRENCY")
}

// TestRunConcurrencyDefaults checks run's --concurrency by ledger: many
// commands in flight for batches to form against a remote ledger, fewer
// against the embedded one, the worker's own without batching; a value set
// wins.
func TestRunConcurrencyDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, ledgeradapter.DefaultInProcessConcurrency},
		{[]string{"--ledger-url", "http://127.0.0.1:3068"}, ledgeradapter.DefaultBatchingConcurrency},
		{[]string{"--ledger-batch=false"}, worker.Config{}.WithDefaults().Concurrency},
		{[]string{"--ledger-url", "http://127.0.0.1:3068", "--ledger-batch=false"}, worker.Config{}.WithDefaults().Concurrency},
		{[]string{"--concurrency", "7"}, 7},
	} {
		fs, f := runFlagSet(Env{Stderr: io.Discard})
		require.NoError(t, parse(fs, tc.args, func(string) string { return "" }))
		require.NoError(t, f.validate(), "%v", tc.args)
		require.Equal(t, tc.want, f.w.WithDefaults().Concurrency, "%v", tc.args)
	}
}

func TestRunHelpNamesEveryFlagAndVariable(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	code := Main(context.Background(), []string{"run", "--help"}, Env{Stderr: &stderr})
	require.Equal(t, ExitOK, code)
	fs, _ := runFlagSet(Env{Stderr: io.Discard})
	fs.VisitAll(func(f *flag.Flag) {
		require.Regexp(t, `(?m)^  --`+f.Name+`( |$)`, stderr.String())
		require.Contains(t, stderr.String(), "$"+EnvName(f.Name))
	})
	for _, name := range []string{"nats-url", "ledger-url", "ledger-name", "account-prefix", "data-dir",
		"embedded-nats-addr", "embedded-ledger-addr", "http-addr", "concurrency", "ack-wait", "max-deliver",
		"duplicate-window", "stream-replicas", "ledger-client-id", "ledger-client-secret", "ledger-token-url",
		"nats-creds", "nats-ca", "no-provision"} {
		require.NotNil(t, fs.Lookup(name), "SPEC §2 flag --%s", name)
	}
}

func TestRunRejectsBadSettingsAtOnce(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	code := Main(context.Background(), []string{"run", "--ack-wait", "3s", "--handler-timeout", "5s", "--log-format", "xml", "--embedded-ledger-sync", "always"}, Env{Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitUsage, code)
	require.Contains(t, stderr.String(), "handler timeout")
	require.Contains(t, stderr.String(), "--log-format")
	require.Contains(t, stderr.String(), "--embedded-ledger-sync")
}

func TestDeadLetterListAndRedrive(t *testing.T) {
	b := setup(t)
	_, js := testutil.Connect(t, b.addrs.NATSURL)
	ctx := context.Background()

	// An invalid command is dead-lettered.
	bad := &nats.Msg{Subject: messages.CreateBalanceSubject("w1"), Data: []byte(`{"walletID":"w1","name":"x","colour":"red"}`), Header: nats.Header{}}
	bad.Header.Set(messages.HeaderMsgID, "bad-1")
	_, err := js.PublishMsg(ctx, bad)
	require.NoError(t, err)

	var lines []map[string]any
	require.Eventually(t, func() bool {
		_, out, _ := b.cli(t, "dlq", "list", "--nats-url", b.addrs.NATSURL)
		lines = decodeLines(t, out)
		return len(lines) == 1
	}, 20*time.Second, 50*time.Millisecond)
	require.Equal(t, "bad-1", lines[0]["key"])
	require.Equal(t, "INVALID_COMMAND", lines[0]["code"])
	require.Contains(t, lines[0]["reason"], "colour")
	require.Equal(t, messages.CreateBalanceSubject("w1"), lines[0]["originalSubject"])
	require.Equal(t, float64(1), lines[0]["deliveries"])

	// Redrive: within the duplicate window JetStream drops the republish,
	// and the tool says so rather than pretending.
	code, out, errOut := b.cli(t, "dlq", "redrive", "--nats-url", b.addrs.NATSURL, "--seq", fmt.Sprint(lines[0]["seq"]))
	require.Equal(t, ExitOK, code, errOut)
	res := decodeLines(t, out)
	require.Len(t, res, 1)
	require.Equal(t, true, res[0]["duplicate"])
	require.Contains(t, res[0]["note"], "duplicate window")

	code, _, errOut = b.cli(t, "dlq", "redrive", "--nats-url", b.addrs.NATSURL)
	require.Equal(t, ExitUsage, code, errOut)
}

// A command of a kind this version does not know is dead-lettered by the
// worker; redrive leaves its dead letter where it is, says why, and goes on
// with the others (republished, it would only be dead-lettered again, and
// the operator's NATS user may not publish it: the redrive stopped there).
func TestRedriveLeavesUnknownKinds(t *testing.T) {
	b := setup(t, "--duplicate-window", "1s")
	_, js := testutil.Connect(t, b.addrs.NATSURL)
	ctx := context.Background()
	for _, m := range []struct{ subject, key, body string }{
		{"wallets.commands.gift-card.w1", "gift-1", `{"walletID":"w1"}`},
		{messages.CreateBalanceSubject("w2"), "bad-2", `{"walletID":"w2","name":"x","colour":"red"}`},
	} {
		msg := &nats.Msg{Subject: m.subject, Data: []byte(m.body), Header: nats.Header{}}
		msg.Header.Set(messages.HeaderMsgID, m.key)
		_, err := js.PublishMsg(ctx, msg)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		_, out, _ := b.cli(t, "dlq", "list", "--nats-url", b.addrs.NATSURL)
		return len(decodeLines(t, out)) == 2
	}, 20*time.Second, 50*time.Millisecond)

	byKey := map[string]map[string]any{}
	require.Eventually(t, func() bool { // past the 1s window of the invalid command's key
		code, out, errOut := b.cli(t, "dlq", "redrive", "--all", "--delete", "--nats-url", b.addrs.NATSURL)
		if code != ExitOK {
			t.Logf("redrive: exit %d: %s", code, errOut)
			return false
		}
		for _, r := range decodeLines(t, out) {
			byKey[r["key"].(string)] = r
		}
		return byKey["bad-2"] != nil && byKey["bad-2"]["duplicate"] == false
	}, 20*time.Second, 200*time.Millisecond)
	gift := byKey["gift-1"]
	require.NotNil(t, gift, "the unknown kind's dead letter is reported")
	require.Equal(t, true, gift["skipped"])
	require.Contains(t, gift["note"], `"gift-card"`)
	require.Equal(t, false, gift["deleted"], "its dead letter stays")
	require.Equal(t, true, byKey["bad-2"]["deleted"])
	_, out, _ := b.cli(t, "dlq", "list", "--nats-url", b.addrs.NATSURL)
	var keys []string
	for _, l := range decodeLines(t, out) {
		keys = append(keys, l["key"].(string))
	}
	require.Contains(t, keys, "gift-1", "the unknown kind's dead letter is still listed")
}

func TestRedriveAfterTheWindowReplays(t *testing.T) {
	b := setup(t, "--duplicate-window", "1s")
	_, js := testutil.Connect(t, b.addrs.NATSURL)
	ctx := context.Background()

	// A valid command that the DLQ holds as if the ledger had refused it:
	// put it there by hand, as the worker would have.
	body := []byte(`{"walletID":"w5","name":"gift","priority":1}`)
	dl := &nats.Msg{Subject: messages.DLQSubject("w5"), Data: body, Header: nats.Header{}}
	dl.Header.Set(messages.HeaderMsgID, "redrive-1")
	dl.Header.Set(messages.HeaderDLQCode, string(messages.CodeRetriesExhausted))
	dl.Header.Set(messages.HeaderDLQReason, "ledger down")
	dl.Header.Set(messages.HeaderOriginalSubject, messages.CreateBalanceSubject("w5"))
	dl.Header.Set(messages.HeaderOriginalSeq, "99")
	dl.Header.Set(messages.HeaderDeliveries, "20")
	_, err := js.PublishMsg(ctx, dl)
	require.NoError(t, err)

	code, out, errOut := b.cli(t, "dlq", "redrive", "--nats-url", b.addrs.NATSURL, "--all", "--delete")
	require.Equal(t, ExitOK, code, errOut)
	res := decodeLines(t, out)
	require.Len(t, res, 1)
	require.Equal(t, false, res[0]["duplicate"])
	require.Equal(t, true, res[0]["deleted"])

	// The republished command is applied under its original key.
	code, out, errOut = b.cli(t, "publish", "create-balance", "--nats-url", b.addrs.NATSURL, "--wallet", "w5", "--name", "gift", "--priority", "1", "--key", "redrive-1", "--wait", "--timeout", "20s")
	require.Equal(t, ExitOK, code, errOut)
	lines := decodeLines(t, out)
	require.Equal(t, "balance-created", lines[1]["type"])

	_, out, _ = b.cli(t, "dlq", "list", "--nats-url", b.addrs.NATSURL)
	require.Empty(t, decodeLines(t, out))
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}
