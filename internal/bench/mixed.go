package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// WorkloadMixed measures every kind of command together.
const WorkloadMixed = "mixed"

// MixedConfig is a run of the mixed workload: wallets each made and used
// as the wallets API would (create, a balance, credit, debit, hold and
// confirm part of it, hold and void, update), every step of every wallet
// stored first and then drained through the worker, beside the same
// commands decided by the same handlers called directly, without NATS.
type MixedConfig struct {
	LedgerURL, LedgerName string
	Wallets               int
	Workers, Concurrency  int
	TxConcurrency         int
	Batch                 bool
	Timeout               time.Duration // of one ledger request
	Log                   io.Writer
}

// MixedPhase is one phase of the mixed workload.
type MixedPhase struct {
	Name     string         `json:"name"`
	Wallets  int            `json:"wallets"`
	Commands int            `json:"commands"`
	Applied  int            `json:"applied"`
	Rejected map[string]int `json:"rejected,omitempty"`
	Retries  int            `json:"retries,omitempty"`
	Seconds  float64        `json:"seconds"`
	PerSec   float64        `json:"perSecond"`
}

// MixedResult is a run of the mixed workload with its same-run ratio.
type MixedResult struct {
	Ledger     string       `json:"ledger"`
	LedgerName string       `json:"ledgerName"`
	Phases     []MixedPhase `json:"phases"`
	// WorkerToDirect is the worker's rate ÷ the handlers' called directly:
	// what the queue, the order within a wallet and the settling cost.
	WorkerToDirect float64 `json:"workerToDirect"`
}

// mixedStep is one command of a wallet's life in the mixed workload.
type mixedStep struct {
	kind, wallet, key string
	body              []byte
}

// mixedSteps are the nine commands of wallet w of phase: created, given a
// balance, credited 10.00, debited 1.00, held 2.00 of which 0.50 are
// confirmed, held 1.00 which is voided, and its metadata updated. Each is
// covered by the ones before it, so in order none is rejected.
func mixedSteps(phase string, w int) []mixedStep {
	key := func(step string) string { return fmt.Sprintf("%s-%d-%s", phase, w, step) }
	wallet := messages.WalletIDOf(key("wallet"))
	usd := func(n int) string { return fmt.Sprintf(`{"asset":"USD/2","amount":%d}`, n) }
	step := func(kind, name, body string) mixedStep {
		return mixedStep{kind: kind, wallet: wallet, key: key(name), body: []byte(body)}
	}
	return []mixedStep{
		step(messages.KindCreateWallet, "wallet", fmt.Sprintf(`{"name":"w%d","metadata":{"bench":%q}}`, w, phase)),
		step(messages.KindCreateBalance, "balance", fmt.Sprintf(`{"walletID":%q,"name":"savings","priority":1}`, wallet)),
		step(messages.KindCreditWallet, "credit", fmt.Sprintf(`{"walletID":%q,"amount":%s}`, wallet, usd(1000))),
		step(messages.KindDebitWallet, "debit", fmt.Sprintf(`{"walletID":%q,"amount":%s}`, wallet, usd(100))),
		step(messages.KindDebitWallet, "hold1", fmt.Sprintf(`{"walletID":%q,"amount":%s,"pending":true}`, wallet, usd(200))),
		step(messages.KindConfirmHold, "confirm", fmt.Sprintf(`{"holdID":%q,"amount":50}`, messages.HoldIDOf(key("hold1")))),
		step(messages.KindDebitWallet, "hold2", fmt.Sprintf(`{"walletID":%q,"amount":%s,"pending":true}`, wallet, usd(100))),
		step(messages.KindVoidHold, "void", fmt.Sprintf(`{"holdID":%q}`, messages.HoldIDOf(key("hold2")))),
		step(messages.KindUpdateWallet, "update", fmt.Sprintf(`{"walletID":%q,"metadata":{"tier":"gold"}}`, wallet)),
	}
}

func (s mixedStep) subject() string { return messages.SubjectCommandsPrefix + s.kind + "." + s.wallet }

