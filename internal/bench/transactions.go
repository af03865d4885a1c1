package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
)

// Workloads of the bench command.
const (
	WorkloadCreates      = "creates"
	WorkloadTransactions = "transactions"
)

// creditScript is the wallets service's credit template with @world as the
// only source, as it renders it (formancehq/wallets a0e80ed).
const creditScript = "vars {\n    monetary $amount\n    account $destination\n}\n\nsend $amount (\n    source = {\n        @world\n    }\n    destination = $destination\n)\n"

// TxConfig is a run of the transactions workload: credits from @world, the
// ledger's hardest case (every one touches @world), through the ledger
// client and straight over HTTP, on one ledger.
type TxConfig struct {
	// Ledger is LedgerEmbedded (started in process, served over loopback
	// HTTP) unless LedgerURL is set.
	LedgerURL, LedgerName string
	// Transactions per phase.
	Transactions int
	// Callers is how many goroutines call the client at once (the worker's
	// default concurrency); TxConcurrency the client's cap.
	Callers, TxConcurrency int
	// BulkSize is the number of transactions per bulk in the bulk phase.
	BulkSize int
	// Wallets the credits are spread over.
	Wallets int
	Timeout time.Duration
	Log     io.Writer
}

// TxPhase is one way of sending the workload.
type TxPhase struct {
	Name     string `json:"name"`
	InFlight int    `json:"inFlight"`
	PerReq   int    `json:"perRequest"`
	// OK and Failed count the answers; Committed the credits the ledger
	// holds once the phase is over, read from its wallets' volumes: a
	// request that timed out may have been applied, wholly or (a bulk) in
	// part.
	OK        int64   `json:"ok"`
	Failed    int64   `json:"failed"`
	Timeouts  int64   `json:"timeouts"`
	Committed int64   `json:"committed"`
	Seconds   float64 `json:"seconds"`
	// PerSec is Committed per second.
	PerSec float64 `json:"transactionsPerSecond"`
	// FirstError is one failure, to say what went wrong.
	FirstError string `json:"firstError,omitempty"`
}

// TxResult is a run of the transactions workload.
type TxResult struct {
	Ledger     string    `json:"ledger"`
	LedgerName string    `json:"ledgerName"`
	Phases     []TxPhase `json:"phases"`
}

