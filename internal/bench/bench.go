package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// Modes.
const (
	// ModeLive publishes while the consumer runs.
	ModeLive = "live"
	// ModeDrain stores every command before the consumer starts.
	ModeDrain = "drain"
)

// Ledgers.
const (
	// LedgerNull is an in-memory handlers.Ledger that answers at once.
	LedgerNull = "null"
	// LedgerEmbedded is the embedded ledger behind a loopback HTTP server,
	// reached through ledgeradapter.Client: the production path.
	LedgerEmbedded = "embedded"
)

// defaultLedgerName is the ledger the bench writes to in the null and
// embedded ledgers, both private to the run.
const defaultLedgerName = "wallets-002"

// Config is one bench run. Zero values take the defaults of the flags.
type Config struct {
	// Commands is how many commands are published, duplicates included.
	Commands int
	// Duplicates, Conflicts and Replays are shares of Commands: republished
	// commands (same key, same body), second keys for a balance already
	// commanded, and balances already in the ledger under their key.
	Duplicates, Conflicts, Replays float64
	// Rate is the open-loop publish rate in commands per second; 0 publishes
	// as fast as MaxPending outstanding acks allow.
	Rate       float64
	MaxPending int
	// Mode is ModeLive or ModeDrain.
	Mode string
	// Ledger is LedgerNull, LedgerEmbedded or LedgerURL; LedgerLatency
	// delays every ledger request of the first two.
	Ledger        string
	LedgerLatency time.Duration
	// LedgerURL, when set, is a Formance ledger the workers write to
	// (Ledger becomes LedgerURL) through the stack `run` builds, in the
	// ledger LedgerName (default a new name each run, bench-<time>,
	// created with EnsureLedger). LedgerBaselines then also writes the same
	// number of new balances straight to that ledger three ways (see
	// URLReport), the single writes at SingleInFlight requests in flight (0:
	// the most the worker had in flight).
	LedgerURL, LedgerName string
	LedgerBaselines       bool
	SingleInFlight        int
	// BaselineTimeout bounds each request of the ledger baselines (default
	// DefaultBaselineTimeout).
	BaselineTimeout time.Duration
	// Batch (false for a Config written by hand; the command's --batch
	// defaults to ledgeradapter.DefaultBatching, as run's --ledger-batch)
	// puts a ledgeradapter.Batcher between each worker's handler and
	// the ledger, with BatchWindow, BatchMax and LedgerConcurrency (its
	// Window, MaxBatch and MaxInFlight; zero takes the Batcher's default).
	// Without it a worker has at most Concurrency ledger requests in
	// flight, one per command.
	Batch             bool
	BatchWindow       time.Duration
	BatchMax          int
	LedgerConcurrency int
	// Concurrency of each worker (default as run's: the worker's without
	// Batch, with it ledgeradapter.DefaultBatchingConcurrency against
	// LedgerURL or a LedgerLatency, DefaultInProcessConcurrency against the
	// null or embedded ledger without one); the baseline runs
	// Workers × Concurrency, the pool's total.
	Concurrency int
	// Order is the workers' --order (default wallet, as run's).
	Order worker.Order
	// Workers is how many worker.Worker instances consume in the process,
	// each with its own NATS connection and claims binding, all sharing the
	// one durable consumer as separate processes would (default 1).
	Workers int
	// Baseline runs the baseline phase after the worker's.
	Baseline bool
	// Seed shuffles the workload.
	Seed uint64
	// Timeout bounds each phase.
	Timeout time.Duration
	// CPUProfile and MemProfile, when set, receive a CPU profile of the
	// worker phase and a heap profile taken when half its outcomes are in.
	CPUProfile, MemProfile string
	// Log receives progress lines and the worker's warnings.
	Log io.Writer
}

