package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/producer"
)

// writeLines writes a --from-file file named name in a new temporary
// directory.
func writeLines(t *testing.T, name string, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	return path
}

// publishFileCLI runs `publish create-balance` against natsURL and returns
// its exit status, its summary (without the run-dependent "seconds") and its
// standard error.
func publishFileCLI(t *testing.T, natsURL string, args ...string) (int, map[string]any, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), append([]string{"publish", "create-balance", "--nats-url", natsURL}, args...),
		Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
	out := decodeLines(t, stdout.String())
	require.Len(t, out, 1, "one summary object; stderr:\n%s", stderr.String())
	require.IsType(t, float64(0), out[0]["seconds"])
	delete(out[0], "seconds")
	return code, out[0], stderr.String()
}

// outcomes is the "outcomes" member of a summary as decoded from JSON.
func wantOutcomes(created, replayed int, rejected map[string]any, timedOut int) map[string]any {
	if rejected == nil {
		rejected = map[string]any{}
	}
	return map[string]any{"created": float64(created), "replayed": float64(replayed), "rejected": rejected, "timedOut": float64(timedOut)}
}

func wantSummary(file string, lines, published, duplicates, failed int) map[string]any {
	return map[string]any{"file": file, "lines": float64(lines), "published": float64(published), "duplicates": float64(duplicates), "failed": float64(failed)}
}

func withOutcomes(s map[string]any, o map[string]any) map[string]any {
	s["outcomes"] = o
	return s
}

