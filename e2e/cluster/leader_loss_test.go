package cluster

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/worker"
)

// Wire names of SPEC §3 and §4, spelled out rather than imported from the
// module: the checks are on the public contract.
const (
	streamCommands = "WALLETS_COMMANDS"
	streamEvents   = "WALLETS_EVENTS"
	streamDLQ      = "WALLETS_DLQ"
	bucketClaims   = "wallets_balance_claims"
	streamClaims   = "KV_" + bucketClaims // the stream behind the bucket
	consumerName   = "wallets-worker"

	headerMsgID       = "Nats-Msg-Id"
	headerCommandKey  = "Wallets-Command-Key"
	headerCommandSeq  = "Wallets-Command-Seq"
	headerDLQCode     = "Wallets-Dlq-Code"
	headerOriginalSeq = "Wallets-Original-Seq"

	subjectCommandPrefix  = "wallets.commands.create-balance."
	subjectCreatedPrefix  = "wallets.events.balance-created."
	subjectRejectedPrefix = "wallets.events.balance-create-rejected."

	codeAlreadyExists  = "ALREADY_EXISTS"
	codeInvalidCommand = "INVALID_COMMAND"

	ledgerName   = "wallets-002"
	markerPrefix = "wallets/balances/idempotency/"
)

var (
	commandsFlag = flag.Int("cluster.commands", 1000, "publishes TestClusterLeaderLoss makes, duplicates included (at least 200)")
	workersFlag  = flag.Int("cluster.workers", 2, "in-process workers of TestClusterLeaderLoss (at least 2)")
	seedFlag     = flag.Uint64("cluster.seed", 0, "seed of the load plan; 0 picks one, which the test logs")
)

const (
	replicas    = 3
	concurrency = 8
	// publishers is how many goroutines publish at once, so that some
	// publishes are in flight when the leader goes.
	publishers = 4
	// publishTry bounds one publish attempt; publishBudget every attempt of
	// one command, the election included.
	publishTry    = 2 * time.Second
	publishBudget = 30 * time.Second
	// waitFor bounds every wait on the cluster or the workers. An election
	// takes 4–9s (nats-server's Raft election timeout) plus a missed-heartbeat
	// detection of up to 10s by a pull consumer whose request died with its
	// server; this is generous on top.
	waitFor = 60 * time.Second
	// settledBeforeLoss is how many commands the workers settle before the
	// leader is shut down, so that it goes mid-run.
	settledBeforeLoss = 100
)

// workerConfig is what every worker and the provisioning use. AckWait is short
// so that a command whose ack died with its consumer leader comes back within
// seconds; the retry budget (about a minute) outlasts an election.
func workerConfig() worker.Config {
	return worker.Config{
		Concurrency:    concurrency,
		AckWait:        3 * time.Second, // HandlerTimeout defaults to 2s, ClaimTTL to 3s
		MaxDeliver:     60,
		StreamReplicas: replicas,
		Backoff:        worker.Backoff{Initial: 100 * time.Millisecond, Max: time.Second},
		SettleTimeout:  2 * time.Second,
		DrainTimeout:   5 * time.Second,
	}
}

