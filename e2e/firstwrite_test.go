package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
	"github.com/wallets-worker/wallets-worker/messages"
)

// countInternal counts the ledger's INTERNAL answers: a 500, or an element
// of a bulk refused with INTERNAL (how the ledger answers the loser of two
// racing first writes of one account).
type countInternal struct{ n atomic.Int64 }

func (c *countInternal) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if rec.Code == http.StatusInternalServerError {
			c.n.Add(1)
		} else {
			c.n.Add(int64(bytes.Count(body, []byte(`"errorCode":"INTERNAL"`))))
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	})
}

// TestRacingFirstWritesThroughTheBinary drives workers into the real
// ledger's answer to racing first writes of one account: every create-wallet
// command is in the stream twice (the second copy published after the
// deduplication window), and two workers with --order none take both
// copies at once, so their writes of the wallet's first account race. The
// ledger answers the losers 500 INTERNAL (the embedded one as the real
// v2.4.12 does); the worker retries them and settles each copy: one creates
// the wallet, the other replays it, nothing is dead-lettered, and each
// wallet is written once.
func TestRacingFirstWritesThroughTheBinary(t *testing.T) {
	const wallets = 150
	natsURL := startNATS(t)
	var internal countInternal
	// A race window wider than the default 5 ms: the copies of a command
	// reach the ledger from two processes, each in a bulk of up to 10
	// (--ledger-bulk-max) after a list of up to 100 reads, and on a loaded
	// machine they may arrive further apart than that (with 50 ms, 2 runs
	// of 6 saw no race; with 250 ms, 13 to 54 races in each of 6).
	tl := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: internal.wrap,
		Options: []embeddedledger.Option{embeddedledger.WithRaceWindow(250 * time.Millisecond)}})
	args := []string{"--nats-url", natsURL, "--ledger-url", tl.URL, "--duplicate-window", "1s", "--order", "none"}

	out, err := exec.Command(workerBinary, append([]string{"provision"}, args...)...).CombinedOutput()
	require.NoError(t, err, "provision: %s", out)

	_, js := connectNATS(t, natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	key := func(i int) string { return fmt.Sprintf("race-%03d", i) }
	publishAll := func() {
		for i := range wallets {
			m := &nats.Msg{Subject: "wallets.commands.create-wallet." + messages.WalletIDOf(key(i)), Header: nats.Header{},
				Data: fmt.Appendf(nil, `{"name":"w%d","metadata":{"n":"%d"}}`, i, i)}
			m.Header.Set(messages.HeaderMsgID, key(i))
			ack, err := js.PublishMsg(ctx, m)
			require.NoError(t, err)
			require.False(t, ack.Duplicate, "%s published within the window", key(i))
		}
	}
	publishAll()
	time.Sleep(1500 * time.Millisecond) // past the deduplication window
	publishAll()

	events := testutil.NewStreamReader(t, js, messages.StreamEvents, false)
	for i := range 2 {
		startWorker(t, fmt.Sprintf("racer-%d", i), append(args, "--data-dir", t.TempDir())...)
	}

	// Two outcomes per key, one for each copy (event IDs carry the stream
	// sequence); a redelivery's repeated event is dropped by the events
	// stream's deduplication.
	type outcome struct {
		created, replayed int
		wallet            []byte
	}
	got := map[string]*outcome{}
	seen := 0
	for seen < 2*wallets {
		m, err := events.Next(*waitFlag)
		require.NoError(t, err, "outcomes: %d of %d", seen, 2*wallets)
		subject := m.Subject
		require.True(t, strings.HasPrefix(subject, "wallets.events.wallet-created."), "%s: %s", subject, m.Data)
		var e struct {
			messages.WalletCreated
			Raw json.RawMessage `json:"wallet"`
		}
		require.NoError(t, json.Unmarshal(m.Data, &e))
		o := got[e.Key]
		if o == nil {
			o = &outcome{}
			got[e.Key] = o
		}
		if e.Replayed {
			o.replayed++
		} else {
			o.created++
		}
		if o.wallet == nil {
			o.wallet = e.Raw
		} else {
			require.JSONEq(t, string(o.wallet), string(e.Raw), "%s: both copies answer the same wallet", e.Key)
		}
		seen++
	}
	require.Len(t, got, wallets)
	for k, o := range got {
		require.Equal(t, 1, o.created, "%s: created once", k)
		require.Equal(t, 1, o.replayed, "%s: replayed once", k)
	}
	dlq, err := js.Stream(ctx, messages.StreamDLQ)
	require.NoError(t, err)
	info, err := dlq.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs, "dead letters")

	// One metadata write per wallet in the ledger's log.
	writes := map[string]int{}
	cursor := ""
	for {
		page, err := tl.Client.ListLogs(ctx, "wallets-002", 100, cursor)
		require.NoError(t, err)
		for _, l := range page.Data {
			if l.Type == "SET_METADATA" {
				writes[l.IdempotencyKey]++
			}
		}
		if page.Next == "" {
			break
		}
		cursor = page.Next
	}
	require.Len(t, writes, wallets)
	for k, n := range writes {
		require.Equal(t, 1, n, "%s written more than once", k)
	}
	t.Logf("%d wallets, each commanded twice at once: %d INTERNAL answers from the ledger, each retried", wallets, internal.n.Load())
	require.Positive(t, internal.n.Load(), "no first write raced another: the test did not exercise the race")
}