func TestPublishFromFile(t *testing.T) {
	b := setup(t)
	url := b.addrs.NATSURL

	// First, as it swaps os.Stdin: sequential, before the parallel subtests.
	t.Run("standard input", func(t *testing.T) {
		r, w, err := os.Pipe()
		require.NoError(t, err)
		saved := os.Stdin
		os.Stdin = r
		t.Cleanup(func() { os.Stdin = saved; _ = r.Close() })
		go func() {
			_, _ = w.WriteString("{\"walletID\":\"s1\",\"name\":\"gift\"}\n# a comment\n{\"walletID\":\"s2\",\"name\":\"gift\",\"key\":\"s2-gift\"}") // no final newline
			_ = w.Close()
		}()
		results := filepath.Join(t.TempDir(), "results.jsonl")
		code, sum, errOut := publishFileCLI(t, url, "--from-file", "-", "--wait", "--timeout", "20s", "--results", results)
		require.Equal(t, ExitOK, code, errOut)
		require.Equal(t, withOutcomes(wantSummary("-", 2, 2, 0, 0), wantOutcomes(2, 0, nil, 0)), sum)
		byLine := readResults(t, results)
		require.Equal(t, producer.KeyFrom("stdin", `{"walletID":"s1","name":"gift","priority":0,"expiresAt":null}`), byLine[1]["key"])
		require.Equal(t, "s2-gift", byLine[3]["key"])
	})

	t.Run("counts, duplicates, invalid lines, and a second run", func(t *testing.T) {
		t.Parallel()
		path := writeLines(t, "campaign.jsonl",
			`# spring campaign`,
			`{"walletID":"c1","name":"savings","priority":2,"expiresAt":"2027-01-01T00:00:00Z"}`,
			``,
			`{"walletID":"c2","name":"gift"}`,
			`   {"walletID":"c3","name":"gift","key":"c3-gift"}`,
			`{"walletID":"c3","name":"gift","key":"c3-gift"}`,
			// Line 4's command written otherwise: the same derived key.
			`{"name":"gift", "priority":0, "walletID":"c2", "expiresAt":null}`,
			`{"walletID":"c4","name":"main"}`,
			`not json`,
			`{"walletID":"c5","name":"gift","colour":"red"}`,
		)
		results := filepath.Join(t.TempDir(), "results.jsonl")
		code, sum, errOut := publishFileCLI(t, url, "--from-file", path, "--wait", "--timeout", "20s", "--results", results)
		require.Equal(t, ExitError, code, "invalid lines fail the run")
		want := withOutcomes(wantSummary(path, 8, 3, 2, 3), wantOutcomes(5, 0, nil, 0))
		require.Equal(t, want, sum, errOut)
		require.Contains(t, errOut, path+":8: invalid command: name:")
		require.Contains(t, errOut, path+":9: not a JSON object")
		require.Contains(t, errOut, path+`:10: invalid command: colour: is not a field`)
		require.NotContains(t, errOut, "\x1b", "no escape codes when standard error is not a terminal")
		require.NotContains(t, errOut, "\r")

		byLine := readResults(t, results)
		require.Len(t, byLine, 8)
		derived := producer.KeyFrom("file:campaign.jsonl", `{"walletID":"c2","name":"gift","priority":0,"expiresAt":null}`)
		require.Equal(t, derived, byLine[4]["key"])
		require.Equal(t, derived, byLine[7]["key"])
		require.Equal(t, byLine[4]["seq"], byLine[7]["seq"])
		require.Equal(t, byLine[5]["seq"], byLine[6]["seq"])
		require.NotEqual(t, byLine[4]["duplicate"], byLine[7]["duplicate"], "one of the two is the duplicate")
		for _, n := range []int{2, 4, 5, 6, 7} {
			require.Equal(t, "created", byLine[n]["outcome"], "line %d", n)
		}
		for _, n := range []int{8, 9, 10} {
			require.NotEmpty(t, byLine[n]["error"], "line %d", n)
			require.Nil(t, byLine[n]["seq"], "line %d was not published", n)
		}

		// The same file again, within the duplicate window: nothing new is
		// stored, and every line has the outcome it had.
		code, sum, errOut = publishFileCLI(t, url, "--from-file", path, "--wait", "--timeout", "20s")
		require.Equal(t, ExitError, code)
		require.Equal(t, withOutcomes(wantSummary(path, 8, 0, 5, 3), wantOutcomes(5, 0, nil, 0)), sum, errOut)

		// Without --wait: the publishes only.
		code, sum, _ = publishFileCLI(t, url, "--from-file", path)
		require.Equal(t, ExitError, code)
		require.Equal(t, wantSummary(path, 8, 0, 5, 3), sum)
	})

	t.Run("a rejected outcome exits 3", func(t *testing.T) {
		t.Parallel()
		path := writeLines(t, "rejected.jsonl",
			`{"walletID":"r1","name":"gift","key":"r1-a"}`,
			`{"walletID":"r1","name":"gift","key":"r1-b"}`,
		)
		// --progress always draws even on a buffer.
		code, sum, errOut := publishFileCLI(t, url, "--from-file", path, "--wait", "--timeout", "20s", "--progress", "always")
		require.Equal(t, ExitRejected, code, errOut)
		require.Equal(t, withOutcomes(wantSummary(path, 2, 2, 0, 0), wantOutcomes(1, 0, map[string]any{"ALREADY_EXISTS": float64(1)}, 0)), sum)
		require.Contains(t, errOut, "] 100% lines 2  published 2  duplicates 0  failed 0  outcomes 2/2  ")
		require.Contains(t, errOut, "\r[####################] 100%")
		require.Contains(t, errOut, "\x1b[K")
		require.True(t, strings.HasSuffix(errOut, "\n"), "the progress line is ended")
	})
}

// readResults reads a --results file, by line number.
func readResults(t *testing.T, path string) map[int]map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	byLine := map[int]map[string]any{}
	for _, r := range decodeLines(t, string(data)) {
		n := int(r["line"].(float64))
		require.NotContains(t, byLine, n, "line %d reported twice", n)
		byLine[n] = r
	}
	return byLine
}

func TestPublishFromFileAfterTheWindowReplays(t *testing.T) {
	b := setup(t, "--duplicate-window", "1s")
	path := writeLines(t, "replay.jsonl", `{"walletID":"p1","name":"gift","priority":1}`)
	code, sum, errOut := publishFileCLI(t, b.addrs.NATSURL, "--from-file", path, "--wait", "--timeout", "20s")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, withOutcomes(wantSummary(path, 1, 1, 0, 0), wantOutcomes(1, 0, nil, 0)), sum)

	// Run it again until the window has passed: within it the run is a
	// duplicate with the original outcome; after it, a new command that
	// replays. Both are safe, which is what the derived key is for.
	require.Eventually(t, func() bool {
		code, sum, errOut = publishFileCLI(t, b.addrs.NATSURL, "--from-file", path, "--wait", "--timeout", "20s")
		require.Equal(t, ExitOK, code, errOut)
		if sum["duplicates"] == float64(1) {
			require.Equal(t, wantOutcomes(1, 0, nil, 0), sum["outcomes"])
			return false
		}
		return true
	}, 20*time.Second, 100*time.Millisecond)
	require.Equal(t, withOutcomes(wantSummary(path, 1, 1, 0, 0), wantOutcomes(0, 1, nil, 0)), sum)
}

