package cli

import (
	"flag"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The README's configuration reference lists exactly the flags of `run`.
func TestReadmeConfigurationReferenceMatchesTheFlags(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	readme := string(b)
	start := strings.Index(readme, "## Configuration reference")
	require.GreaterOrEqual(t, start, 0, "README has a configuration reference")
	section := readme[start+3:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	row := regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)`")
	var documented []string
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1])
	}

	fs, _ := runFlagSet(Env{Stderr: io.Discard})
	var flags []string
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f.Name) })
	sort.Strings(documented)
	sort.Strings(flags)
	require.Equal(t, flags, documented, "flags of `run` vs rows of the README's configuration reference")
}