// TestClusterLeaderLoss shuts down the server leading WALLETS_COMMANDS while
// two workers handle a load published to a three-node cluster, and checks
// that no stored command was lost or answered twice and no balance written
// twice.
func TestClusterLeaderLoss(t *testing.T) {
	started := time.Now()
	require.GreaterOrEqual(t, *commandsFlag, 200, "-cluster.commands")
	require.GreaterOrEqual(t, *workersFlag, 2, "-cluster.workers")
	rng := rand.New(rand.NewPCG(seed(t), 0xc1a57e2))
	pl := makePlan(rng, *commandsFlag)
	cfg := workerConfig()

	cl := startCluster(t, replicas)
	setupConn := cl.connect(t, "cluster-e2e-setup")
	provision(t, setupConn.js, cfg)
	before := checkReplicas(t, setupConn.js, cfg)
	t.Logf("provisioned at R%d, leaders %v", replicas, before)
	leader := before[streamCommands]
	gathering := time.Now()
	gatherLeaders(t, setupConn, leader)
	t.Logf("moved every leader to %s in %s", leader, time.Since(gathering).Round(time.Millisecond))
	others := cl.othersThan(leader)

	led := startLedger(t)
	logs := newLogCounter(t)
	// The first worker and the producer connect to the stream leader first,
	// so that they have to fail over; the others start elsewhere.
	var workers []*runningWorker
	for i := range *workersFlag {
		first := leader
		if i > 0 {
			first = others[(i-1)%len(others)]
		}
		workers = append(workers, startWorker(t, cl, fmt.Sprintf("worker-%d", i), first, cfg, led.url, logs))
	}
	obs := cl.connect(t, "cluster-e2e-observer", others...)
	prod := cl.connect(t, "cluster-e2e-producer", leader)
	pub := newPublisher(prod.js)

	// Publish: the first part of the load, then a pause until the leader is
	// being shut down, then the rest while it goes and its successor is
	// elected, then the keys that need a balance already written.
	pctx, stopPublishing := context.WithCancel(context.Background())
	t.Cleanup(stopPublishing)
	var errMu sync.Mutex
	var pubErrs []error
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if !errors.Is(err, context.Canceled) {
			pubErrs = append(pubErrs, err)
		}
		stopPublishing()
	}
	firstErr := func() error {
		errMu.Lock()
		defer errMu.Unlock()
		return errors.Join(pubErrs...)
	}
	killStarted := make(chan struct{})
	pauseAt := len(pl.phase1) * 2 / 5
	jobs := make(chan command)
	var publishing sync.WaitGroup
	for range publishers {
		publishing.Go(func() {
			for c := range jobs {
				if err := pub.publish(pctx, c); err != nil {
					fail(err)
				}
			}
		})
	}
	publishing.Go(func() {
		defer close(jobs)
		for i, c := range pl.phase1 {
			if i == pauseAt {
				select {
				case <-killStarted:
				case <-pctx.Done():
					return
				}
			}
			select {
			case jobs <- c:
			case <-pctx.Done():
				return
			}
		}
		for _, c := range pl.tail {
			if err := waitWritten(pctx, led.client, c.account()); err != nil {
				fail(fmt.Errorf("balance %s of %q was never written: %w", c.account(), c.Key, err))
				return
			}
			select {
			case jobs <- c:
			case <-pctx.Done():
				return
			}
		}
	})

	// Mid-run: some commands settled, the rest stored or in flight.
	want := min(settledBeforeLoss, pauseAt/4)
	eventually(t, waitFor, fmt.Sprintf("%d commands settled before the leader loss", want), func() (bool, string) {
		if err := firstErr(); err != nil {
			t.Fatalf("publishing failed before the leader loss: %v", err)
		}
		stored := pub.storedCount()
		si, err := streamInfo(context.Background(), obs.js, streamCommands)
		if err != nil {
			return false, err.Error()
		}
		settled := stored - int(si.State.Msgs)
		return settled >= want, fmt.Sprintf("stored %d, settled %d", stored, settled)
	})

	// Lose the leader of WALLETS_COMMANDS.
	var victim string
	eventually(t, waitFor, "the leader of "+streamCommands, func() (bool, string) {
		l, err := streamLeader(context.Background(), obs.js, streamCommands)
		if err != nil {
			return false, err.Error()
		}
		victim = l
		return true, ""
	})
	atLoss := leaders(obs.js)
	var onVictim []string
	for asset, l := range atLoss {
		if l == victim {
			onVictim = append(onVictim, asset)
		}
	}
	sort.Strings(onVictim)
	backlog := pub.storedCount()
	close(killStarted)
	lostAt := time.Now()
	cl.node(victim).shutdown()
	t.Logf("shut down %s after %s with %d commands stored; it led %v", victim, lostAt.Sub(started).Round(time.Millisecond), backlog, onVictim)

	eventually(t, waitFor, "a new leader of "+streamCommands, func() (bool, string) {
		l, err := streamLeader(context.Background(), obs.js, streamCommands)
		if err != nil {
			return false, err.Error()
		}
		return l != victim, "leader " + l
	})
	election := time.Since(lostAt)
	t.Logf("%s has a new leader %s after the loss", streamCommands, election.Round(time.Millisecond))

	publishing.Wait()
	require.NoError(t, firstErr(), "publishing")
	t.Logf("published %d commands (%d stored, %d PubAcks marked duplicate, %d publish attempts retried) in %s",
		pl.publishes(), pub.storedCount(), pub.duplicates, pub.retries, time.Since(started).Round(time.Millisecond))

	// Every command settled: the work queue empty, nothing pending.
	deliveries := waitAllSettled(t, obs.js, waitFor, func() string { return "" })
	for _, w := range workers {
		w.shutdown(t)
	}
	after := leaders(obs.js)
	t.Logf("leaders at the loss %v, after %v", atLoss, after)
	var workerReplays int64
	for _, w := range workers {
		st := w.w.Stats()
		workerReplays += st.Replayed.Load()
		t.Logf("%s (first on %s, %d reconnects): created %d replayed %d rejected %d dead-lettered %d retried %d deferred %d handed back %d; async errors: %s",
			w.name, w.conn.firstOn, w.conn.reconnects.Load(), st.Created.Load(), st.Replayed.Load(), st.Rejected.Load(),
			st.DeadLettered.Load(), st.Retried.Load(), st.Deferred.Load(), st.HandedBack.Load(), w.conn.asyncErrorSummary())
	}
	t.Logf("producer: first on %s, %d reconnects, async errors: %s", prod.firstOn, prod.reconnects.Load(), prod.asyncErrorSummary())
	t.Logf("worker warnings: %s", logs.summary())

	// What JetStream and the ledger hold.
	cmdInfo := waitStreamInfo(t, obs.js, streamCommands)
	events := readStream(t, obs.js, streamEvents)
	dlq := readStream(t, obs.js, streamDLQ)

	op := &problems{t: t, what: "outcomes"}
	f := verifyOutcomes(op, pl, pub, events, cmdInfo.State.LastSeq)
	lp := &problems{t: t, what: "ledger"}
	verifyLedger(lp, led.client, pl, f.winners)
	dp := &problems{t: t, what: "dead letters"}
	var dlqExtra int
	f.deadLetters, dlqExtra = verifyDeadLetters(dp, pl, f.seqsOf, dlq)
	if cmdInfo.State.Msgs != 0 {
		op.add("%s still holds %d commands", streamCommands, cmdInfo.State.Msgs)
	}

	line := fmt.Sprintf("cluster: commands=%d stored=%d leader_lost=%s outcomes=%d lost=%d doubled=%d elapsed=%s"+
		" | duplicates=%d publish_retries=%d unacked_stored=%d created=%d replayed=%d deduped_replays=%d already_exists=%d dead_letters=%d dlq_second_copies=%d deliveries=%d election=%s",
		pl.publishes(), f.stored, victim, f.outcomes, f.lost, f.doubled, time.Since(started).Round(100*time.Millisecond),
		pub.duplicates, pub.retries, f.unacked, f.created, f.replayed, workerReplays-int64(f.replayed), f.alreadyExists, f.deadLetters, dlqExtra, deliveries, election.Round(10*time.Millisecond))
	t.Log(line)
	fmt.Println(line)
	op.report()
	lp.report()
	dp.report()
}

