package tracing

import (
	"go/build"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLibraryImportsNothingInternal: the packages a program imports to
// publish or apply commands (messages, tracing, ledgeradapter and its
// embedded ledger, handlers, producer, worker) reach no package of
// internal/, which serves the command line: what they share sits beneath
// them, as this package does.
func TestLibraryImportsNothingInternal(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"messages", "tracing", "ledgeradapter", "ledgeradapter/embeddedledger", "handlers", "producer", "worker"} {
		pkg, err := build.ImportDir(filepath.Join("..", dir), 0)
		require.NoError(t, err, dir)
		for _, imp := range pkg.Imports {
			require.False(t, strings.Contains(imp, "/wallets-worker/internal/"), "%s imports %s", dir, imp)
		}
	}
}
