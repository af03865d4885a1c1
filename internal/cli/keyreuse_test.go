package cli

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPublishWaitKeyReusedInsideTheWindow is the new user's mistake: the same
// --key for another command within the duplicate window. JetStream drops the
// publish and answers with the first command's sequence; --wait compares what
// it sent with that command's outcome and answers KEY_REUSED itself (exit 3),
// also when the first command was for another wallet, while a true duplicate
// still gets the first outcome (exit 0).
func TestPublishWaitKeyReusedInsideTheWindow(t *testing.T) {
	b := setup(t)
	pub := func(args ...string) (int, []map[string]any, string) {
		code, out, errOut := b.cli(t, append([]string{"publish", "create-balance", "--nats-url", b.addrs.NATSURL, "--wait", "--timeout", "20s"}, args...)...)
		return code, decodeLines(t, out), errOut
	}

	code, lines, errOut := pub("--wallet", "kr", "--name", "gift", "--priority", "2", "--key", "kr-1")
	require.Equal(t, ExitOK, code, errOut)
	require.Len(t, lines, 2)
	first := lines[1]
	require.Equal(t, "balance-created", first["type"])
	require.NotContains(t, first, "decidedBy")

	requireKeyReused := func(t *testing.T, wallet string, lines []map[string]any) {
		t.Helper()
		require.Len(t, lines, 2)
		require.Equal(t, true, lines[0]["duplicate"])
		require.Equal(t, "balance-create-rejected", lines[1]["type"])
		require.Equal(t, "publisher", lines[1]["decidedBy"])
		require.NotContains(t, lines[1], "subject", "no event was published")
		ev := lines[1]["event"].(map[string]any)
		require.Equal(t, "KEY_REUSED", ev["code"])
		require.Equal(t, "kr-1", ev["key"])
		require.Equal(t, wallet, ev["walletID"])
		require.Equal(t, "gift", ev["name"])
		require.ElementsMatch(t, []string{"key", "walletID", "name", "code", "message"}, keys(ev), "the worker's rejected event, field for field")
		require.Equal(t, first, lines[1]["original"], "the first command's outcome, as printed for it")
	}

	t.Run("another priority", func(t *testing.T) {
		code, lines, errOut := pub("--wallet", "kr", "--name", "gift", "--priority", "5", "--key", "kr-1")
		require.Equal(t, ExitRejected, code, errOut)
		requireKeyReused(t, "kr", lines)
	})
	t.Run("another wallet, no timeout", func(t *testing.T) {
		code, lines, errOut := pub("--wallet", "kr2", "--name", "gift", "--priority", "2", "--key", "kr-1")
		require.Equal(t, ExitRejected, code, errOut)
		requireKeyReused(t, "kr2", lines)
	})
	t.Run("a true duplicate", func(t *testing.T) {
		code, lines, errOut := pub("--wallet", "kr", "--name", "gift", "--priority", "2", "--key", "kr-1")
		require.Equal(t, ExitOK, code, errOut)
		require.Equal(t, true, lines[0]["duplicate"])
		require.Equal(t, first, lines[1])
	})

	t.Run("from a file", func(t *testing.T) {
		path := writeLines(t, "reuse.jsonl",
			`{"walletID":"fr","name":"gift","priority":2,"key":"fr-1"}`,
			`{"walletID":"fr","name":"gift","priority":5,"key":"fr-1"}`,
			`{"walletID":"fr2","name":"gift","priority":2,"key":"fr-1"}`,
			`{"walletID":"fr","name":"gift","priority":2,"key":"fr-1"}`,
		)
		results := filepath.Join(t.TempDir(), "results.jsonl")
		// One publish at a time: line 1 is the one stored.
		code, sum, errOut := publishFileCLI(t, b.addrs.NATSURL, "--from-file", path, "--in-flight", "1", "--wait", "--timeout", "20s", "--results", results)
		require.Equal(t, ExitRejected, code, errOut)
		require.Equal(t, withOutcomes(wantSummary(path, 4, 1, 3, 0), wantOutcomes(2, 0, map[string]any{"KEY_REUSED": float64(2)}, 0)), sum)
		byLine := readResults(t, results)
		for _, n := range []int{1, 4} {
			require.Equal(t, "created", byLine[n]["outcome"], "line %d", n)
			require.NotContains(t, byLine[n], "decidedBy", "line %d", n)
		}
		for _, n := range []int{2, 3} {
			require.Equal(t, "rejected", byLine[n]["outcome"], "line %d", n)
			require.Equal(t, "KEY_REUSED", byLine[n]["code"], "line %d", n)
			require.Equal(t, "publisher", byLine[n]["decidedBy"], "line %d", n)
		}
	})
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