// ---- setup ----

// provision creates the streams, the consumer and the claims bucket, trying
// again while the new cluster cannot place R3 assets yet.
func provision(t *testing.T, js jetstream.JetStream, cfg worker.Config) {
	t.Helper()
	eventually(t, waitFor, "provisioning", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := worker.Provision(ctx, js, cfg); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// checkReplicas requires the three streams, the claims bucket and the
// consumer to run on three current replicas, and returns their leaders.
func checkReplicas(t *testing.T, js jetstream.JetStream, cfg worker.Config) map[string]string {
	t.Helper()
	var out map[string]string
	eventually(t, waitFor, fmt.Sprintf("every stream, the consumer and the claims bucket on %d current replicas", replicas), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out = map[string]string{}
		ok := true
		var state []string
		group := func(name string, configured int, ci *jetstream.ClusterInfo) {
			good := configured == replicas && ci != nil && ci.Leader != "" && len(ci.Replicas) == replicas-1
			for _, p := range ci.Replicas {
				good = good && p.Current && !p.Offline
			}
			ok = ok && good
			state = append(state, fmt.Sprintf("%s R%d %s", name, configured, describeGroup(ci)))
			out[name] = ci.Leader
		}
		for _, name := range []string{streamCommands, streamEvents, streamDLQ, streamClaims} {
			si, err := streamInfo(ctx, js, name)
			if err != nil {
				return false, name + ": " + err.Error()
			}
			if si.Cluster == nil {
				return false, name + ": no cluster info"
			}
			group(name, si.Config.Replicas, si.Cluster)
		}
		ci, err := consumerInfo(ctx, js, streamCommands, consumerName)
		if err != nil {
			return false, "consumer: " + err.Error()
		}
		if ci.Cluster == nil {
			return false, "consumer: no cluster info"
		}
		group(consumerAsset, ci.Config.Replicas, ci.Cluster)
		return ok, strings.Join(state, "; ")
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucketClaims)
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	require.True(t, ok, "bucket status is a %T", st)
	require.Equal(t, replicas, bs.StreamInfo().Config.Replicas, "claims bucket replicas")
	require.True(t, bs.StreamInfo().Config.AllowMsgTTL, "claims bucket allows per-key TTLs")
	require.Equal(t, cfg.WithDefaults().ClaimTTL, st.LimitMarkerTTL(), "claims bucket limit marker TTL")
	return out
}

// consumerAsset names the consumer in the maps of leaders.
const consumerAsset = streamCommands + ">" + consumerName

// gatherLeaders moves the leadership of the other streams, of the claims
// bucket and of the consumer to target, the server leading WALLETS_COMMANDS,
// so that losing it loses every leader the workers use at once: commands and
// their acks, outcome events, dead letters and claims all wait for elections.
// Left alone, nats-server spreads the leaders, and the loss would spare the
// consumer (and with it the lost-ack path) in most runs.
func gatherLeaders(t *testing.T, cn *conn, target string) {
	t.Helper()
	asked := map[string]time.Time{}
	eventually(t, waitFor, "every leader on "+target, func() (bool, string) {
		now := leaders(cn.js)
		ok := len(now) == 5
		var errs []string
		for asset, l := range now {
			if l == target {
				continue
			}
			ok = false
			if time.Since(asked[asset]) < 2*time.Second {
				continue // a transfer takes a moment; do not churn
			}
			asked[asset] = time.Now()
			subject := "$JS.API.STREAM.LEADER.STEPDOWN." + asset
			if asset == consumerAsset {
				subject = "$JS.API.CONSUMER.LEADER.STEPDOWN." + streamCommands + "." + consumerName
			}
			if err := stepDownTo(cn.nc, subject, target); err != nil {
				errs = append(errs, err.Error())
			}
		}
		return ok, fmt.Sprintf("leaders %v; %s", now, strings.Join(errs, "; "))
	})
}

// leaders names the current leader of each stream and of the consumer; an
// asset whose info cannot be read right now is left out.
func leaders(js jetstream.JetStream) map[string]string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := map[string]string{}
	for _, name := range []string{streamCommands, streamEvents, streamDLQ, streamClaims} {
		if l, err := streamLeader(ctx, js, name); err == nil {
			out[name] = l
		}
	}
	if ci, err := consumerInfo(ctx, js, streamCommands, consumerName); err == nil && ci.Cluster != nil {
		out[consumerAsset] = ci.Cluster.Leader
	}
	return out
}

// testLedger is the embedded ledger served over HTTP, shared by the workers.
type testLedger struct {
	url    string
	client *ledgeradapter.Client // the test's own
}

func startLedger(t *testing.T) *testLedger {
	t.Helper()
	l := testutil.StartLedger(t, testutil.LedgerOptions{Client: ledgeradapter.Config{Timeout: 10 * time.Second}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, l.Client.EnsureLedger(ctx, ledgerName))
	return &testLedger{url: l.URL, client: l.Client}
}

// waitWritten waits until account is a balance in the ledger.
func waitWritten(ctx context.Context, c *ledgeradapter.Client, account string) error {
	ctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		a, found, err := c.GetAccount(ctx, ledgerName, account)
		if err == nil && found && a.Metadata["wallets/balances"] == "true" {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%w (last answer: found=%v err=%v)", ctx.Err(), found, err)
		}
	}
}

// runningWorker is one worker.Worker running in the test process on its own
// connection and ledger client.
type runningWorker struct {
	name   string
	conn   *conn
	w      *worker.Worker
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startWorker(t *testing.T, cl *testCluster, name, first string, cfg worker.Config, ledgerURL string, logs *logCounter) *runningWorker {
	t.Helper()
	cn := cl.connect(t, name, first)
	client, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: ledgerURL, Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(client.CloseIdleConnections)
	ctx := context.Background()
	claims, err := worker.NewClaims(ctx, cn.js, cfg)
	require.NoError(t, err)
	h := &handlers.CreateBalance{Ledger: client, LedgerName: ledgerName, Claim: claims}
	require.NoError(t, h.Validate())
	// Every kind, as run registers them.
	kinds := handlers.Wallets{Balances: h, Writes: client, Transactions: client, LedgerName: ledgerName}.Kinds()
	w, err := worker.New(cn.js, kinds, cfg, slog.New(logs.handler(name)))
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	rw := &runningWorker{name: name, conn: cn, w: w, cancel: cancel, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(runCtx) }()
	t.Cleanup(func() { rw.shutdown(t) })
	return rw
}

// shutdown stops the worker as a SIGTERM would and requires a clean drain.
func (rw *runningWorker) shutdown(t *testing.T) {
	rw.once.Do(func() {
		rw.cancel()
		budget := rw.w.Config().DrainTimeout + 10*time.Second
		select {
		case err := <-rw.done:
			assert.NoError(t, err, "%s: Run", rw.name)
		case <-time.After(budget):
			t.Errorf("%s: Run did not return within %s of its shutdown", rw.name, budget)
		}
	})
}

// logCounter counts the workers' warnings by message and shows their errors.
type logCounter struct {
	mu     sync.Mutex
	counts map[string]int
	out    slog.Handler
}

func newLogCounter(t *testing.T) *logCounter {
	return &logCounter{counts: map[string]int{}, out: slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError})}
}