func TestPublishFromFileTimesOut(t *testing.T) {
	t.Parallel()
	// Streams and consumer exist, but no worker runs: no outcome can come.
	natsURL := provisionedNATS(t)

	path := writeLines(t, "lost.jsonl", `{"walletID":"t1","name":"gift"}`, `{"walletID":"t2","name":"gift"}`)
	start := time.Now()
	code, sum, errOut := publishFileCLI(t, natsURL, "--from-file", path, "--wait", "--timeout", "1s")
	require.Equal(t, ExitTimeout, code, errOut)
	require.Equal(t, withOutcomes(wantSummary(path, 2, 2, 0, 0), wantOutcomes(0, 0, nil, 2)), sum)
	require.Contains(t, errOut, "2 outcomes not received")
	require.Less(t, time.Since(start), 15*time.Second)
}

func TestPublishFromFileUsage(t *testing.T) {
	t.Parallel()
	path := writeLines(t, "x.jsonl", `{"walletID":"u1","name":"gift"}`)
	// No server at this address: usage errors never connect.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--from-file", path, "--wallet", "w1"}, ExitError, "--wallet and --from-file are mutually exclusive"},
		{[]string{"--from-file", path, "--name", "n", "--key", "k"}, ExitError, "--key and --from-file are mutually exclusive"},
		{[]string{"--wallet", "w1", "--name", "n", "--results", "r.jsonl"}, ExitError, "--results needs --from-file"},
		{[]string{"--from-file", path, "--progress", "sometimes"}, ExitError, "--progress"},
		{[]string{"--from-file", path, "--in-flight", "0"}, ExitError, "--in-flight"},
		{[]string{"--from-file", filepath.Join(t.TempDir(), "missing.jsonl")}, ExitError, "no such file"},
	} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), append([]string{"publish", "create-balance", "--nats-url", "nats://127.0.0.1:1"}, tc.args...),
			Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
		require.Equal(t, tc.code, code, "%v: %s", tc.args, stderr.String())
		require.Contains(t, stderr.String(), tc.want, "%v", tc.args)
		require.Empty(t, stdout.String(), "%v", tc.args)
	}
}

func TestParseLine(t *testing.T) {
	t.Parallel()
	key := func(line, ns string) string {
		t.Helper()
		j, err := parseLine([]byte(line), messages.KindCreateBalance, ns)
		require.NoError(t, err, line)
		return j.key
	}
	base := key(`{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00Z"}`, "file:a")
	require.Len(t, base, 64)
	require.Equal(t, base, key(`{ "expiresAt":"2027-01-01T01:00:00+01:00", "priority":0, "name":"n","walletID":"w1" }`, "file:a"),
		"order, spacing, an explicit default and the time zone do not change the key")
	require.Equal(t, base, key(`{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00Z","key":null}`, "file:a"))
	require.NotEqual(t, base, key(`{"walletID":"w1","name":"n","expiresAt":"2027-01-01T00:00:00Z"}`, "file:b"))
	require.NotEqual(t, base, key(`{"walletID":"w1","name":"n","priority":1,"expiresAt":"2027-01-01T00:00:00Z"}`, "file:a"))
	require.Equal(t, "k-1", key(`{"walletID":"w1","name":"n","key":"k-1"}`, "file:a"))

	j, err := parseLine([]byte(`{"walletID":"w1","name":"n","priority":-3}`), messages.KindCreateBalance, "ns")
	require.NoError(t, err)
	cmd := j.cmd
	require.Equal(t, "w1", cmd.WalletID)
	require.Equal(t, int64(-3), cmd.Priority)
	require.Nil(t, cmd.ExpiresAt)

	for line, want := range map[string]string{
		`[1]`:                                         "not a JSON object",
		`{"walletID":"w1",`:                           "not a JSON object",
		`{"walletID":"w1","name":"n"} {}`:             "data after the JSON object",
		`{"walletID":"w1","name":"n","key":1}`:        `"key" must be a string`,
		`{"walletID":"w1","key":"a","key":"b"}`:       `"key" appears more than once`,
		`{"walletID":"w1","walletID":"w1"}`:           "walletID: appears more than once",
		`{"walletID":"w.1","name":"n"}`:               "walletID:",
		`{"walletID":7,"name":"n"}`:                   "walletID: must be a string",
		`{"name":"n"}`:                                "walletID: is required",
		`{"walletID":"w1","name":"n","Key":"k"}`:      "Key: is not a field",
		`{"walletID":"w1","name":"n","key":""}`:       "Nats-Msg-Id: is empty",
		`{"walletID":"w1","name":"n","priority":1.5}`: "priority:",
		fmt.Sprintf(`{"walletID":"w1","name":"n","key":%q}`, strings.Repeat("k", 201)): "Nats-Msg-Id:",
	} {
		_, err := parseLine([]byte(line), messages.KindCreateBalance, "ns")
		require.ErrorContains(t, err, want, line)
	}
}

