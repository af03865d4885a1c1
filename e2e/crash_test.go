//go:build unix

package e2e

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
)

// TestCrashKill SIGKILLs the worker at random moments while it works through
// a load with duplicates and conflicting keys, against a NATS server and a
// ledger that outlive it, and checks that every stored command got exactly
// one outcome and that no balance was written twice.
func TestCrashKill(t *testing.T) {
	runCrash(t, crashConfig{name: "crash", commands: *commandsFlag, kills: *killsFlag})
}

// TestCrashKillEmbedded does the same to the all-embedded `run`: NATS and the
// ledger die with the worker each time and recover from its --data-dir.
func TestCrashKillEmbedded(t *testing.T) {
	runCrash(t, crashConfig{name: "crash-embedded", commands: *embeddedCommandsFlag, kills: *embeddedKillsFlag, embedded: true})
}

type crashConfig struct {
	name     string // of the figures line
	commands int    // distinct commands to store
	kills    int
	embedded bool
}

// crashPlan is the load of a crash test.
//
// About 5% of the stored commands are conflicting keys: a second key, with
// another priority, for a balance a first key already commands. The
// conflicting key is published only once the first key's outcome event has
// been seen, i.e. once the balance is written. Without a claim across workers
// (a later feature) two different keys for one fresh balance that are handled
// at the same time can both write it: a race the current design documents,
// possible even inside one worker process at --concurrency 16. That race is a
// later issue's test; this one checks that a settled balance stays its first
// key's through crashes, replays and redeliveries.
//
// About 10% more publishes are duplicates: the same key and command again,
// half right after the first publish, half once the key's first outcome was
// seen. JetStream drops them within its duplicate window; where its dedup
// state did not survive a restart (the all-embedded variant) the duplicate is
// stored again and must be answered as a replay.
type crashPlan struct {
	balances   []balancePlan
	primaries  []command          // in publishing order
	conflictOf map[string]command // first key → the conflicting command
	dup        map[string]dupMode // key → how it is published again
	conflicts  int
	duplicates int
}

type dupMode int

const (
	noDup dupMode = iota
	dupNow
	dupLater
)

func makeCrashPlan(rng *rand.Rand, name string, n int) crashPlan {
	conflicts := (n*5 + 99) / 100
	duplicates := (n*10 + 99) / 100
	primaries := n - conflicts
	wallets := max(1, (n+4)/5)
	run := rng.Uint32() % 100000
	pl := crashPlan{conflictOf: map[string]command{}, dup: map[string]dupMode{}, conflicts: conflicts, duplicates: duplicates}
	for i := range primaries {
		c := command{
			// Keys with printable punctuation, as producers send them.
			Key:      fmt.Sprintf("%s:%05d/key %05d", name, run, i),
			WalletID: fmt.Sprintf("%s-w%04d", name, i%wallets),
			Name:     fmt.Sprintf("b%d", i/wallets),
			Priority: 1,
		}
		if i%3 == 0 {
			exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond)
			c.ExpiresAt = &exp
		}
		pl.primaries = append(pl.primaries, c)
	}
	byKey := map[string]command{}
	for _, i := range rng.Perm(primaries)[:conflicts] {
		first := pl.primaries[i]
		c := first
		c.Key = first.Key + "/conflict"
		c.Priority = 2
		c.ExpiresAt = nil
		pl.conflictOf[first.Key] = c
		byKey[c.Key] = c
	}
	for _, c := range pl.primaries {
		byKey[c.Key] = c
		b := balancePlan{Winner: c}
		if l, ok := pl.conflictOf[c.Key]; ok {
			b.Losers = []command{l}
		}
		pl.balances = append(pl.balances, b)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for i, k := range keys[:duplicates] {
		pl.dup[k] = dupNow + dupMode(i%2)
	}
	return pl
}

// trigger is a publish that waits for an outcome: a conflicting key, or a
// later duplicate.
type trigger struct {
	cmd      command
	conflict bool
}

