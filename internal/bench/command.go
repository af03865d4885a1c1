package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/worker"
)

// ErrUsage is wrapped by the errors of Command that come from its arguments.
var ErrUsage = errors.New("usage")

// envPrefix is the prefix of the environment variable of every flag (SPEC
// §2): --ledger-latency ⇔ WALLETS_WORKER_LEDGER_LATENCY.
const envPrefix = "WALLETS_WORKER_"

// Command is `wallets-worker bench [flags]`. It prints the report to stdout,
// progress and the worker's warnings to stderr.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch w := workloadOf(args); w {
	case WorkloadCreates:
	case WorkloadTransactions:
		fs := flag.NewFlagSet("bench", flag.ContinueOnError)
		fs.SetOutput(stderr)
		return txCommand(ctx, fs, args, stdout, stderr)
	case WorkloadOrder:
		fs := flag.NewFlagSet("bench", flag.ContinueOnError)
		fs.SetOutput(stderr)
		return orderCommand(ctx, fs, args, stdout, stderr)
	case WorkloadMixed:
		fs := flag.NewFlagSet("bench", flag.ContinueOnError)
		fs.SetOutput(stderr)
		return mixedCommand(ctx, fs, args, stdout, stderr)
	case WorkloadUser:
		fs := flag.NewFlagSet("bench", flag.ContinueOnError)
		fs.SetOutput(stderr)
		return userCommand(ctx, fs, args, stdout, stderr)
	default:
		return fmt.Errorf("%w: --workload must be %s, %s, %s, %s or %s, not %q", ErrUsage, WorkloadCreates, WorkloadTransactions, WorkloadOrder, WorkloadMixed, WorkloadUser, w)
	}
	cfg := Config{Log: stderr}
	var asJSON bool
	def := worker.Config{}.WithDefaults()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var workload string
	fs.StringVar(&workload, "workload", WorkloadCreates, "creates: CreateBalance commands through the worker, the flags below; transactions: credits through the ledger client (see --workload transactions --help); order: credit-wallet commands ordered and not (see --workload order --help); mixed: every kind of command (see --workload mixed --help); user: run as its own process, as a user meets it (see --workload user --help)")
	fs.IntVar(&cfg.Commands, "commands", 10000, "commands to publish, duplicates included (with --ledger-url: 2000)")
	fs.Float64Var(&cfg.Duplicates, "duplicates", 0.05, "share of the commands republished with the key and body of an earlier one (JetStream drops them; with --ledger-url: 0)")
	fs.Float64Var(&cfg.Conflicts, "conflicts", 0.05, "share of the commands that use a new key for a balance already commanded (ALREADY_EXISTS; with --ledger-url: 0)")
	fs.Float64Var(&cfg.Replays, "replays", 0.05, "share of the commands whose balance is already in the ledger under the same key (replayed; with --ledger-url: 0)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open-loop publish rate in commands/s; 0 publishes as fast as --max-pending outstanding acks allow")
	fs.IntVar(&cfg.MaxPending, "max-pending", 256, "outstanding async publish acks when --rate is 0")
	fs.StringVar(&cfg.Mode, "mode", ModeLive, "live: publish while the worker consumes (throughput and latency under load); drain: store every command first, then time the worker draining them")
	fs.StringVar(&cfg.Ledger, "ledger", LedgerNull, "null: in-memory ledger that answers at once; embedded: the embedded ledger over loopback HTTP through the ledger client")
	fs.DurationVar(&cfg.LedgerLatency, "ledger-latency", 0, "delay added to every request of the null or embedded ledger")
	fs.StringVar(&cfg.LedgerURL, "ledger-url", "", "base URL of a Formance ledger v2 to write to instead of --ledger, through the ledger stack `run` builds; also runs same-run baselines on it")
	fs.StringVar(&cfg.LedgerName, "ledger-name", "", "with --ledger-url: the ledger to write to, created if missing (default a new one each run, bench-<time>)")
	fs.BoolVar(&cfg.LedgerBaselines, "ledger-baselines", true, "with --ledger-url: also write as many new balances straight to the ledger as single writes, as GET then write, and as parallel bulks")
	fs.DurationVar(&cfg.BaselineTimeout, "baseline-timeout", DefaultBaselineTimeout, "with --ledger-url: timeout of each request of the ledger baselines (long: they measure the ledger, not a client's patience)")
	fs.IntVar(&cfg.SingleInFlight, "single-in-flight", 0, "with --ledger-url: requests in flight of the single-write baseline (0: the most the worker had in flight)")
	fs.Func("order", "the workers' --order: wallet (default, as run) or none", func(v string) (err error) {
		cfg.Order, err = worker.ParseOrder(v)
		return err
	})
	fs.IntVar(&cfg.Concurrency, "concurrency", 0, fmt.Sprintf("commands in flight in each worker (default, as run: with --batch %d against --ledger-url or with --ledger-latency, %d against the null or embedded ledger without one, %d without --batch); the baseline runs --workers × this. Without --batch, also the most ledger requests in flight", ledgeradapter.DefaultBatchingConcurrency, ledgeradapter.DefaultInProcessConcurrency, def.Concurrency))
	fs.BoolVar(&cfg.Batch, "batch", ledgeradapter.DefaultBatching, "coalesce each worker's concurrent ledger reads and writes into list-accounts and bulk requests with adaptive limits (ledgeradapter.Batcher), as run's --ledger-batch (and its default)")
	fs.DurationVar(&cfg.BatchWindow, "batch-window", ledgeradapter.DefaultBatchWindow, "with --batch: how long a call waits for others while one of its kind is in flight")
	fs.IntVar(&cfg.BatchMax, "batch-max", ledgeradapter.DefaultBatchMax, "with --batch: most calls per request (1: no coalescing, only the --ledger-concurrency cap)")
	fs.IntVar(&cfg.LedgerConcurrency, "ledger-concurrency", ledgeradapter.DefaultBatchInFlight, "with --batch: most ledger requests in flight per worker, reads and writes together; below it each kind's limit adapts")
	fs.IntVar(&cfg.Workers, "workers", 1, "worker instances in the process, each with its own NATS connection, sharing the durable consumer")
	fs.BoolVar(&cfg.Baseline, "baseline", true, "also run the baseline (plain pull, publish, DoubleAck) and report worker ÷ baseline")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of the workload's order")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "limit of each phase")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the worker phase to this file")
	fs.StringVar(&cfg.MemProfile, "memprofile", "", "write a heap profile taken at the end of the worker phase to this file")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object instead of the table")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: wallets-worker bench [flags]\n\n"+
			"Measures the worker in process (embedded NATS, temporary directory) against a\n"+
			"baseline loop on the same server. Flags (each also read from its environment variable):\n")
		fs.VisitAll(func(f *flag.Flag) {
			name, help := flag.UnquoteUsage(f)
			fmt.Fprintf(stderr, "  --%s %s\n    \t%s (default %s) [$%s]\n", f.Name, name, help, f.DefValue, envName(f.Name))
		})
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrUsage, fs.Arg(0))
	}
	if err := applyEnv(fs); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if cfg.LedgerURL != "" {
		urlDefaults(fs, &cfg)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}

	res, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return printTable(stdout, res)
}

