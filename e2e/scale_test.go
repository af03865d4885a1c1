//go:build unix

package e2e

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestStressKillOneWorker runs a pool of three workers on one consumer,
// SIGKILLs one of them in the middle of a load with duplicates and
// conflicting keys, and does not restart it: the two left must finish
// everything, the killed worker's unsettled commands included once their
// --ack-wait runs out. Every stored command ends in exactly one outcome, each
// balance is written once, by the key that created it.
func TestStressKillOneWorker(t *testing.T) {
	const (
		workers  = 3
		ackWait  = 3 * time.Second
		killAt   = 0.3 // share of the outcomes in when the kill comes
		conflict = 0.1 // share of the stored commands that are a second key
		dupShare = 0.1 // republishes, as a share of the stored commands
	)
	n := *killOneFlag
	rng := rand.New(rand.NewPCG(seed(t), 0x5ca1e))
	run := rng.Uint32() % 100000

	// Balances with one key, a tenth of them with a second, conflicting
	// key (another priority, no expiry) published in the same burst: which
	// key wins is the claim's call, the test finds it in the events.
	conflicts := int(float64(n) * conflict)
	primaries := n - conflicts
	wallets := max(1, (primaries+4)/5)
	groups := make([][]command, primaries)
	for i := range groups {
		c := command{
			Key:      fmt.Sprintf("kill-one:%05d/key %05d", run, i),
			WalletID: fmt.Sprintf("kill-one-w%04d", i%wallets),
			Name:     fmt.Sprintf("b%d", i/wallets),
			Priority: 1,
		}
		if i%3 == 0 {
			exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond)
			c.ExpiresAt = &exp
		}
		groups[i] = []command{c}
	}
	for _, i := range rng.Perm(primaries)[:conflicts] {
		c := groups[i][0]
		c.Key += "/conflict"
		c.Priority = 2
		c.ExpiresAt = nil
		groups[i] = append(groups[i], c)
	}
	// Duplicates: the same key and body again, right after the first:
	// JetStream drops them (--duplicate-window).
	distinct := shuffleWindows(rng, groups, 8)
	duplicates := int(float64(n) * dupShare)
	again := map[int]bool{}
	for _, i := range rng.Perm(n)[:duplicates] {
		again[i] = true
	}
	var order []command
	for i, c := range distinct {
		order = append(order, c)
		if again[i] {
			order = append(order, c)
		}
	}

	natsURL := startNATS(t)
	// Every ledger request takes 2ms more, so that the victim has commands
	// in flight, leased to it, when it dies.
	delay := &ledgerDelay{all: 2 * time.Millisecond}
	delay.on.Store(true)
	ledger := startLedger(t, delay.wrap)
	args := []string{
		"--nats-url", natsURL, "--ledger-url", ledger.URL, "--data-dir", t.TempDir(),
		"--concurrency", "8", "--ack-wait", ackWait.String(), "--ledger-timeout", "1500ms",
	}
	pool := startWorkers(t, "kill-one", workers, args...)
	victim := rng.IntN(workers)
	var survivors []*workerProcess
	for i, w := range pool {
		if i != victim {
			survivors = append(survivors, w)
		}
	}
	nc, js := connectNATS(t, natsURL)
	col := startCollector(t, js, nil)
	pub := newPublisher(js)

	started := time.Now()
	publishAsync(t, nc, pub, order) // the workers consume while it waits for the PubAcks
	target := int(float64(n) * killAt)
	eventually(t, *waitFlag, fmt.Sprintf("%d outcomes, and commands in flight on %s", target, pool[victim].name), func() (bool, string) {
		if err := allAlive(pool...)(); err != nil {
			t.Fatal(err)
		}
		got := col.settled()
		if got >= n {
			t.Fatalf("all %d commands settled before %s had any in flight: nothing to kill mid-run", n, pool[victim].name)
		}
		if got < target {
			return false, fmt.Sprintf("%d outcomes", got)
		}
		inFlight, err := scrapeMetric(pool[victim], metricInFlight)
		if err != nil {
			return false, err.Error()
		}
		return inFlight > 0, fmt.Sprintf("%d outcomes, %g commands in flight on the victim", got, inFlight)
	})
	pool[victim].kill(t)
	killedAt, outcomesAtKill := time.Since(started), col.settled()
	t.Logf("SIGKILLed %s at %d outcomes, %s in; not restarting it", pool[victim].name, outcomesAtKill, killedAt.Round(time.Millisecond))

	waitSettled(t, *waitFlag, js, pub, col, nil, allAlive(survivors...))
	elapsed := time.Since(started)
	delay.on.Store(false)

	events := col.events()
	tallies, _ := tallyBalances(pub, events, groups, ledgerWrites(t, ledger.Client))
	plans := plansOf(groups, tallies)
	f := verifyOutcomes(t, pub, events, plans)
	logs := verifyLedger(t, ledger.Client, plans)
	redeliveries := scrapeTotal(t, metricRedeliveries, survivors...)
	claimWaits := scrapeTotal(t, metricClaimWaits, survivors...)
	publishes, deduped, stored := pub.counts()
	printFigures(t, fmt.Sprintf("kill-one: workers=%d killed=%s commands=%d stored=%d duplicates=%d deduped=%d conflicts=%d outcomes=%d at_kill=%d lost=%d doubled=%d replayed=%d redeliveries=%d claim_waits=%d ledger_logs=%d after_kill=%s elapsed=%s",
		workers, pool[victim].name, publishes, stored, duplicates, deduped, conflicts, f.outcomes, outcomesAtKill, f.lost, f.doubled, f.replayed,
		redeliveries, claimWaits, logs, (elapsed-killedAt).Round(100*time.Millisecond), elapsed.Round(100*time.Millisecond)))

	s, err := readState(js)
	require.NoError(t, err)
	require.Zero(t, s.dlq, "dead letters: no command of this load may be dead-lettered")
	require.Equal(t, len(order), publishes)
	require.Equal(t, n, stored, "distinct stored commands")
	require.Equal(t, duplicates, deduped, "JetStream drops every duplicate")
	require.Equal(t, primaries, logs, "one ledger write per balance")
	require.Less(t, outcomesAtKill, n, "the load was done before the kill: nothing tested the survivors")
	// The victim died with commands in flight, which the survivors got
	// again once their ack wait ran out (and settled, as verifyOutcomes
	// showed: every stored command has its outcome).
	require.Positive(t, redeliveries, "no command came back from the killed worker")
	for _, w := range survivors {
		w.signal(t, syscall.SIGTERM)
	}
	for _, w := range survivors {
		require.Equal(t, 0, w.waitExit(t, time.Minute), "%s: exit status after SIGTERM", w.name)
	}
}