// RunMixed runs the mixed workload on one embedded NATS server and one
// ledger (embedded unless cfg.LedgerURL).
func RunMixed(ctx context.Context, cfg MixedConfig) (MixedResult, error) {
	res := MixedResult{LedgerName: cfg.LedgerName}
	b, err := startDrainBench(ctx, cfg.LedgerURL, cfg.LedgerName, cfg.TxConcurrency, cfg.Timeout, cfg.Log)
	if err != nil {
		return res, err
	}
	defer b.close()
	res.Ledger = b.label
	wcfg := worker.Config{Concurrency: cfg.Concurrency}
	if err := worker.Provision(ctx, b.admin, wcfg); err != nil {
		return res, err
	}
	// Each worker, as run builds it: its claims, its batcher (when
	// batching), every kind; the ledger client is shared, as the ledger is.
	kinds := func(name string) (handlers.Kinds, error) {
		js, closeConn, err := b.connect(name + "-claims")
		if err != nil {
			return nil, err
		}
		b.stops = append(b.stops, closeConn)
		claims, err := worker.NewClaims(ctx, js, wcfg)
		if err != nil {
			return nil, err
		}
		var writes handlers.Ledger = b.client
		if cfg.Batch {
			bt, err := ledgeradapter.NewBatcher(b.client, ledgeradapter.BatcherConfig{})
			if err != nil {
				return nil, err
			}
			writes = bt
		}
		h := &handlers.CreateBalance{Ledger: writes, LedgerName: cfg.LedgerName, Claim: claims, ClaimReadMaxAge: wcfg.WithDefaults().ClaimReadMaxAge()}
		return handlers.Wallets{Balances: h, Writes: writes, Transactions: b.client, LedgerName: cfg.LedgerName}.Kinds(), nil
	}
	report := func(ph MixedPhase) {
		res.Phases = append(res.Phases, ph)
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "%s: %d applied, rejected %v in %.2fs: %.0f commands/s\n", ph.Name, ph.Applied, ph.Rejected, ph.Seconds, ph.PerSec)
		}
	}

	// Through the worker: every wallet's first step, then every wallet's
	// second, and so on, as traffic from many users arrives interleaved.
	const workerPhase = "worker"
	var msgs []*nats.Msg
	lives := make([][]mixedStep, cfg.Wallets)
	for w := range lives {
		lives[w] = mixedSteps(cfg.LedgerName+"-"+workerPhase, w)
	}
	for s := range lives[0] {
		for w := range lives {
			st := lives[w][s]
			m := &nats.Msg{Subject: st.subject(), Header: nats.Header{}, Data: st.body}
			m.Header.Set(messages.HeaderMsgID, st.key)
			msgs = append(msgs, m)
		}
	}
	if err := b.store(ctx, msgs); err != nil {
		return res, err
	}
	d, err := b.drain(ctx, workerPhase, cfg.Workers, wcfg, func(i int) (handlers.Kinds, error) {
		return kinds(fmt.Sprintf("%s-%d", workerPhase, i))
	}, len(msgs))
	if err != nil {
		return res, err
	}
	ph := MixedPhase{Name: workerPhase, Wallets: cfg.Wallets, Commands: len(msgs), Applied: d.byCode[""], Seconds: d.seconds}
	for c, n := range d.byCode {
		if c != "" {
			if ph.Rejected == nil {
				ph.Rejected = map[string]int{}
			}
			ph.Rejected[string(c)] = n
		}
	}
	ph.PerSec = float64(ph.Commands) / ph.Seconds
	report(ph)

	// The same lives decided by the same handlers called directly: each
	// wallet's steps one after another, the wallets --workers ×
	// --concurrency at a time.
	const directPhase = "direct"
	ks, err := kinds(directPhase)
	if err != nil {
		return res, err
	}
	ph = MixedPhase{Name: directPhase, Wallets: cfg.Wallets, Commands: cfg.Wallets * len(lives[0])}
	var mu sync.Mutex
	var next, applied, retries int64
	rejected := map[string]int{}
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for range min(cfg.Workers*cfg.Concurrency, cfg.Wallets) {
		wg.Go(func() {
			for {
				mu.Lock()
				w := int(next)
				next++
				mu.Unlock()
				if w >= cfg.Wallets {
					return
				}
				for _, st := range mixedSteps(cfg.LedgerName+"-"+directPhase, w) {
					code, n, err := decideDirectly(ctx, ks, st)
					mu.Lock()
					retries += int64(n)
					switch {
					case err != nil && firstErr == nil:
						firstErr = err
					case err == nil && code == "":
						applied++
					case err == nil:
						rejected[string(code)]++
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return res, fmt.Errorf("%s: %w", directPhase, firstErr)
	}
	ph.Seconds = time.Since(start).Seconds()
	ph.Applied, ph.Retries = int(applied), int(retries)
	if len(rejected) > 0 {
		ph.Rejected = rejected
	}
	ph.PerSec = float64(ph.Commands) / ph.Seconds
	report(ph)
	res.WorkerToDirect = res.Phases[0].PerSec / res.Phases[1].PerSec
	return res, nil
}

// decideDirectly decides one command with its kind's handler, retrying
// what asks for a retry as a synchronous caller would, and returns its
// rejection code ("" when applied) and how many retries it took.
func decideDirectly(ctx context.Context, ks handlers.Kinds, st mixedStep) (messages.Code, int, error) {
	kind, _, ok := ks.Of(st.subject())
	if !ok {
		return "", 0, fmt.Errorf("no kind for %s", st.subject())
	}
	cmd, err := kind.Decode(st.subject(), st.body)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %w", st.key, err)
	}
	for retries := 0; ; retries++ {
		r, err := cmd.Handle(ctx, st.key)
		var re *handlers.RetryError
		switch {
		case err == nil:
			return r.Code(), retries, nil
		case !errors.As(err, &re) || retries >= 50 || ctx.Err() != nil:
			return "", retries, fmt.Errorf("%s: %w", st.key, err)
		}
		delay := re.Delay
		if delay == 0 {
			delay = 50 * time.Millisecond
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
}

// mixedCommand is `bench --workload mixed`.
func mixedCommand(ctx context.Context, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	def := worker.Config{}.WithDefaults()
	cfg := MixedConfig{Log: stderr}
	var asJSON bool
	var workload string
	fs.StringVar(&workload, "workload", WorkloadMixed, "mixed: every kind of command, through the worker and through the handlers directly")
	fs.StringVar(&cfg.LedgerURL, "ledger-url", "", "base URL of a Formance ledger v2 to write to instead of the embedded one")
	fs.StringVar(&cfg.LedgerName, "ledger-name", "", "the ledger to write to, created if missing (default a new one each run, bench-mixed-<time>)")
	fs.IntVar(&cfg.Wallets, "wallets", 300, "wallets in each phase, nine commands each")
	fs.IntVar(&cfg.Workers, "workers", 1, "workers in the process, each with its own NATS connection, sharing the consumer")
	fs.IntVar(&cfg.Concurrency, "concurrency", def.Concurrency, "commands in flight in each worker, as run's (and wallets at once in the direct phase)")
	fs.IntVar(&cfg.TxConcurrency, "ledger-tx-concurrency", ledgeradapter.DefaultTxConcurrency, "the ledger client's cap on transactions in flight, as run's")
	fs.BoolVar(&cfg.Batch, "ledger-batch", true, "metadata writes through a batcher, as run's")
	fs.DurationVar(&cfg.Timeout, "ledger-timeout", ledgeradapter.DefaultTimeout, "timeout of one ledger request")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object instead of the table")
	if err := parseWorkloadFlags(fs, args); err != nil {
		return err
	}
	if cfg.Wallets < 1 || cfg.Workers < 1 || cfg.Concurrency < 1 || cfg.TxConcurrency < 1 {
		return fmt.Errorf("%w: --wallets, --workers, --concurrency and --ledger-tx-concurrency must be positive", ErrUsage)
	}
	if cfg.LedgerName == "" {
		cfg.LedgerName = fmt.Sprintf("bench-mixed-%d", time.Now().UnixNano())
	}
	res, err := RunMixed(ctx, cfg)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "wallets-worker bench --workload mixed: ledger %s (%s); each wallet created, given a balance, credited, debited,\n"+
		"held and partly confirmed, held and voided, updated: 9 commands, every wallet's step s before any step s+1\n\n", res.Ledger, res.LedgerName)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\twallets\tcommands\tapplied\trejected\tretries\tseconds\tper second\t")
	for _, p := range res.Phases {
		codes := make([]string, 0, len(p.Rejected))
		for c, n := range p.Rejected {
			codes = append(codes, fmt.Sprintf("%s:%d", c, n))
		}
		sort.Strings(codes)
		rej := "0"
		if len(codes) > 0 {
			rej = fmt.Sprint(codes)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%d\t%.2f\t%.0f\t\n", p.Name, p.Wallets, p.Commands, p.Applied, rej, p.Retries, p.Seconds, p.PerSec)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nworker ÷ handlers called directly: %.2f\n", res.WorkerToDirect)
	return nil
}
