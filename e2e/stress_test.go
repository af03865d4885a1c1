//go:build unix

package e2e

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestStressFirstWriterWins commands every balance with three different keys
// at the same moment, each asking for another priority and expiry, and lets
// three worker processes race for them against a ledger whose account reads
// are slowed a little. The first-writer-wins claim must leave exactly one
// key per balance: one balance-created event (not a replay), two
// ALREADY_EXISTS, one ledger write carrying the winner's fields and marker
// and no other key's.
func TestStressFirstWriterWins(t *testing.T) {
	runStress(t, stressConfig{name: "stress", getDelay: 3 * time.Millisecond})
}

// TestStressWithoutClaimShowsRace runs the same load with --no-claim and
// requires the race to show: some balance written more than once or created
// by more than one key. It proves that TestStressFirstWriterWins can fail,
// and that what makes it pass is the claim: the load, the workers and the
// ledger's delay are the same.
func TestStressWithoutClaimShowsRace(t *testing.T) {
	runStress(t, stressConfig{name: "stress-no-claim", noClaim: true, getDelay: 3 * time.Millisecond})
}

type stressConfig struct {
	name     string
	noClaim  bool
	getDelay time.Duration // added to each read of an account
}

const (
	stressWorkers     = 3
	stressConcurrency = 8
	stressKeys        = 3 // keys per balance
)

// stressGroups returns n balances, each with its three competing commands.
// The keys differ in priority and expiry, so that the ledger shows which
// one wrote.
func stressGroups(name string, run uint32, n int) [][]command {
	wallets := max(1, (n+3)/4)
	groups := make([][]command, n)
	for i := range groups {
		for k := range stressKeys {
			c := command{
				Key:      fmt.Sprintf("%s:%05d/balance %04d/key %d", name, run, i, k),
				WalletID: fmt.Sprintf("%s-w%04d", name, i%wallets),
				Name:     fmt.Sprintf("b%d", i/wallets),
				Priority: int64(k + 1),
			}
			if k > 0 {
				exp := time.Date(2029+k, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second)
				c.ExpiresAt = &exp
			}
			groups[i] = append(groups[i], c)
		}
	}
	return groups
}

func runStress(t *testing.T, cfg stressConfig) {
	n := *stressBalancesFlag
	rng := rand.New(rand.NewPCG(seed(t), 0x57e55))
	groups := stressGroups(cfg.name, rng.Uint32()%100000, n)
	// Windows of 8 balances (24 commands, as many as three workers hold at
	// --concurrency 8) shuffled: a balance's keys are in flight together, on
	// one worker or on several.
	order := shuffleWindows(rng, groups, stressConcurrency)

	natsURL := startNATS(t)
	delay := &ledgerDelay{get: cfg.getDelay}
	delay.on.Store(true)
	ledger := startLedger(t, delay.wrap)
	args := []string{
		"--nats-url", natsURL, "--ledger-url", ledger.URL, "--data-dir", t.TempDir(),
		"--concurrency", strconv.Itoa(stressConcurrency),
		// The keys of one balance are commands of one wallet: in the
		// default order they would be applied one after another and could
		// not race. This load is about the claim, which guards the
		// balance whatever the order.
		"--order", "none",
	}
	if cfg.noClaim {
		args = append(args, "--no-claim")
	}
	workers := startWorkers(t, cfg.name, stressWorkers, args...)
	nc, js := connectNATS(t, natsURL)
	col := startCollector(t, js, nil)
	pub := newPublisher(js)

	started := time.Now()
	publishAsync(t, nc, pub, order)
	waitSettled(t, *waitFlag, js, pub, col, nil, allAlive(workers...))
	elapsed := time.Since(started)
	delay.on.Store(false) // the test's own reads of the ledger

	events := col.events()
	tallies, f := tallyBalances(pub, events, groups, ledgerWrites(t, ledger.Client))
	claimWaits := scrapeTotal(t, metricClaimWaits, workers...)
	_, _, stored := pub.counts()
	claim := "on"
	if cfg.noClaim {
		claim = "off"
	}
	printFigures(t, fmt.Sprintf("%s: balances=%d keys=%d stored=%d workers=%d concurrency=%d claim=%s get_delay=%s created=%d replayed=%d already_exists=%d other=%d writes=%d doubled=%d lost=%d repeated=%d claim_waits=%d elapsed=%s",
		cfg.name, n, len(order), stored, stressWorkers, stressConcurrency, claim, cfg.getDelay,
		f.created, f.replayed, f.alreadyExists, f.other, f.writes, f.doubled, f.lost, f.repeated, claimWaits, elapsed.Round(100*time.Millisecond)))

	s, err := readState(js)
	require.NoError(t, err)
	require.Equal(t, n*stressKeys, stored, "every command stored once")
	require.Zero(t, s.commands, "commands stream empty")
	require.Zero(t, s.dlq, "dead letters: no command of this load may be dead-lettered")
	// With or without the claim, every stored command ends in exactly one
	// outcome.
	require.Zero(t, f.lost, "stored commands without an outcome")
	require.Zero(t, f.repeated, "outcomes beyond the first of a stored command")

	if cfg.noClaim {
		require.Positive(t, f.doubled,
			"no balance was written twice or created by two keys without the claim: the race did not show, so the claimed run proves nothing")
	} else {
		p := &problems{t: t, what: "first writer wins"}
		for i, b := range tallies {
			if b.created != 1 || b.replayed != 0 || b.alreadyExists != stressKeys-1 || b.other != 0 || b.writes != 1 {
				p.add("balance %s: %d created, %d replayed, %d ALREADY_EXISTS, %d other outcomes, %d ledger writes; want 1, 0, %d, 0, 1",
					groups[i][0].account(), b.created, b.replayed, b.alreadyExists, b.other, b.writes, stressKeys-1)
			}
		}
		p.close()
		// The winner's fields in its event, on the account and in the one
		// log; only its marker; every other key ALREADY_EXISTS; one
		// outcome per stored command with SPEC §3's headers.
		plans := plansOf(groups, tallies)
		verifyOutcomes(t, pub, events, plans)
		verifyLedger(t, ledger.Client, plans)
		require.Positive(t, claimWaits, "no command ever waited for a claim: the keys did not race")
	}
	for _, w := range workers {
		w.signal(t, syscall.SIGTERM)
	}
	for _, w := range workers {
		require.Equal(t, 0, w.waitExit(t, time.Minute), "%s: exit status after SIGTERM", w.name)
	}
}
