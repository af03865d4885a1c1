package cli

import (
	"io"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestEmbeddedMemoryLimit: run sets its soft memory limit only when it embeds
// both NATS and the ledger and the user has not set GOMEMLIMIT.
func TestEmbeddedMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		gomemlimit string
		want       int64
	}{
		{name: "all embedded", want: allEmbeddedMemoryLimit},
		{name: "GOMEMLIMIT set", gomemlimit: "200MiB"},
		{name: "GOMEMLIMIT off", gomemlimit: "off"},
		{name: "external NATS", args: []string{"--nats-url", "nats://127.0.0.1:4222"}},
		{name: "external ledger", args: []string{"--ledger-url", "http://127.0.0.1:3068"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "GOMEMLIMIT" {
					return tc.gomemlimit
				}
				return ""
			}
			fs, f := runFlagSet(Env{Stderr: io.Discard})
			require.NoError(t, parse(fs, tc.args, getenv))
			require.Equal(t, tc.want, embeddedMemoryLimit(f, getenv))
		})
	}
}

// TestRunSetsTheMemoryLimitWhileRunning: an all-embedded run (GOMEMLIMIT
// unset) runs under allEmbeddedMemoryLimit and gives the previous limit back
// when it returns. Not parallel: the limit is the process's.
func TestRunSetsTheMemoryLimitWhileRunning(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { // after run's own clean-up, registered below: run has returned
		if got := debug.SetMemoryLimit(-1); got != before {
			t.Errorf("memory limit after run = %d, want the previous %d", got, before)
		}
	})
	setup(t)
	require.Equal(t, int64(allEmbeddedMemoryLimit), debug.SetMemoryLimit(-1))
}