func (c *Config) setDefaults() {
	if c.LedgerURL != "" && c.Ledger == "" {
		c.Ledger = LedgerURL
	}
	if c.BaselineTimeout == 0 {
		c.BaselineTimeout = DefaultBaselineTimeout
	}
	if c.Commands == 0 {
		c.Commands = 10000
		if c.Ledger == LedgerURL {
			c.Commands = DefaultURLCommands
		}
	}
	if c.LedgerName == "" {
		c.LedgerName = defaultLedgerName
		if c.Ledger == LedgerURL {
			now := time.Now().UTC()
			c.LedgerName = fmt.Sprintf("bench-%s-%09d", now.Format("20060102-150405"), now.Nanosecond())
		}
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 256
	}
	if c.Mode == "" {
		c.Mode = ModeLive
	}
	if c.Ledger == "" {
		c.Ledger = LedgerNull
	}
	if c.Concurrency <= 0 {
		// As run: a Batcher needs commands waiting for batches to form;
		// without one each command holds a ledger request.
		c.Concurrency = worker.Config{}.WithDefaults().Concurrency
		if c.Batch {
			// The null and embedded ledgers answer at once, as run's
			// embedded one; with a latency they stand for a remote one.
			c.Concurrency = ledgeradapter.BatchingConcurrency(c.LedgerURL == "" && c.LedgerLatency == 0)
		}
	}
	if c.Workers == 0 {
		c.Workers = 1
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Validate reports every problem of c (after defaults) at once.
func (c Config) Validate() error {
	c.setDefaults()
	var errs []error
	if c.Commands < 1 {
		errs = append(errs, fmt.Errorf("commands %d: want at least 1", c.Commands))
	}
	for name, r := range map[string]float64{"duplicates": c.Duplicates, "conflicts": c.Conflicts, "replays": c.Replays} {
		if r < 0 || r >= 1 {
			errs = append(errs, fmt.Errorf("%s %g: want a ratio in [0, 1)", name, r))
		}
	}
	if _, _, _, f := kindCounts(c.Commands, c.Duplicates, c.Conflicts, c.Replays); f < 1 {
		errs = append(errs, fmt.Errorf("duplicates + conflicts + replays leave no fresh command out of %d", c.Commands))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate %g: want 0 (as fast as possible) or more", c.Rate))
	}
	if c.Mode != ModeLive && c.Mode != ModeDrain {
		errs = append(errs, fmt.Errorf("mode %q: want %s or %s", c.Mode, ModeLive, ModeDrain))
	}
	switch c.Ledger {
	case LedgerNull, LedgerEmbedded:
		if c.LedgerURL != "" {
			errs = append(errs, fmt.Errorf("ledger %s with a ledger URL: the URL is the ledger", c.Ledger))
		}
	case LedgerURL:
		if c.LedgerURL == "" {
			errs = append(errs, errors.New("ledger url: a ledger URL is required"))
		} else if err := (ledgeradapter.Config{BaseURL: c.LedgerURL}).Validate(); err != nil {
			errs = append(errs, fmt.Errorf("ledger URL: %w", err))
		}
		if c.LedgerLatency != 0 {
			errs = append(errs, errors.New("ledger latency is added by the null and embedded ledgers only"))
		}
	default:
		errs = append(errs, fmt.Errorf("ledger %q: want %s or %s, or a ledger URL", c.Ledger, LedgerNull, LedgerEmbedded))
	}
	if err := ledgeradapter.ValidateLedgerName(c.LedgerName); err != nil {
		errs = append(errs, err)
	}
	if c.BaselineTimeout < 0 {
		errs = append(errs, fmt.Errorf("baseline timeout %s is negative", c.BaselineTimeout))
	}
	if c.SingleInFlight < 0 {
		errs = append(errs, fmt.Errorf("single in flight %d: want 0 (the worker's) or more", c.SingleInFlight))
	}
	if c.LedgerLatency < 0 {
		errs = append(errs, fmt.Errorf("ledger latency %s is negative", c.LedgerLatency))
	}
	if c.Batch {
		if err := c.batcherConfig().Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Workers < 1 || c.Workers > maxWorkers {
		errs = append(errs, fmt.Errorf("workers %d: want 1 to %d", c.Workers, maxWorkers))
	}
	return errors.Join(errs...)
}

func (c Config) batcherConfig() ledgeradapter.BatcherConfig {
	return ledgeradapter.BatcherConfig{Window: c.BatchWindow, MaxBatch: c.BatchMax, MaxInFlight: c.LedgerConcurrency}
}

// maxWorkers bounds Config.Workers: each is a NATS connection and a pull
// subscription in one process; more measures the process, not the pool.
const maxWorkers = 64

// inFlight is the pool's total concurrency.
func (c Config) inFlight() int { return c.Workers * c.Concurrency }

// Result is a bench run's report; Command prints it as a table or as JSON.
type Result struct {
	Mode            string  `json:"mode"`
	Ledger          string  `json:"ledger"`
	LedgerName      string  `json:"ledgerName"`
	LedgerLatencyMs float64 `json:"ledgerLatencyMs"`
	Workers         int     `json:"workers"`
	Concurrency     int     `json:"concurrency"`
	Rate            float64 `json:"rate"`
	GOMAXPROCS      int     `json:"gomaxprocs"`
	Commands        int     `json:"commands"`
	// Workload is what the published commands were built to exercise.
	Workload struct {
		Fresh      int `json:"fresh"`
		Duplicates int `json:"duplicates"`
		Conflicts  int `json:"conflicts"`
		Replays    int `json:"replays"`
	} `json:"workload"`

	Worker Phase `json:"worker"`
	// Outcomes are the worker's outcomes by kind (from the handler's
	// answers).
	Outcomes struct {
		Created       int `json:"created"`
		Replayed      int `json:"replayed"`
		AlreadyExists int `json:"alreadyExists"`
		Other         int `json:"other"`
	} `json:"outcomes"`
	LedgerRequests LedgerRequests `json:"ledgerRequests"`
	// Batch is what the Batchers did (all workers together), with --batch.
	Batch *BatchReport `json:"batch,omitempty"`
	// WorkerStats are the worker's own counters.
	WorkerStats struct {
		Created      int64 `json:"created"`
		Replayed     int64 `json:"replayed"`
		Rejected     int64 `json:"rejected"`
		DeadLettered int64 `json:"deadLettered"`
		Retried      int64 `json:"retried"`
		Deferred     int64 `json:"deferred"`
		HandedBack   int64 `json:"handedBack"`
		Panics       int64 `json:"panics"`
	} `json:"workerStats"`
	// SettledByWorker is how many outcomes each worker instance settled
	// (created, replayed or rejected): how the shared consumer spread the
	// load.
	SettledByWorker []int64 `json:"settledByWorker"`
	// CommandsLeft is what WALLETS_COMMANDS still held once the worker
	// stopped (0: every command acked); EventsStored what WALLETS_EVENTS
	// holds (Worker.Stored: one event per stored command).
	CommandsLeft uint64 `json:"commandsLeft"`
	EventsStored uint64 `json:"eventsStored"`

	Baseline *Phase `json:"baseline,omitempty"`
	// WorkerToBaseline is the worker's commands/s over the baseline's.
	WorkerToBaseline float64 `json:"workerToBaseline,omitempty"`
	// BaselineWithClaim is the baseline that also claims for each fresh
	// command (a create-if-absent in a key-value bucket like the claims
	// bucket), as a worker with our first-writer-wins guarantee must;
	// WorkerToBaselineWithClaim the worker's commands/s over its.
	BaselineWithClaim         *Phase  `json:"baselineWithClaim,omitempty"`
	WorkerToBaselineWithClaim float64 `json:"workerToBaselineWithClaim,omitempty"`
	// BaselineClaims is what its claims bucket holds after it: one claim
	// per fresh command stored, as the worker claims (checked).
	BaselineClaims uint64 `json:"baselineClaims,omitempty"`

	// AtURL is what the worker did to a ledger at a URL, and that ledger's
	// same-run baselines.
	AtURL *URLReport `json:"atURL,omitempty"`

	// Memory of the whole process (the embedded NATS server, the ledger and
	// the workload included) once everything is started and before the first
	// phase, and its peak RSS over the run (VmHWM).
	Memory struct {
		IdleHeapBytes   uint64 `json:"idleHeapBytes"`
		IdleRSSBytes    uint64 `json:"idleRSSBytes"`
		ProcessHWMBytes uint64 `json:"processHWMBytes"`
	} `json:"memory"`
}

// BatchReport is the Batchers' settings and counters.
type BatchReport struct {
	WindowMs          float64 `json:"windowMs"`
	Max               int     `json:"max"`
	LedgerConcurrency int     `json:"ledgerConcurrency"`
	// Reads and Writes are the calls the handlers made, ReadRequests and
	// WriteRequests the requests that carried them.
	Reads, Writes               int64
	ReadRequests, WriteRequests int64
	ReadsPerRequest             float64 `json:"readsPerRequest"`
	WritesPerRequest            float64 `json:"writesPerRequest"`
	// Timeouts, Overloads and NoTimeLeft are the Batchers' counters
	// (ledgeradapter.BatcherStats), summed; ReadLimit, WriteLimit,
	// ReadBatch and WriteBatch their adaptive limits at the end of the
	// worker phase, the largest over the workers.
	Timeouts   int64 `json:"timeouts"`
	Overloads  int64 `json:"overloads"`
	NoTimeLeft int64 `json:"noTimeLeft"`
	ReadLimit  int   `json:"readLimit"`
	WriteLimit int   `json:"writeLimit"`
	ReadBatch  int   `json:"readBatch"`
	WriteBatch int   `json:"writeBatch"`
}

// runner holds what the phases share.
type runner struct {
	cfg      Config
	workload *workload
	admin    jetstream.JetStream // provisioning, stream info, event readers
	pub      *nats.Conn          // the publisher's own connection
	mem      *memory
	wcfg     worker.Config
	remote   *remoteMeter // with LedgerURL
}

// Run runs the bench described by cfg.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	logf := func(format string, args ...any) { fmt.Fprintf(cfg.Log, "bench: "+format+"\n", args...) }

	w, err := newWorkload(cfg.Commands, cfg.Duplicates, cfg.Conflicts, cfg.Replays, cfg.Seed)
	if err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp("", "wallets-worker-bench-*")
	if err != nil {
		return res, err
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		if rmErr := os.RemoveAll(dir); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
	}()

	ns, err := embeddednats.Start(embeddednats.Options{StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		return res, err
	}
	cleanups = append(cleanups, func() { ns.Shutdown(); ns.WaitForShutdown() })
	connect := func(name string) (*nats.Conn, error) {
		nc, err := nats.Connect(ns.ClientURL(), nats.Name("wallets-worker-bench-"+name))
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", name, err)
		}
		cleanups = append(cleanups, nc.Close)
		return nc, nil
	}
	adminConn, err := connect("admin")
	if err != nil {
		return res, err
	}
	admin, err := jetstream.New(adminConn)
	if err != nil {
		return res, err
	}
	pub, err := connect("publisher")
	if err != nil {
		return res, err
	}
	r := &runner{cfg: cfg, workload: w, admin: admin, pub: pub}
	r.wcfg = worker.Config{Concurrency: cfg.Concurrency, Order: cfg.Order}
	if def := r.wcfg.WithDefaults(); def.MaxAckPending > 0 && def.MaxAckPending < cfg.inFlight() {
		// The consumer's cap is across every worker: below the pool's
		// total it, not the workers, would bound throughput.
		r.wcfg.MaxAckPending = cfg.inFlight()
	}
	if err := worker.Provision(ctx, admin, r.wcfg); err != nil {
		return res, err
	}
	for _, b := range []baseline{plainBaseline, claimBaseline} {
		if err := provisionBaseline(ctx, admin, r.wcfg, b); err != nil {
			return res, err
		}
	}

	ledger, meter, arm, stopLedger, err := r.ledger(ctx, dir)
	if err != nil {
		return res, err
	}
	cleanups = append(cleanups, stopLedger)
	for _, i := range w.stored {
		if it := w.items[i]; it.kind == replay {
			// As the wallets service would have created it: the same
			// metadata, the same marker, its own Idempotency-Key.
			addr := handlers.AccountAddress("", it.cmd.WalletID, it.cmd.Name)
			if _, err := ledger.AddAccountMetadata(ctx, cfg.LedgerName, addr, handlers.BalanceMetadata(it.key, it.cmd), ""); err != nil {
				return res, fmt.Errorf("seed replay %s: %w", it.key, err)
			}
		}
	}
	arm()

	t := newTally()
	var batchers []*ledgeradapter.Batcher
	wlog := slog.New(slog.NewTextHandler(cfg.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Each worker as a process of its own would have it: its connection,
	// its claims binding, its handler; the ledger is the one service they
	// share.
	workers := make([]*worker.Worker, cfg.Workers)
	for i := range workers {
		conn, err := connect(fmt.Sprintf("worker-%d", i))
		if err != nil {
			return res, err
		}
		js, err := jetstream.New(conn)
		if err != nil {
			return res, err
		}
		claims, err := worker.NewClaims(ctx, js, r.wcfg)
		if err != nil {
			return res, err
		}
		var wl handlers.Ledger = ledger
		if cfg.Batch {
			b, err := ledgeradapter.NewBatcher(ledger, cfg.batcherConfig())
			if err != nil {
				return res, err
			}
			batchers = append(batchers, b)
			wl = b
		}
		h := &handlers.CreateBalance{Ledger: tallyLedger{t, wl}, LedgerName: cfg.LedgerName, Claim: tallyClaimer{t, claims}, ClaimReadMaxAge: r.wcfg.ClaimReadMaxAge()}
		if workers[i], err = worker.New(js, handlers.NewKinds(handlers.CreateBalanceKind(tallyHandler{t, h})), r.wcfg, wlog.With("worker", i)); err != nil {
			return res, err
		}
	}

	runtime.GC()
	r.mem = startMemory()
	defer r.mem.close()
	res.Memory.IdleHeapBytes = readHeap()
	if st, err := procStatus(); err == nil {
		res.Memory.IdleRSSBytes = st.rss
	}

	res.LedgerName = cfg.LedgerName
	res.Mode, res.Ledger, res.Workers, res.Concurrency, res.Rate = cfg.Mode, cfg.Ledger, cfg.Workers, cfg.Concurrency, cfg.Rate
	res.LedgerLatencyMs = ms(cfg.LedgerLatency)
	res.GOMAXPROCS = runtime.GOMAXPROCS(0)
	res.Commands = cfg.Commands
	res.Workload.Fresh, res.Workload.Duplicates = w.counts[fresh], w.counts[duplicate]
	res.Workload.Conflicts, res.Workload.Replays = w.counts[conflict], w.counts[replay]

	all := make([]int, len(w.items))
	for i := range all {
		all[i] = i
	}
	batching := "off"
	if cfg.Batch {
		bc := batchers[0].Config()
		batching = fmt.Sprintf("window %s, max %d, %d ledger requests in flight", bc.Window, bc.MaxBatch, bc.MaxInFlight)
	}
	logf("worker phase: %d commands, mode %s, ledger %s (+%s), %d workers × concurrency %d, batching %s",
		cfg.Commands, cfg.Mode, cfg.Ledger, cfg.LedgerLatency, cfg.Workers, cfg.Concurrency, batching)
	workerSide := side{
		name:        "worker",
		subject:     messages.CreateBalanceSubject,
		eventStream: messages.StreamEvents,
		start: func() (func() error, <-chan struct{}, error) {
			runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
			// exited closes when the first worker stops on its own;
			// all when every one has returned.
			exited, all := make(chan struct{}), make(chan struct{})
			var once sync.Once
			var wg sync.WaitGroup
			runErrs := make([]error, len(workers))
			for i, wk := range workers {
				wg.Go(func() {
					runErrs[i] = wk.Run(runCtx)
					once.Do(func() { close(exited) })
				})
			}
			go func() { wg.Wait(); close(all) }()
			return func() error { stop(); <-all; return errors.Join(runErrs...) }, exited, nil
		},
		profile: r.profiler(),
		midway:  r.heapProfiler(),
	}
	if res.Worker, err = r.phase(ctx, workerSide, all); err != nil {
		return res, err
	}
	var classes outcomeCounts
	res.LedgerRequests, classes = t.summary(res.Worker.Stored)
	lr := &res.LedgerRequests
	lr.Requests, lr.PeakInFlight = meter.requests.Load(), meter.peak.Load()
	switch cfg.Ledger {
	case LedgerEmbedded:
		lr.HTTP = lr.Requests
	case LedgerURL:
		lr.Requests, _, _ = r.remote.snapshot()
		lr.HTTP, lr.PeakInFlight = lr.Requests, r.remote.peak.Load()
	}
	lr.RequestsPerCommand = ratio(float64(lr.Requests), res.Worker.Stored)
	if cfg.Batch {
		bc := batchers[0].Config()
		br := &BatchReport{WindowMs: ms(bc.Window), Max: bc.MaxBatch, LedgerConcurrency: bc.MaxInFlight}
		for _, b := range batchers {
			st := b.Stats()
			br.Reads += st.Reads
			br.Writes += st.Writes
			br.ReadRequests += st.ReadRequests
			br.WriteRequests += st.WriteRequests
			br.Timeouts += st.Timeouts
			br.Overloads += st.Overloads
			br.NoTimeLeft += st.NoTimeLeft
			br.ReadLimit, br.WriteLimit = max(br.ReadLimit, st.ReadLimit), max(br.WriteLimit, st.WriteLimit)
			br.ReadBatch, br.WriteBatch = max(br.ReadBatch, st.ReadBatch), max(br.WriteBatch, st.WriteBatch)
		}
		br.ReadsPerRequest = ratio(float64(br.Reads), int(br.ReadRequests))
		br.WritesPerRequest = ratio(float64(br.Writes), int(br.WriteRequests))
		res.Batch = br
	}
	res.Outcomes.Created, res.Outcomes.Replayed = classes[classCreated], classes[classReplayed]
	res.Outcomes.AlreadyExists, res.Outcomes.Other = classes[classAlreadyExists], classes[classOther]
	ws := &res.WorkerStats
	for _, wk := range workers {
		st := wk.Stats()
		ws.Created += st.Created.Load()
		ws.Replayed += st.Replayed.Load()
		ws.Rejected += st.Rejected.Load()
		ws.DeadLettered += st.DeadLettered.Load()
		ws.Retried += st.Retried.Load()
		ws.Deferred += st.Deferred.Load()
		ws.HandedBack += st.HandedBack.Load()
		ws.Panics += st.Panics.Load()
		res.SettledByWorker = append(res.SettledByWorker, st.Created.Load()+st.Replayed.Load()+st.Rejected.Load()+st.SettledBefore.Load())
	}
	if res.CommandsLeft, err = r.streamMsgs(ctx, messages.StreamCommands); err != nil {
		return res, err
	}
	if res.EventsStored, err = r.streamMsgs(ctx, messages.StreamEvents); err != nil {
		return res, err
	}

	if cfg.Baseline {
		logf("baseline phase: %d messages, concurrency %d", len(w.stored), cfg.inFlight())
		baseConn, err := connect("baseline")
		if err != nil {
			return res, err
		}
		b, err := r.phase(ctx, r.baselineSide(ctx, baseConn, plainBaseline), w.stored)
		if err != nil {
			return res, err
		}
		res.Baseline = &b
		if b.CommandsPerSecond > 0 {
			res.WorkerToBaseline = res.Worker.CommandsPerSecond / b.CommandsPerSecond
		}
		logf("baseline phase with a claim per fresh command: %d messages, concurrency %d", len(w.stored), cfg.inFlight())
		bc, err := r.phase(ctx, r.baselineSide(ctx, baseConn, claimBaseline), w.stored)
		if err != nil {
			return res, err
		}
		res.BaselineWithClaim = &bc
		if res.BaselineClaims, err = r.streamMsgs(ctx, "KV_"+claimBaseline.claims); err != nil {
			return res, err
		}
		if want := w.freshStored(); res.BaselineClaims != uint64(want) {
			return res, fmt.Errorf("baseline with a claim: %d claims for %d fresh commands", res.BaselineClaims, want)
		}
		if bc.CommandsPerSecond > 0 {
			res.WorkerToBaselineWithClaim = res.Worker.CommandsPerSecond / bc.CommandsPerSecond
		}
	}
	if cfg.Ledger == LedgerURL {
		res.AtURL = r.urlReport(ctx, &res, t.freshReplayed(w))
	}
	if st, err := procStatus(); err == nil {
		res.Memory.ProcessHWMBytes = st.hwm
	}
	return res, nil
}

// ledger returns the ledger the workers share, the meter of the requests it
// receives (from the moment they are armed), a function that switches on
// the injected latency and the metering once the replays are seeded, and a
// stop.
func (r *runner) ledger(ctx context.Context, dir string) (ledgeradapter.BatchLedger, *meter, func(), func(), error) {
	m := &meter{}
	if r.cfg.Ledger == LedgerURL {
		return r.urlLedger(ctx)
	}
	if r.cfg.Ledger == LedgerNull {
		l := newNullLedger(m)
		return l, m, func() { l.arm(r.cfg.LedgerLatency) }, func() {}, nil
	}
	l, err := embeddedledger.Open(filepath.Join(dir, "ledger"))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = l.Close()
		return nil, nil, nil, nil, err
	}
	var armed atomic.Bool
	srv := &http.Server{Handler: delayed(l.Handler(), r.cfg.LedgerLatency, &armed, m), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	// In process, as `run` reaches its embedded ledger; the listener is
	// the one run keeps for others.
	client, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: "http://" + ln.Addr().String(),
		HTTPClient: &http.Client{Transport: embeddedledger.HandlerTransport(srv.Handler)}})
	stop := func() {
		if client != nil {
			// First, or Shutdown waits for the client's idle connections.
			client.CloseIdleConnections()
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = l.Close()
	}
	if err == nil {
		err = client.EnsureLedger(ctx, r.cfg.LedgerName)
	}
	if err != nil {
		stop()
		return nil, nil, nil, nil, err
	}
	return client, m, func() { armed.Store(true) }, stop, nil
}

// profiler returns the CPU profiling of the worker phase, or nil.
func (r *runner) profiler() func() (func() error, error) {
	if r.cfg.CPUProfile == "" {
		return nil
	}
	return func() (func() error, error) {
		f, err := os.Create(r.cfg.CPUProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return nil, err
		}
		return func() error {
			pprof.StopCPUProfile()
			return f.Close()
		}, nil
	}
}

// heapProfiler returns what writes the heap profile of the worker phase, or
// nil. It is called once, when half the outcomes are in, so that the profile
// shows the process at work rather than idle after the phase; its in-use
// figures are those of the last garbage collection before that moment.
func (r *runner) heapProfiler() func() error {
	if r.cfg.MemProfile == "" {
		return nil
	}
	return func() error {
		f, err := os.Create(r.cfg.MemProfile)
		if err != nil {
			return err
		}
		return errors.Join(pprof.Lookup("heap").WriteTo(f, 0), f.Close())
	}
}

func (r *runner) streamMsgs(ctx context.Context, name string) (uint64, error) {
	s, err := r.admin.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

func readHeap() uint64 {
	s := []metrics.Sample{{Name: heapObjects}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		return s[0].Value.Uint64()
	}
	return 0
}