// TestParseLineOfAnyKind: a line names its kind, or takes the one given on
// the command line; the kinds beside create-balance need a key and are
// decoded by the worker's decoder of their kind.
func TestParseLineOfAnyKind(t *testing.T) {
	t.Parallel()
	credit := `{"kind":"credit-wallet","key":"c-1","walletID":"w1","amount":{"asset":"USD/2","amount":100}}`
	j, err := parseLine([]byte(credit), "", "ns")
	require.NoError(t, err)
	require.Equal(t, messages.KindCreditWallet, j.kind)
	require.Equal(t, "c-1", j.key)
	require.Equal(t, "wallets.commands.credit-wallet.w1", j.command.Subject())
	require.JSONEq(t, `{"walletID":"w1","amount":{"asset":"USD/2","amount":100}}`, string(j.command.Body), "kind and key are not in the body")

	j, err = parseLine([]byte(`{"kind":"void-hold","key":"v-1","wallet":"w1","holdID":"h1"}`), "", "ns")
	require.NoError(t, err)
	require.Equal(t, "wallets.commands.void-hold.w1", j.command.Subject())
	require.JSONEq(t, `{"holdID":"h1"}`, string(j.command.Body))

	// The kind from the command line, overridden by the line's.
	j, err = parseLine([]byte(`{"key":"w-alice","name":"alice"}`), messages.KindCreateWallet, "ns")
	require.NoError(t, err)
	require.Equal(t, messages.WalletIDOf("w-alice"), j.command.WalletID, "create-wallet's wallet derives from the key")
	j, err = parseLine([]byte(`{"kind":"create-balance","walletID":"w1","name":"n"}`), messages.KindCreateWallet, "ns")
	require.NoError(t, err)
	require.Equal(t, messages.KindCreateBalance, j.kind)
	require.Len(t, j.key, 64, "a create-balance line without a key gets a derived one")

	for line, want := range map[string]string{
		`{"walletID":"w1","name":"n"}`:                                                                      `"kind" is required`,
		`{"kind":"mint","key":"k"}`:                                                                         `unknown kind "mint"`,
		`{"kind":7,"key":"k"}`:                                                                              `"kind" must be a string`,
		`{"kind":"credit-wallet","kind":"credit-wallet","key":"k"}`:                                         `"kind" appears more than once`,
		`{"kind":"credit-wallet","walletID":"w1","amount":{"asset":"USD/2","amount":1}}`:                    `"key" is required for a credit-wallet command`,
		`{"kind":"credit-wallet","key":"k","walletID":"w1"}`:                                                "amount",
		`{"kind":"debit-wallet","key":"k","walletID":"w1","amount":{"asset":"USD/2","amount":1},"extra":1}`: "extra",
		`{"kind":"create-wallet","key":"","name":"a"}`:                                                      "Nats-Msg-Id: is empty",
	} {
		_, err := parseLine([]byte(line), "", "ns")
		require.ErrorContains(t, err, want, line)
	}
}