// RunTransactions runs, on one ledger, each phase on wallets of its own:
// the client's single calls from Callers goroutines (capped by the client
// at TxConcurrency), the client's bulks, and two baselines with plain
// net/http: as many single requests in flight as the cap, and one at a time.
func RunTransactions(ctx context.Context, cfg TxConfig) (TxResult, error) {
	res := TxResult{Ledger: "embedded", LedgerName: cfg.LedgerName}
	base, label, stop, err := ledgerAt(cfg.LedgerURL)
	if err != nil {
		return res, err
	}
	defer stop()
	res.Ledger = label
	var logger *slog.Logger
	if cfg.Log != nil {
		logger = slog.New(slog.NewTextHandler(cfg.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	client, err := ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: base, TxConcurrency: cfg.TxConcurrency, Timeout: cfg.Timeout, Logger: logger})
	if err != nil {
		return res, err
	}
	defer client.CloseIdleConnections()
	if err := client.EnsureLedger(ctx, cfg.LedgerName); err != nil {
		return res, fmt.Errorf("ensure ledger: %w", err)
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: cfg.Timeout}
	defer hc.CloseIdleConnections()

	credit := func(phase string, i int) ledgeradapter.TransactionRequest {
		return ledgeradapter.TransactionRequest{
			Script: &ledgeradapter.Script{Plain: creditScript, Vars: map[string]string{
				"amount": "USD/2 100", "destination": fmt.Sprintf("wallets:%s%d:main", phase, i%cfg.Wallets),
			}},
			Metadata: map[string]string{"wallets/transaction": "true"},
		}
	}
	key := func(phase string, i int) string { return fmt.Sprintf("%s-%s-%d", cfg.LedgerName, phase, i) }

	raw := func(name string, inFlight int) TxPhase {
		return runTxPhase(ctx, name, inFlight, 1, cfg.Transactions, func(ctx context.Context, i int) (int, error) {
			body, _ := json.Marshal(map[string]any{"script": credit(name, i).Script, "metadata": map[string]string{"wallets/transaction": "true"}})
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v2/"+cfg.LedgerName+"/transactions", bytes.NewReader(body))
			if err != nil {
				return 0, err
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", key(name, i))
			resp, err := hc.Do(req)
			if err != nil {
				return 0, err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return 0, fmt.Errorf("status %d", resp.StatusCode)
			}
			return 1, nil
		})
	}
	phases := []func() TxPhase{
		func() TxPhase { return raw("raw-serial", 1) },
		func() TxPhase { return raw("raw-capped", cfg.TxConcurrency) },
		func() TxPhase {
			return runTxPhase(ctx, "client-single", cfg.Callers, 1, cfg.Transactions, func(ctx context.Context, i int) (int, error) {
				_, err := client.CreateTransaction(ctx, cfg.LedgerName, credit("client-single", i), key("client-single", i))
				if err != nil {
					return 0, err
				}
				return 1, nil
			})
		},
		func() TxPhase {
			n := cfg.BulkSize
			return runTxPhase(ctx, "client-bulk", max(cfg.Callers/n, 1), n, cfg.Transactions/n, func(ctx context.Context, i int) (int, error) {
				elems := make([]ledgeradapter.BulkTransaction, n)
				for j := range elems {
					elems[j] = ledgeradapter.BulkTransaction{Request: credit("client-bulk", i*n+j), IdempotencyKey: key("client-bulk", i*n+j)}
				}
				results, err := client.BulkTransactions(ctx, cfg.LedgerName, elems)
				if err != nil {
					return 0, err
				}
				ok := 0
				for _, r := range results {
					if r.Err == nil {
						ok++
					} else {
						err = r.Err
					}
				}
				return ok, err
			})
		},
	}
	for _, p := range phases {
		ph := p()
		committed, err := committedCredits(ctx, client, cfg, ph.Name)
		if err != nil {
			return res, fmt.Errorf("%s: count the credits committed: %w", ph.Name, err)
		}
		ph.Committed, ph.PerSec = committed, float64(committed)/ph.Seconds
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "%s: %d ok, %d failed (%d timeouts), %d committed in %.2fs: %.0f transactions/s\n",
				ph.Name, ph.OK, ph.Failed, ph.Timeouts, ph.Committed, ph.Seconds, ph.PerSec)
		}
		res.Phases = append(res.Phases, ph)
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	return res, nil
}

// ledgerAt is the ledger a workload writes to: url, or an embedded one
// served for the run when url is empty. label names it in reports.
func ledgerAt(url string) (base, label string, stop func(), err error) {
	if url != "" {
		return url, url, func() {}, nil
	}
	base, stop, err = serveEmbeddedLedger()
	return base, "embedded", stop, err
}

// serveEmbeddedLedger serves an embedded ledger in a temporary directory
// over loopback HTTP and returns its URL and what stops it.
func serveEmbeddedLedger() (string, func(), error) {
	dir, err := os.MkdirTemp("", "wallets-worker-bench-")
	if err != nil {
		return "", nil, err
	}
	l, err := embeddedledger.Open(dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		l.Close()
		os.RemoveAll(dir)
		return "", nil, err
	}
	srv := &http.Server{Handler: l.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { srv.Close(); l.Close(); os.RemoveAll(dir) }, nil
}

// committedCredits counts the credits of a phase the ledger holds: the
// balances of its wallets, in credits of 100.
func committedCredits(ctx context.Context, c *ledgeradapter.Client, cfg TxConfig, phase string) (int64, error) {
	var total int64
	for i := range cfg.Wallets {
		a, found, err := c.GetAccount(ctx, cfg.LedgerName, fmt.Sprintf("wallets:%s%d:main", phase, i))
		if err != nil {
			return 0, err
		}
		if v, ok := a.Volumes["USD/2"]; found && ok {
			total += v.Balance.Int64() / 100
		}
	}
	return total, nil
}

// runTxPhase runs tasks from inFlight goroutines; a task reports how many
// transactions it applied.
func runTxPhase(ctx context.Context, name string, inFlight, perReq, tasks int, task func(context.Context, int) (int, error)) TxPhase {
	ph := TxPhase{Name: name, InFlight: inFlight, PerReq: perReq}
	var next, ok, failed, timeouts atomic.Int64
	var once sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for range inFlight {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= tasks || ctx.Err() != nil {
					return
				}
				n, err := task(ctx, i)
				ok.Add(int64(n))
				if err != nil {
					failed.Add(int64(perReq - n))
					if errors.Is(err, ledgeradapter.ErrTimeout) || isTimeout(err) {
						timeouts.Add(1)
					}
					once.Do(func() { ph.FirstError = err.Error() })
				}
			}
		})
	}
	wg.Wait()
	ph.Seconds = time.Since(start).Seconds()
	ph.OK, ph.Failed, ph.Timeouts = ok.Load(), failed.Load(), timeouts.Load()
	return ph
}