func runCrash(t *testing.T, cfg crashConfig) {
	rng := rand.New(rand.NewPCG(seed(t), 0x5eed))
	pl := makeCrashPlan(rng, cfg.name, cfg.commands)
	started := time.Now()

	// Outliving servers, or fixed addresses for the embedded ones.
	args := []string{
		"--data-dir", t.TempDir(),
		"--ack-wait", "3s", "--ledger-timeout", "1500ms", "--concurrency", "16",
	}
	var natsURL string
	var ledger *ledgeradapter.Client
	if cfg.embedded {
		natsAddr, ledgerAddr := freeAddr(t), freeAddr(t)
		args = append(args, "--embedded-nats-addr", natsAddr, "--embedded-ledger-addr", ledgerAddr)
		natsURL = "nats://" + natsAddr
		ledger = ledgerClient(t, "http://"+ledgerAddr)
	} else {
		natsURL = startNATS(t)
		tl := startLedger(t, nil)
		ledger = tl.Client
		args = append(args, "--nats-url", natsURL, "--ledger-url", tl.URL)
	}

	var wmu sync.Mutex
	w := startWorker(t, cfg.name+"-0", args...)
	current := func() *workerProcess { wmu.Lock(); defer wmu.Unlock(); return w }
	nc, js := connectNATS(t, natsURL)
	pub := newPublisher(js)

	// With the embedded variant NATS dies with the worker: publishes hold
	// the gate for reading and the killer takes it for writing, so that no
	// publish straddles a kill (its PubAck, hence its sequence, would be
	// unknown).
	var gate sync.RWMutex
	publish := func(c command) error {
		if cfg.embedded {
			gate.RLock()
			defer gate.RUnlock()
		}
		return pub.publish(c)
	}

	byKey := map[string]command{}
	for _, b := range pl.balances {
		byKey[b.Winner.Key] = b.Winner
		for _, l := range b.Losers {
			byKey[l.Key] = l
		}
	}
	// outstanding counts the triggered publishes not yet made: while it is
	// above zero the test is not done publishing.
	triggers := make(chan trigger, 2*cfg.commands)
	var outstanding atomic.Int64
	col := startCollector(t, js, func(key string) {
		if c, ok := pl.conflictOf[key]; ok {
			outstanding.Add(1)
			triggers <- trigger{cmd: c, conflict: true}
		}
		if pl.dup[key] == dupLater {
			outstanding.Add(1)
			triggers <- trigger{cmd: byKey[key]}
		}
	})

	var primariesDone atomic.Bool
	go func() { // first keys, and their immediate duplicates
		defer primariesDone.Store(true)
		for _, c := range pl.primaries {
			if publish(c) != nil {
				return
			}
			if pl.dup[c.Key] == dupNow && publish(c) != nil {
				return
			}
		}
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // conflicting keys and later duplicates, as outcomes come in
		for {
			var tr trigger
			select {
			case tr = <-triggers:
			case <-stop:
				return
			}
			if publish(tr.cmd) != nil {
				return
			}
			if tr.conflict && pl.dup[tr.cmd.Key] == dupNow && publish(tr.cmd) != nil {
				return
			}
			outstanding.Add(-1)
		}
	}()
	busy := func() string {
		if !primariesDone.Load() || outstanding.Load() > 0 {
			publishes, _, _ := pub.counts()
			return fmt.Sprintf("still publishing: %d publishes made, %d waiting for an outcome", publishes, outstanding.Load())
		}
		return ""
	}

	// Kill at random points of the progress, each time once that many
	// commands have an outcome: while the worker is busy.
	targets := make([]int, cfg.kills)
	for i := range targets {
		targets[i] = cfg.commands/20 + rng.IntN(max(1, cfg.commands*80/100))
	}
	slices.Sort(targets)
	alive := aliveCheck(current)
	kills := 0
	for i, target := range targets {
		eventually(t, *waitFlag, fmt.Sprintf("%d outcomes before kill %d", target, i+1), func() (bool, string) {
			if err := pub.failure(); err != nil {
				t.Fatalf("publishing: %v", err)
			}
			if err := alive(); err != nil {
				t.Fatal(err)
			}
			n := col.settled()
			return n >= target, fmt.Sprintf("%d outcomes", n)
		})
		if cfg.embedded {
			gate.Lock()
		}
		w.kill(t)
		kills++
		next := startWorker(t, fmt.Sprintf("%s-%d", cfg.name, i+1), args...)
		wmu.Lock()
		w = next
		wmu.Unlock()
		if cfg.embedded {
			eventually(t, *waitFlag, "the test's NATS client reconnected", func() (bool, string) {
				return nc.IsConnected(), nc.Status().String()
			})
			gate.Unlock()
		}
		t.Logf("kill %d at %d outcomes (target %d); %s restarted", kills, col.settled(), target, next.name)
	}

	// If an outcome is lost, the publishes it would trigger never come:
	// the worker is done once the commands stream is empty and no
	// triggered publish is outstanding; the verdicts say what is missing.
	waitSettled(t, *waitFlag, js, pub, col, busy, alive)

	f := verifyOutcomes(t, pub, col.events(), pl.balances)
	logs := verifyLedger(t, ledger, pl.balances)
	publishes, deduped, stored := pub.counts()
	printFigures(t, fmt.Sprintf("%s: commands=%d stored=%d kills=%d duplicates=%d deduped=%d conflicts=%d outcomes=%d lost=%d doubled=%d replayed=%d ledger_logs=%d elapsed=%s",
		cfg.name, publishes, stored, kills, pl.duplicates, deduped, pl.conflicts, f.outcomes, f.lost, f.doubled, f.replayed, logs, time.Since(started).Round(100*time.Millisecond)))

	s, err := readState(js)
	require.NoError(t, err)
	require.Zero(t, s.dlq, "dead letters: no command of this load may be dead-lettered")
	require.GreaterOrEqual(t, kills, cfg.kills)
	require.Equal(t, cfg.commands+pl.duplicates, publishes, "publishes made (fewer: outcomes that trigger them are missing)")
	require.GreaterOrEqual(t, stored, cfg.commands, "distinct stored commands")
	w.stop(t)
}