func TestReadLineDropsOverlongLines(t *testing.T) {
	t.Parallel()
	in := "short\n" + strings.Repeat("x", 100) + "\nlast"
	br := bufio.NewReaderSize(strings.NewReader(in), 16) // lines span several buffers
	var read atomic.Int64
	line, tooLong, err := readLine(br, 50, &read)
	require.NoError(t, err)
	require.False(t, tooLong)
	require.Equal(t, "short\n", string(line))
	line, tooLong, err = readLine(br, 50, &read)
	require.NoError(t, err)
	require.True(t, tooLong)
	require.Empty(t, line)
	line, tooLong, err = readLine(br, 50, &read)
	require.ErrorIs(t, err, io.EOF)
	require.False(t, tooLong)
	require.Equal(t, "last", string(line))
	require.Equal(t, int64(len(in)), read.Load())
}

func TestIsTerminal(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	require.False(t, isTerminal(f), "a regular file")
	require.False(t, isTerminal(&bytes.Buffer{}))
}

func TestPublishFromFileTwoThousandLines(t *testing.T) {
	b := setup(t)
	const n = 2000
	bulkFile := func(name, wallet string) string {
		lines := make([]string, n)
		for i := range lines {
			lines[i] = fmt.Sprintf(`{"walletID":"%s-%d","name":"gift","priority":%d}`, wallet, i, i%5)
		}
		return writeLines(t, name, lines...)
	}

	// Published and awaited, end to end. The wait for the outcomes still
	// missing after the last publish is generous: on a loaded 2-core
	// machine the worker lags the publisher by tens of seconds.
	path := bulkFile("awaited.jsonl", "bulk")
	results := filepath.Join(t.TempDir(), "results.jsonl")
	start := time.Now()
	code, sum, errOut := publishFileCLI(t, b.addrs.NATSURL, "--from-file", path, "--wait", "--timeout", "5m", "--results", results)
	awaited := time.Since(start)
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, withOutcomes(wantSummary(path, n, n, 0, 0), wantOutcomes(n, 0, nil, 0)), sum)
	require.Empty(t, errOut)
	byLine := readResults(t, results)
	require.Len(t, byLine, n)
	for i := 1; i <= n; i++ {
		require.Equal(t, "created", byLine[i]["outcome"], "line %d", i)
	}

	// Published only.
	path = bulkFile("published.jsonl", "pub")
	start = time.Now()
	code, sum, errOut = publishFileCLI(t, b.addrs.NATSURL, "--from-file", path)
	published := time.Since(start)
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, wantSummary(path, n, n, 0, 0), sum)

	t.Logf("%d lines published and awaited in %s (%.0f/s); %d more published without --wait in %s (%.0f/s)",
		n, awaited.Round(time.Millisecond), n/awaited.Seconds(), n, published.Round(time.Millisecond), n/published.Seconds())
}

