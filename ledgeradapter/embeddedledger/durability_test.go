package embeddedledger_test

import (
	"bufio"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// childDirEnv turns the test binary into a ledger server process that
// TestSurvivesSIGKILL kills.
const childDirEnv = "EMBEDDEDLEDGER_TEST_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		serveChild(dir)
		return
	}
	os.Exit(m.Run())
}

// serveChild serves a file-backed ledger and prints its URL on stdout, then
// serves until killed.
func serveChild(dir string) {
	l, err := embeddedledger.Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("URL http://%s\n", ln.Addr())
	_ = http.Serve(ln, l.Handler())
	os.Exit(3)
}

// TestSurvivesSIGKILL: every write answered 204 before the process is
// SIGKILLed is there when the directory is opened again. The writes are
// sent 8 at a time, so that they are committed in groups.
func TestSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "child did not start")
	base := strings.TrimSpace(strings.TrimPrefix(line, "URL "))

	// post is called from several goroutines: a failure is a status of 0.
	post := func(path, body, ik string) int {
		req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		if err != nil {
			return 0
		}
		if ik != "" {
			req.Header.Set("Idempotency-Key", ik)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusNoContent, post("/v2/l", "", ""))
	const n, senders = 200, 8
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := s; i < n; i += senders {
				statuses[i] = post(fmt.Sprintf("/v2/l/accounts/w:%d:main/metadata", i), `{"a":"1"}`, fmt.Sprint("k", i))
			}
		})
	}
	wg.Wait()
	for i, st := range statuses {
		require.Equal(t, http.StatusNoContent, st, "write %d", i)
	}

	require.NoError(t, cmd.Process.Kill())
	killed = true
	_ = cmd.Wait()

	b := setup(t, dir)
	for i := range n {
		require.Equal(t, map[string]string{"a": "1"}, b.account(t, "l", fmt.Sprintf("w:%d:main", i)).Metadata)
	}
	require.Len(t, b.allLogs(t, "l"), n)
	replay := b.addMetadata(t, "l", "w:0:main", `{"a":"1"}`, "k0")
	require.Equal(t, "true", replay.header.Get("Idempotency-Hit"))
}

// bumpUserVersion makes the file look written by a newer build.
func bumpUserVersion(dir string) error {
	db, err := sql.Open("sqlite", filepath.Join(dir, embeddedledger.FileName))
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec("PRAGMA user_version = 99")
	return err
}
