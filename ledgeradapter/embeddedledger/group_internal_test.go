package embeddedledger

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// queued counts the jobs waiting for the committer.
func (q *writeQueue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.jobs)
}

// held stops the committer with a job of its own that waits for the write
// lock, runs send, waits until want jobs are queued behind it, then lets
// it go: the queued jobs make one group.
func held(t *testing.T, l *Ledger, want int, send func()) {
	t.Helper()
	l.writeMu.Lock()
	locked := true
	defer func() {
		if locked {
			l.writeMu.Unlock()
		}
	}()
	plug := &job{ctx: t.Context(), weight: 1, run: func(*groupTx) error { return nil }, done: make(chan struct{})}
	require.NoError(t, l.queue.push(plug))
	require.Eventually(t, func() bool { return l.queue.queued() == 0 }, 30*time.Second, time.Millisecond,
		"the committer did not take its job")
	send()
	require.Eventually(t, func() bool { return l.queue.queued() >= want }, 30*time.Second, time.Millisecond,
		"the writes did not queue")
	locked = false
	l.writeMu.Unlock()
}

// TestGroupCommitKeepsEachWriteItsOwn: writes queued together commit in one
// transaction, yet each keeps its own answer: applied, replayed, refused for
// its key, dry run (applied to nothing), and the logs chain in order.
func TestGroupCommitKeepsEachWriteItsOwn(t *testing.T) {
	t.Parallel()
	b := setupRace(t)
	require.Equal(t, http.StatusNoContent, b.post(t, "/v2/l/accounts/old/metadata", `{"a":"1"}`, "old").status)

	type req struct {
		path, body, ik string
		want           raceAnswer
	}
	reqs := []req{
		{"/v2/l/accounts/w:1/metadata", `{"a":"1"}`, "k1", raceAnswer{status: http.StatusNoContent}},
		{"/v2/l/accounts/old/metadata", `{"a":"1"}`, "old", raceAnswer{status: http.StatusNoContent, hit: "true"}},
		{"/v2/l/accounts/w:2/metadata", `{"a":"2"}`, "old", raceAnswer{status: http.StatusBadRequest}},
		{"/v2/l/accounts/w:3/metadata?dryRun=true", `{"a":"3"}`, "k3", raceAnswer{status: http.StatusNoContent}},
		{"/v2/l/accounts/w:4/metadata", `{"a":"4"}`, "k4", raceAnswer{status: http.StatusNoContent}},
	}
	answers := make([]raceAnswer, len(reqs))
	var wg sync.WaitGroup
	before := b.l.commits.Load()
	held(t, b.l, len(reqs), func() {
		for i, r := range reqs {
			wg.Go(func() { answers[i] = b.post(t, r.path, r.body, r.ik) })
		}
	})
	wg.Wait()
	for i, r := range reqs {
		got := answers[i]
		got.body = ""
		require.Equal(t, r.want, got, "%s %s", r.path, r.ik)
	}
	require.Equal(t, int64(2), b.l.commits.Load()-before, "one transaction for the queued writes, after the committer's own")

	logs := b.logs(t)
	require.Len(t, logs, 3, "the seed, w:1 and w:4: the hit, the refusal and the dry run logged nothing")
	for i, lg := range logs {
		require.Equal(t, int64(len(logs)-i), lg.ID, "ids without gaps, newest first")
	}
	require.Equal(t, http.StatusNotFound, b.get(t, "/v2/l/accounts/w:3").status, "the dry run left nothing")
	require.Equal(t, http.StatusNoContent, b.post(t, "/v2/l/accounts/w:3/metadata", `{"a":"3"}`, "k3").status,
		"nor consumed its key")
}

// TestGroupCommitIsolatesAStorageFailure: when one write of a group fails in
// storage, the transaction is rolled back and every write runs again alone,
// so that only the failing one is answered with the failure.
func TestGroupCommitIsolatesAStorageFailure(t *testing.T) {
	t.Parallel()
	b := setupRace(t)
	broken := errors.New("storage broke")
	var brokenErr error
	answers := make([]raceAnswer, 3)
	var wg sync.WaitGroup
	held(t, b.l, 4, func() {
		for i := range answers {
			wg.Go(func() {
				answers[i] = b.post(t, fmt.Sprintf("/v2/l/accounts/w:%d/metadata", i), `{"a":"1"}`, fmt.Sprint("k", i))
			})
		}
		wg.Go(func() {
			brokenErr = b.l.submit(&job{ctx: t.Context(), weight: 1, run: func(*groupTx) error { return broken }})
		})
	})
	wg.Wait()
	require.ErrorIs(t, brokenErr, broken)
	for i, a := range answers {
		require.Equal(t, raceAnswer{status: http.StatusNoContent}, a, "write %d", i)
	}
	require.Len(t, b.logs(t), len(answers))
}

// TestCloseFinishesQueuedWrites: Close answers the writes already queued
// before it closes the database, and refuses later ones.
func TestCloseFinishesQueuedWrites(t *testing.T) {
	t.Parallel()
	l, err := Open(t.TempDir())
	require.NoError(t, err)
	ran := false
	var jobErr, closeErr error
	var wg, closing sync.WaitGroup
	held(t, l, 1, func() {
		wg.Go(func() {
			jobErr = l.submit(&job{ctx: t.Context(), weight: 1, run: func(g *groupTx) error {
				ran = true
				return nil
			}})
		})
		require.Eventually(t, func() bool { return l.queue.queued() == 1 }, 30*time.Second, time.Millisecond)
		closing.Go(func() { closeErr = l.Close() })
		require.Eventually(t, func() bool {
			l.queue.mu.Lock()
			defer l.queue.mu.Unlock()
			return l.queue.closed
		}, 30*time.Second, time.Millisecond, "Close did not start")
	})
	closing.Wait()
	wg.Wait()
	require.NoError(t, closeErr)
	require.NoError(t, jobErr)
	require.True(t, ran, "the queued write ran before the database closed")
	require.ErrorIs(t, l.submit(&job{ctx: t.Context(), weight: 1, run: func(*groupTx) error { return nil }}), errClosed)
}
