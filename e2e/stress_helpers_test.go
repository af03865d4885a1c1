//go:build unix

package e2e

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

var (
	stressBalancesFlag = flag.Int("e2e.stress-balances", 500, "balances the stress tests command, each with 3 keys at once (CI needs at least 500)")
	killOneFlag        = flag.Int("e2e.kill-one-commands", 1000, "distinct commands TestStressKillOneWorker stores (CI needs at least 1000)")
)

// Metric names scraped from the workers' /metrics.
const (
	metricClaimWaits   = "wallets_worker_claim_waits_total"
	metricRedeliveries = "wallets_worker_redeliveries_total"
	metricInFlight     = "wallets_worker_commands_in_flight"
)

// ledgerDelay slows the test's ledger while on: every request by all, reads
// of an account by get more. A slow read widens the window between a
// command's read of a fresh account and its write, which is where two keys
// creating one balance race.
type ledgerDelay struct {
	on       atomic.Bool
	get, all time.Duration
}

func (d *ledgerDelay) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.on.Load() {
			wait := d.all
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/accounts/") {
				wait += d.get
			}
			if wait > 0 {
				select { // the latency being modelled, not a synchronisation
				case <-time.After(wait):
				case <-r.Context().Done():
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// startWorkers starts n workers named prefix-0 … prefix-(n-1) with args.
func startWorkers(t testing.TB, prefix string, n int, args ...string) []*workerProcess {
	t.Helper()
	ws := make([]*workerProcess, n)
	for i := range ws {
		ws[i] = startWorker(t, fmt.Sprintf("%s-%d", prefix, i), args...)
	}
	return ws
}

// allAlive fails a wait when any of ws exits behind the test's back.
func allAlive(ws ...*workerProcess) func() error {
	return func() error {
		var errs []error
		for _, w := range ws {
			errs = append(errs, aliveCheck(func() *workerProcess { return w })())
		}
		return errors.Join(errs...)
	}
}

// publishAsync publishes cmds in order, back to back, with async publishes
// on a JetStream context of its own (its pending cap fits them all), then
// waits for every PubAck and records it in pub.
func publishAsync(t testing.TB, nc *nats.Conn, pub *publisher, cmds []command) {
	t.Helper()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(max(len(cmds), 256)))
	require.NoError(t, err)
	futures := make([]jetstream.PubAckFuture, len(cmds))
	for i, c := range cmds {
		m := nats.NewMsg(subjectCommandPrefix + c.WalletID)
		m.Data = c.body()
		m.Header.Set(headerMsgID, c.Key)
		futures[i], err = js.PublishMsgAsync(m, jetstream.WithExpectStream(streamCommands))
		require.NoError(t, err, "publish %q", c.Key)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(*waitFlag):
		t.Fatalf("%d publishes still without a PubAck after %s", js.PublishAsyncPending(), *waitFlag)
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			require.NoError(t, pub.record(cmds[i].Key, ack))
		case err := <-f.Err():
			t.Fatalf("publish %q: %v", cmds[i].Key, err)
		}
	}
}

// shuffleWindows returns groups flattened, shuffled within windows of
// `window` groups: the commands of one group are published within a few
// messages of each other, so that they are in flight at the same moment on
// one worker or several, in an order that varies from group to group.
func shuffleWindows(rng *rand.Rand, groups [][]command, window int) []command {
	var out []command
	for start := 0; start < len(groups); start += window {
		var w []command
		for _, g := range groups[start:min(start+window, len(groups))] {
			w = append(w, g...)
		}
		rng.Shuffle(len(w), func(i, j int) { w[i], w[j] = w[j], w[i] })
		out = append(out, w...)
	}
	return out
}

// scrapeMetric reads a counter or gauge (the sum of its series) from a
// worker's /metrics.
func scrapeMetric(p *workerProcess, name string) (float64, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + p.httpAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s /metrics: %s", p.name, resp.Status)
	}
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s /metrics: %q: %w", p.name, line, err)
		}
		sum += v
		found = true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("%s /metrics has no %s", p.name, name)
	}
	return sum, nil
}

// scrapeTotal sums a counter over ws.
func scrapeTotal(t testing.TB, name string, ws ...*workerProcess) int {
	t.Helper()
	var total float64
	for _, w := range ws {
		v, err := scrapeMetric(w, name)
		require.NoError(t, err)
		total += v
	}
	return int(total)
}

// ledgerWrites counts the SET_METADATA logs on each account.
func ledgerWrites(t testing.TB, client *ledgeradapter.Client) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logs, err := client.AllLogs(ctx, ledgerName)
	require.NoError(t, err, "read the ledger's logs")
	out := map[string]int{}
	for _, l := range logs {
		if sm, err := l.SetMetadata(); err == nil && sm.TargetType == "ACCOUNT" {
			out[sm.TargetID]++
		}
	}
	return out
}

// balanceTally is what the keys of one balance got.
type balanceTally struct {
	created, replayed, alreadyExists, other int // outcome events
	writes                                  int // SET_METADATA logs on its account
	winner                                  string
}

// raceFigures add up the tallies of every balance.
type raceFigures struct {
	created, replayed, alreadyExists, other, writes int
	// doubled counts the balances written more than once or created (not
	// replayed) by more than one event: the race the claim closes.
	doubled int
	// lost and repeated count stored commands without an outcome and
	// outcomes beyond the first of a stored command.
	lost, repeated int
}

// tallyBalances counts, without failing the test, what each group of
// commands (the keys of one balance) got: its outcome events, by key, and
// the ledger writes on its account. The winner of a balance is the key of
// its first created event.
func tallyBalances(pub *publisher, events []outcome, groups [][]command, writes map[string]int) ([]balanceTally, raceFigures) {
	groupOf := map[string]int{}
	for i, g := range groups {
		for _, c := range g {
			groupOf[c.Key] = i
		}
	}
	tallies := make([]balanceTally, len(groups))
	var f raceFigures
	perSeq := map[uint64]int{}
	for _, o := range events {
		perSeq[o.CmdSeq]++
		i, ok := groupOf[o.Key]
		if !ok {
			f.other++
			continue
		}
		b := &tallies[i]
		switch {
		case o.Created != nil && o.Created.Replayed:
			b.replayed++
			f.replayed++
		case o.Created != nil:
			b.created++
			f.created++
		case o.Rejected != nil && o.Rejected.Code == codeAlreadyExists:
			b.alreadyExists++
			f.alreadyExists++
		default:
			b.other++
			f.other++
		}
		if o.Created != nil && b.winner == "" {
			b.winner = o.Key
		}
	}
	for seq := range pub.stored() {
		switch n := perSeq[seq]; {
		case n == 0:
			f.lost++
		case n > 1:
			f.repeated += n - 1
		}
	}
	for i, g := range groups {
		b := &tallies[i]
		b.writes = writes[g[0].account()]
		f.writes += b.writes
		if b.writes > 1 || b.created > 1 {
			f.doubled++
		}
	}
	return tallies, f
}

// plansOf turns groups into the balance plans verifyOutcomes and
// verifyLedger check: the winner is the key that created the balance (the
// first key when none did, which they then report), every other key a loser.
func plansOf(groups [][]command, tallies []balanceTally) []balancePlan {
	plans := make([]balancePlan, len(groups))
	for i, g := range groups {
		w := 0
		for j, c := range g {
			if c.Key == tallies[i].winner {
				w = j
			}
		}
		plans[i].Winner = g[w]
		for j, c := range g {
			if j != w {
				plans[i].Losers = append(plans[i].Losers, c)
			}
		}
	}
	return plans
}