func (l *logCounter) handler(worker string) slog.Handler {
	return countingHandler{c: l, next: l.out.WithAttrs([]slog.Attr{slog.String("worker", worker)})}
}

// summary renders the counts, most frequent first.
func (l *logCounter) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.counts) == 0 {
		return "none"
	}
	msgs := make([]string, 0, len(l.counts))
	for m := range l.counts {
		msgs = append(msgs, m)
	}
	sort.Slice(msgs, func(i, j int) bool {
		return l.counts[msgs[i]] > l.counts[msgs[j]] || l.counts[msgs[i]] == l.counts[msgs[j]] && msgs[i] < msgs[j]
	})
	parts := make([]string, len(msgs))
	for i, m := range msgs {
		parts[i] = fmt.Sprintf("%q×%d", m, l.counts[m])
	}
	return strings.Join(parts, ", ")
}

type countingHandler struct {
	c    *logCounter
	next slog.Handler
}

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.c.mu.Lock()
	h.c.counts[r.Message]++
	h.c.mu.Unlock()
	if r.Level >= slog.LevelError {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countingHandler{c: h.c, next: h.next.WithAttrs(as)}
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	return countingHandler{c: h.c, next: h.next.WithGroup(name)}
}

// seed returns the seed of the load plan, logged so that a failure can be
// replayed with -cluster.seed.
func seed(t *testing.T) uint64 {
	s := *seedFlag
	if s == 0 {
		s = rand.Uint64()
	}
	t.Logf("seed %d (replay with -args -cluster.seed=%d)", s, s)
	return s
}