// txCommand is `bench --workload transactions`.
func txCommand(ctx context.Context, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	cfg := TxConfig{Log: stderr}
	var ledger string
	var asJSON bool
	var workload string
	fs.StringVar(&workload, "workload", WorkloadTransactions, "transactions: credits from @world through the ledger client, single and in bulks, beside raw HTTP baselines")
	fs.StringVar(&ledger, "ledger", "embedded", "embedded: the embedded ledger over loopback HTTP")
	fs.StringVar(&cfg.LedgerURL, "ledger-url", "", "base URL of a Formance ledger v2 to measure instead of the embedded one")
	fs.StringVar(&cfg.LedgerName, "ledger-name", "", "the ledger to write to, created if missing (default a new one each run, bench-tx-<time>)")
	fs.IntVar(&cfg.Transactions, "commands", 2000, "transactions in each phase")
	fs.IntVar(&cfg.Callers, "concurrency", ledgeradapter.DefaultBatchingConcurrency, "callers of the client at once, as the worker's commands in flight")
	fs.IntVar(&cfg.TxConcurrency, "ledger-tx-concurrency", ledgeradapter.DefaultTxConcurrency, "the client's cap on transactions in flight, as run's")
	fs.IntVar(&cfg.BulkSize, "bulk-size", 20, "transactions per bulk in the bulk phase")
	fs.IntVar(&cfg.Wallets, "wallets", 50, "wallets the credits are spread over")
	fs.DurationVar(&cfg.Timeout, "ledger-timeout", ledgeradapter.DefaultTimeout, "timeout of one request of one transaction (a bulk gets 100ms more per element)")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object instead of the table")
	if err := parseWorkloadFlags(fs, args); err != nil {
		return err
	}
	switch {
	case ledger != "embedded" && cfg.LedgerURL == "":
		return fmt.Errorf("%w: --workload transactions measures the embedded ledger or one at --ledger-url, not %q", ErrUsage, ledger)
	case cfg.Transactions < 1, cfg.Callers < 1, cfg.TxConcurrency < 1, cfg.Wallets < 1:
		return fmt.Errorf("%w: --commands, --concurrency, --ledger-tx-concurrency and --wallets must be positive", ErrUsage)
	case cfg.BulkSize < 1 || cfg.BulkSize > ledgeradapter.MaxBulkSize:
		return fmt.Errorf("%w: --bulk-size must be 1 to %d", ErrUsage, ledgeradapter.MaxBulkSize)
	}
	if cfg.LedgerName == "" {
		cfg.LedgerName = fmt.Sprintf("bench-tx-%d", time.Now().UnixNano())
	}
	res, err := RunTransactions(ctx, cfg)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, res)
	}
	return printTxTable(stdout, res)
}

func printTxTable(out io.Writer, r TxResult) error {
	fmt.Fprintf(out, "wallets-worker bench --workload transactions: ledger %s (%s), credits from @world\n\n", r.Ledger, r.LedgerName)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tin flight\tper request\tok\tfailed\ttimeouts\tcommitted\tseconds\tcommitted/s\t")
	rates := map[string]float64{}
	for _, p := range r.Phases {
		rates[p.Name] = p.PerSec
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.2f\t%.0f\t\n", p.Name, p.InFlight, p.PerReq, p.OK, p.Failed, p.Timeouts, p.Committed, p.Seconds, p.PerSec)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	ratio := func(a, b string) string {
		if rates[b] == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", rates[a]/rates[b])
	}
	fmt.Fprintf(out, "\nsame run: client-single ÷ raw-capped %s, client-single ÷ raw-serial %s, client-bulk ÷ raw-capped %s, client-bulk ÷ raw-serial %s\n",
		ratio("client-single", "raw-capped"), ratio("client-single", "raw-serial"), ratio("client-bulk", "raw-capped"), ratio("client-bulk", "raw-serial"))
	for _, p := range r.Phases {
		if p.FirstError != "" {
			fmt.Fprintf(out, "%s, first failure: %s\n", p.Name, p.FirstError)
		}
	}
	return nil
}

// workloadOf finds --workload among the arguments (or its environment
// variable): the workloads take different flags.
func workloadOf(args []string) string {
	for i, a := range args {
		for _, p := range []string{"-workload", "--workload"} {
			switch {
			case a == p && i+1 < len(args):
				return args[i+1]
			case len(a) > len(p)+1 && a[:len(p)+1] == p+"=":
				return a[len(p)+1:]
			}
		}
	}
	if v := os.Getenv(envName("workload")); v != "" {
		return v
	}
	return WorkloadCreates
}