// TestPublishFromFileEveryKind: `publish --from-file` with a line of every
// kind, each naming its own, their outcomes counted by kind; a wallet's lines
// go out in line order, so the hold made on line 4 is there for line 5 and the
// credit of line 3 covers the debits after it.
func TestPublishFromFileEveryKind(t *testing.T) {
	b := setup(t)
	w := messages.WalletIDOf("f-w")
	hold1, hold2 := messages.HoldIDOf("f-d1"), messages.HoldIDOf("f-d2")
	eur := func(n int) string { return fmt.Sprintf(`{"asset":"EUR/2","amount":%d}`, n) }
	path := writeLines(t, "mixed.jsonl",
		`{"kind":"create-wallet","key":"f-w","name":"frank"}`,
		`{"kind":"create-balance","walletID":"`+w+`","name":"savings"}`,
		`{"kind":"credit-wallet","key":"f-c1","walletID":"`+w+`","amount":`+eur(1000)+`}`,
		`{"kind":"debit-wallet","key":"f-d1","walletID":"`+w+`","amount":`+eur(300)+`,"pending":true}`,
		`{"kind":"confirm-hold","key":"f-cf","wallet":"`+w+`","holdID":"`+hold1+`","final":true}`,
		`{"kind":"debit-wallet","key":"f-d2","walletID":"`+w+`","amount":`+eur(200)+`,"pending":true}`,
		`{"kind":"void-hold","key":"f-v","wallet":"`+w+`","holdID":"`+hold2+`"}`,
		`{"kind":"debit-wallet","key":"f-d3","walletID":"`+w+`","amount":`+eur(5000)+`}`,
		`{"kind":"credit-wallet","key":"f-c1","walletID":"`+w+`","amount":`+eur(1000)+`}`,
		`{"kind":"credit-wallet","key":"f-c1","walletID":"`+w+`","amount":`+eur(7)+`}`,
		`{"kind":"update-wallet","key":"f-u","walletID":"`+w+`","metadata":{"tier":"gold"}}`,
		`{"walletID":"`+w+`","name":"no-kind"}`,
	)
	results := filepath.Join(t.TempDir(), "results.jsonl")
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"publish", "--nats-url", b.addrs.NATSURL, "--from-file", path, "--wait", "--timeout", "30s", "--results", results},
		Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitError, code, "a line without a kind fails the run: %s", stderr.String())
	require.Contains(t, stderr.String(), `mixed.jsonl:12: "kind" is required`)
	out := decodeLines(t, stdout.String())
	require.Len(t, out, 1)
	delete(out[0], "seconds")
	require.Equal(t, map[string]any{"file": path, "lines": 12.0, "published": 9.0, "duplicates": 2.0, "failed": 1.0,
		"outcomes": map[string]any{"created": 2.0, "applied": 7.0, "replayed": 0.0, "timedOut": 0.0,
			"rejected": map[string]any{"INSUFFICIENT_FUNDS": 1.0, "KEY_REUSED": 1.0}}}, out[0])

	byLine := readResults(t, results)
	want := map[int][2]string{ // kind, outcome
		1: {"create-wallet", "created"}, 2: {"create-balance", "created"}, 3: {"credit-wallet", "applied"},
		4: {"debit-wallet", "applied"}, 5: {"confirm-hold", "applied"}, 6: {"debit-wallet", "applied"},
		7: {"void-hold", "applied"}, 8: {"debit-wallet", "rejected"}, 9: {"credit-wallet", "applied"},
		10: {"credit-wallet", "rejected"}, 11: {"update-wallet", "applied"},
	}
	for line, kw := range want {
		require.Equal(t, kw[0], byLine[line]["kind"], "line %d", line)
		require.Equal(t, kw[1], byLine[line]["outcome"], "line %d: %v", line, byLine[line])
	}
	require.Equal(t, "INSUFFICIENT_FUNDS", byLine[8]["code"])
	require.Equal(t, true, byLine[9]["duplicate"])
	require.Equal(t, "publisher", byLine[10]["decidedBy"])
	require.Contains(t, byLine[12]["error"], `"kind" is required`)

	// Lines without a kind take the one on the command line; two equal
	// credits with their own keys are two credits.
	path = writeLines(t, "credits.jsonl",
		`{"key":"f-c2","walletID":"`+w+`","amount":`+eur(5)+`}`,
		`{"key":"f-c3","walletID":"`+w+`","amount":`+eur(5)+`}`,
		`{"kind":"debit-wallet","key":"f-d4","walletID":"`+w+`","amount":`+eur(710)+`}`,
	)
	stdout.Reset()
	stderr.Reset()
	code = Main(context.Background(), []string{"publish", "credit-wallet", "--nats-url", b.addrs.NATSURL, "--from-file", path, "--wait", "--timeout", "30s"},
		Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitOK, code, stderr.String())
	out = decodeLines(t, stdout.String())
	require.Len(t, out, 1)
	delete(out[0], "seconds")
	// 1000 credited, 300 held and confirmed, 200 held and voided: 700 left,
	// and the two credits of 5 make the debit of 710 exact.
	require.Equal(t, map[string]any{"file": path, "lines": 3.0, "published": 3.0, "duplicates": 0.0, "failed": 0.0,
		"outcomes": map[string]any{"created": 0.0, "applied": 3.0, "replayed": 0.0, "timedOut": 0.0, "rejected": map[string]any{}}}, out[0])
}