// urlDefaults applies the defaults of a run against a ledger at a URL to the
// flags that were not given: a real ledger is slow, and every command is a
// new balance, so that the worker's creates/s and the baselines' measure the
// same thing.
func urlDefaults(fs *flag.FlagSet, cfg *Config) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, name := range []string{"ledger", "commands", "duplicates", "conflicts", "replays"} {
		if v, ok := os.LookupEnv(envName(name)); ok && v != "" {
			given[name] = true
		}
	}
	if !given["ledger"] {
		cfg.Ledger = LedgerURL
	}
	if !given["commands"] {
		cfg.Commands = DefaultURLCommands
	}
	for name, share := range map[string]*float64{"duplicates": &cfg.Duplicates, "conflicts": &cfg.Conflicts, "replays": &cfg.Replays} {
		if !given[name] {
			*share = 0
		}
	}
}

func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// environment variable, when that is set.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok && v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func printTable(out io.Writer, r Result) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	rate := "max"
	if r.Rate > 0 {
		rate = fmt.Sprintf("%g/s", r.Rate)
	}
	ledger := fmt.Sprintf("%s (+%gms/request)", r.Ledger, r.LedgerLatencyMs)
	if u := r.AtURL; u != nil {
		ledger = fmt.Sprintf("%s at %s", r.LedgerName, u.URL)
	}
	fmt.Fprintf(out, "wallets-worker bench: mode %s, ledger %s, %d workers × concurrency %d, rate %s, GOMAXPROCS %d\n",
		r.Mode, ledger, r.Workers, r.Concurrency, rate, r.GOMAXPROCS)
	if b := r.Batch; b != nil {
		fmt.Fprintf(out, "batching: window %gms, at most %d calls per request and %d ledger requests in flight per worker\n",
			b.WindowMs, b.Max, b.LedgerConcurrency)
	}
	fmt.Fprintf(out, "published %d: %d fresh, %d duplicates, %d conflicts, %d replays; JetStream stored %d, dropped %d as duplicates\n",
		r.Worker.Published, r.Workload.Fresh, r.Workload.Duplicates, r.Workload.Conflicts, r.Workload.Replays, r.Worker.Stored, r.Worker.Duplicates)
	fmt.Fprintf(out, "outcomes %d (events stored %d, commands left %d): created %d, replayed %d, already exists %d, other %d; deferred %d, retried %d\n",
		r.Worker.Outcomes, r.EventsStored, r.CommandsLeft, r.Outcomes.Created, r.Outcomes.Replayed, r.Outcomes.AlreadyExists, r.Outcomes.Other,
		r.WorkerStats.Deferred, r.WorkerStats.Retried)
	if len(r.SettledByWorker) > 1 {
		fmt.Fprintf(out, "settled by each worker: %v\n", r.SettledByWorker)
	}
	fmt.Fprintln(out)

	b := r.Baseline
	col := func(w, base string) string {
		if b == nil {
			return "\t" + w + "\t\n"
		}
		return "\t" + w + "\t" + base + "\t\n"
	}
	mb := func(v uint64) string { return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20)) }
	msf := func(v float64) string { return fmt.Sprintf("%.2f ms", v) }
	var base Phase
	if b != nil {
		base = *b
	}
	fmt.Fprint(tw, "", col("worker", "baseline"))
	fmt.Fprint(tw, "commands/s", col(fmt.Sprintf("%.0f", r.Worker.CommandsPerSecond), fmt.Sprintf("%.0f", base.CommandsPerSecond)))
	fmt.Fprint(tw, "elapsed", col(fmt.Sprintf("%.2f s", r.Worker.Seconds), fmt.Sprintf("%.2f s", base.Seconds)))
	fmt.Fprint(tw, "latency p50", col(msf(r.Worker.Latency.P50), msf(base.Latency.P50)))
	fmt.Fprint(tw, "latency p90", col(msf(r.Worker.Latency.P90), msf(base.Latency.P90)))
	fmt.Fprint(tw, "latency p99", col(msf(r.Worker.Latency.P99), msf(base.Latency.P99)))
	fmt.Fprint(tw, "latency max", col(msf(r.Worker.Latency.Max), msf(base.Latency.Max)))
	fmt.Fprint(tw, "peak heap*", col(mb(r.Worker.PeakHeapBytes), mb(base.PeakHeapBytes)))
	fmt.Fprint(tw, "peak RSS*", col(mb(r.Worker.PeakRSSBytes), mb(base.PeakRSSBytes)))
	if r.Rate > 0 {
		fmt.Fprint(tw, "publish lag", col(msf(r.Worker.PublishLagMs), msf(base.PublishLagMs)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if b != nil {
		fmt.Fprintf(out, "\nworker ÷ baseline (commands/s): %.2f\n", r.WorkerToBaseline)
	}
	if bc := r.BaselineWithClaim; bc != nil {
		fmt.Fprintf(out, "worker ÷ baseline with a claim per message (%.0f commands/s): %.2f\n", bc.CommandsPerSecond, r.WorkerToBaselineWithClaim)
	}
	lr := r.LedgerRequests
	fmt.Fprintf(out, "ledger requests: %.2f per command (%d GetAccount, %d AddMetadata", lr.PerCommand, lr.GetAccount, lr.AddMetadata)
	if r.Ledger != LedgerNull {
		fmt.Fprintf(out, ", %d over HTTP", lr.HTTP)
	}
	fmt.Fprintf(out, "); per create %.2f, per replay %.2f, per conflict %.2f; claims per create %.2f\n",
		lr.PerCreate, lr.PerReplay, lr.PerConflict, lr.ClaimsPerCreate)
	fmt.Fprintf(out, "requests that reached the ledger: %d, %.3f per command; at most %d in flight\n",
		lr.Requests, lr.RequestsPerCommand, lr.PeakInFlight)
	if b := r.Batch; b != nil {
		fmt.Fprintf(out, "batched: %.1f reads per read request (%d/%d), %.1f writes per write request (%d/%d); at the end: limits %d reads / %d writes in flight, batches of at most %d reads / %d writes; %d timeouts, %d overloads, %d calls not sent for lack of time\n",
			b.ReadsPerRequest, b.Reads, b.ReadRequests, b.WritesPerRequest, b.Writes, b.WriteRequests,
			b.ReadLimit, b.WriteLimit, b.ReadBatch, b.WriteBatch, b.Timeouts, b.Overloads, b.NoTimeLeft)
	}
	if u := r.AtURL; u != nil {
		if err := printURLReport(out, r, u); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "* whole process: the embedded NATS server runs in the same Go heap and RSS. Idle after start-up: heap %s, RSS %s; peak RSS of the run (VmHWM) %s\n",
		mb(r.Memory.IdleHeapBytes), mb(r.Memory.IdleRSSBytes), mb(r.Memory.ProcessHWMBytes))
	return nil
}

func printURLReport(out io.Writer, r Result, u *URLReport) error {
	fmt.Fprintf(out, "\nledger %s at %s (client timeout: worker %s, baselines %s); latency per request:\n",
		r.LedgerName, u.URL, time.Duration(u.ClientTimeoutMs*float64(time.Millisecond)), time.Duration(u.BaselineTimeoutMs*float64(time.Millisecond)))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "\tcreates/s\tnew balances\trequests\tper create\tin flight\tp50\tp99\ttimeouts\tanswers\t\n")
	row := func(name string, rate float64, created int, reqs int64, inFlight string, lat Latency, timeouts int64, statuses map[string]int64) {
		fmt.Fprintf(tw, "%s\t%.0f\t%d\t%d\t%.2f\t%s\t%.0f ms\t%.0f ms\t%d\t%s\t\n",
			name, rate, created, reqs, ratio(float64(reqs), created), inFlight, lat.P50, lat.P99, timeouts, statusList(statuses))
	}
	row("worker", u.CreatesPerSecond, r.Outcomes.Created, u.Requests, fmt.Sprintf("≤%d", u.PeakInFlight), u.Latency, u.Timeouts, u.Statuses)
	for _, b := range []*LedgerBaseline{u.Single, u.ReadThenWrite, u.Bulk} {
		if b == nil {
			continue
		}
		name := map[string]string{"single": "single writes", "readThenWrite": "GET then write", "bulk": fmt.Sprintf("parallel bulks of %d", b.PerRequest)}[b.Name]
		row(name, b.CreatesPerSecond, b.Created, b.Requests, strconv.Itoa(b.InFlight), b.Latency, b.Timeouts, b.Statuses)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if u.Single != nil {
		fmt.Fprintf(out, "worker ÷ best write (single or bulk): %.2f; worker ÷ GET then write: %.2f; worker ÷ single writes: %.2f\n",
			u.WorkerToBestWrite, u.WorkerToReadThenWrite, u.WorkerToSingle)
	}
	fmt.Fprintf(out, "new balances that ended replayed (a write landed, its answer was lost): %d; worker's ledger timeouts: %d\n",
		u.NewBalancesReplayed, u.Timeouts)
	return nil
}

// statusList is "204×1990 500×10", by status.
func statusList(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s×%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// parseWorkloadFlags parses a workload's flags, then its environment
// variables: a usage error wraps ErrUsage, and -help is flag.ErrHelp.
func parseWorkloadFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if err := applyEnv(fs); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return nil
}

// printJSON prints a workload's result as one indented JSON object.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
