package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// WorkloadOrder measures order within a wallet (SPEC §8).
const WorkloadOrder = "order"

// OrderConfig is a run of the order workload: credit-wallet commands
// through the worker, stored first and then drained, with --order wallet
// and --order none over many wallets, and with --order wallet on one hot
// wallet beside the ledger's own rates for credits of one account.
type OrderConfig struct {
	LedgerURL, LedgerName string
	Commands, Wallets     int // the spread phases
	HotCommands           int // the hot-wallet phases
	Workers, Concurrency  int
	TxConcurrency         int
	// ChainLength is run's --ledger-chain (0: its default; 1: no chains).
	ChainLength int
	Timeout     time.Duration // of one ledger request
	Log         io.Writer
}

// OrderPhase is one phase of the order workload.
type OrderPhase struct {
	Name     string  `json:"name"`
	Order    string  `json:"order,omitempty"`
	Wallets  int     `json:"wallets"`
	Commands int     `json:"commands"`
	Applied  int     `json:"applied"`
	Rejected int     `json:"rejected"`
	Seconds  float64 `json:"seconds"`
	PerSec   float64 `json:"perSecond"`
	Waits    int64   `json:"orderWaits,omitempty"`
}

// OrderResult is a run of the order workload with its same-run ratios.
type OrderResult struct {
	Ledger     string       `json:"ledger"`
	LedgerName string       `json:"ledgerName"`
	Phases     []OrderPhase `json:"phases"`
	// SpreadRatio is ordered ÷ unordered over many wallets (goal ≥ 0.9);
	// HotToLedger ordered on one wallet ÷ the ledger's rate for concurrent
	// credits of one account (goal ≥ 0.8); HotToSerial ÷ one credit at a
	// time (goal ≥ 2).
	SpreadRatio float64 `json:"spreadOrderedToUnordered"`
	HotToLedger float64 `json:"hotOrderedToLedgerConcurrent"`
	HotToSerial float64 `json:"hotOrderedToLedgerSerial"`
}

// RunOrder runs the order workload on one embedded NATS server and one
// ledger (embedded unless cfg.LedgerURL).
func RunOrder(ctx context.Context, cfg OrderConfig) (OrderResult, error) {
	res := OrderResult{Ledger: "embedded", LedgerName: cfg.LedgerName}
	b, err := startDrainBench(ctx, cfg.LedgerURL, cfg.LedgerName, cfg.TxConcurrency, cfg.Timeout, cfg.Log)
	if err != nil {
		return res, err
	}
	defer b.close()
	res.Ledger = b.label
	client := b.client
	if err := worker.Provision(ctx, b.admin, worker.Config{Concurrency: cfg.Concurrency}); err != nil {
		return res, err
	}

	phase := func(name string, order worker.Order, wallets, n int) (OrderPhase, error) {
		ph := OrderPhase{Name: name, Order: string(order), Wallets: wallets, Commands: n}
		// Store every command first.
		msgs := make([]*nats.Msg, n)
		for i := range n {
			wallet := fmt.Sprintf("%s-%s-%d", cfg.LedgerName, name, i%wallets)
			m := &nats.Msg{Subject: messages.SubjectCommandsPrefix + messages.KindCreditWallet + "." + wallet, Header: nats.Header{},
				Data: fmt.Appendf(nil, `{"walletID":%q,"amount":{"asset":"USD/2","amount":100}}`, wallet)}
			m.Header.Set(messages.HeaderMsgID, fmt.Sprintf("%s-%s-%d", cfg.LedgerName, name, i))
			msgs[i] = m
		}
		if err := b.store(ctx, msgs); err != nil {
			return ph, err
		}
		kinds := func(int) (handlers.Kinds, error) {
			return handlers.Wallets{Transactions: client, LedgerName: cfg.LedgerName, ChainLength: cfg.ChainLength}.Kinds(), nil
		}
		d, err := b.drain(ctx, name, cfg.Workers, worker.Config{Concurrency: cfg.Concurrency, Order: order}, kinds, n)
		if err != nil {
			return ph, err
		}
		ph.Seconds, ph.Waits = d.seconds, d.orderWaits
		ph.Applied = d.byCode[""]
		ph.Rejected = n - ph.Applied
		ph.PerSec = float64(n) / ph.Seconds
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "%s: %d applied, %d rejected in %.2fs: %.0f commands/s\n", name, ph.Applied, ph.Rejected, ph.Seconds, ph.PerSec)
		}
		return ph, nil
	}
	ledgerPhase := func(name string, inFlight int) OrderPhase {
		account := fmt.Sprintf("wallets:%s-%s:main", cfg.LedgerName, name)
		tp := runTxPhase(ctx, name, inFlight, 1, cfg.HotCommands, func(ctx context.Context, i int) (int, error) {
			_, err := client.CreateTransaction(ctx, cfg.LedgerName, ledgeradapter.TransactionRequest{
				Script:   &ledgeradapter.Script{Plain: creditScript, Vars: map[string]string{"amount": "USD/2 100", "destination": account}},
				Metadata: map[string]string{"wallets/transaction": "true"},
			}, fmt.Sprintf("%s-%s-%d", cfg.LedgerName, name, i))
			if err != nil {
				return 0, err
			}
			return 1, nil
		})
		ph := OrderPhase{Name: name, Wallets: 1, Commands: cfg.HotCommands, Applied: int(tp.OK), Rejected: int(tp.Failed), Seconds: tp.Seconds}
		ph.PerSec = float64(ph.Applied) / ph.Seconds
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, "%s: %d applied, %d failed in %.2fs: %.0f credits/s\n", name, ph.Applied, ph.Rejected, ph.Seconds, ph.PerSec)
		}
		return ph
	}

	byName := map[string]float64{}
	for _, p := range []struct {
		name    string
		order   worker.Order
		wallets int
		n       int
	}{
		{"spread-ordered", worker.OrderWallet, cfg.Wallets, cfg.Commands},
		{"spread-unordered", worker.OrderNone, cfg.Wallets, cfg.Commands},
		{"hot-ordered", worker.OrderWallet, 1, cfg.HotCommands},
	} {
		ph, err := phase(p.name, p.order, p.wallets, p.n)
		if err != nil {
			return res, err
		}
		res.Phases = append(res.Phases, ph)
		byName[ph.Name] = ph.PerSec
	}
	for _, p := range []OrderPhase{
		ledgerPhase("ledger-concurrent", cfg.Workers*cfg.Concurrency),
		ledgerPhase("ledger-serial", 1),
	} {
		res.Phases = append(res.Phases, p)
		byName[p.Name] = p.PerSec
	}
	ratio := func(a, b string) float64 {
		if byName[b] == 0 {
			return 0
		}
		return byName[a] / byName[b]
	}
	res.SpreadRatio = ratio("spread-ordered", "spread-unordered")
	res.HotToLedger = ratio("hot-ordered", "ledger-concurrent")
	res.HotToSerial = ratio("hot-ordered", "ledger-serial")
	return res, nil
}

// orderCommand is `bench --workload order`.
func orderCommand(ctx context.Context, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	def := worker.Config{}.WithDefaults()
	cfg := OrderConfig{Log: stderr}
	var asJSON bool
	var workload string
	fs.StringVar(&workload, "workload", WorkloadOrder, "order: credit-wallet commands through the worker, ordered and not")
	fs.StringVar(&cfg.LedgerURL, "ledger-url", "", "base URL of a Formance ledger v2 to write to instead of the embedded one")
	fs.StringVar(&cfg.LedgerName, "ledger-name", "", "the ledger to write to, created if missing (default a new one each run, bench-order-<time>)")
	fs.IntVar(&cfg.Commands, "commands", 5000, "credits in each of the spread phases")
	fs.IntVar(&cfg.Wallets, "wallets", 1000, "wallets the spread phases credit")
	fs.IntVar(&cfg.HotCommands, "hot-commands", 500, "credits of the one hot wallet, and of each ledger baseline")
	fs.IntVar(&cfg.Workers, "workers", 1, "workers in the process, each with its own NATS connection, sharing the consumer")
	fs.IntVar(&cfg.Concurrency, "concurrency", def.Concurrency, "commands in flight in each worker, as run's")
	fs.IntVar(&cfg.TxConcurrency, "ledger-tx-concurrency", ledgeradapter.DefaultTxConcurrency, "the ledger client's cap on transactions in flight, as run's")
	fs.IntVar(&cfg.ChainLength, "ledger-chain", handlers.DefaultChainLength, "most consecutive commands of one wallet in one ordered bulk, as run's; 1 sends each alone")
	fs.DurationVar(&cfg.Timeout, "ledger-timeout", ledgeradapter.DefaultTimeout, "timeout of one ledger request")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object instead of the table")
	if err := parseWorkloadFlags(fs, args); err != nil {
		return err
	}
	if cfg.Commands < 1 || cfg.Wallets < 1 || cfg.HotCommands < 1 || cfg.Workers < 1 || cfg.Concurrency < 1 || cfg.TxConcurrency < 1 ||
		cfg.ChainLength < 1 || cfg.ChainLength > ledgeradapter.MaxBulkSize {
		return fmt.Errorf("%w: --commands, --wallets, --hot-commands, --workers, --concurrency and --ledger-tx-concurrency must be positive, --ledger-chain 1 to %d", ErrUsage, ledgeradapter.MaxBulkSize)
	}
	if cfg.LedgerName == "" {
		cfg.LedgerName = fmt.Sprintf("bench-order-%d", time.Now().UnixNano())
	}
	res, err := RunOrder(ctx, cfg)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "wallets-worker bench --workload order: ledger %s (%s), credit-wallet commands stored first, then drained\n\n", res.Ledger, res.LedgerName)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\torder\twallets\tcommands\tapplied\trejected\tseconds\tper second\torder waits\t")
	for _, p := range res.Phases {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%.2f\t%.0f\t%d\t\n", p.Name, p.Order, p.Wallets, p.Commands, p.Applied, p.Rejected, p.Seconds, p.PerSec, p.Waits)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nspread: ordered ÷ unordered           %.2f (goal ≥ 0.9)\n", res.SpreadRatio)
	fmt.Fprintf(stdout, "hot wallet: ordered ÷ ledger concurrent %.2f (goal ≥ 0.8)\n", res.HotToLedger)
	fmt.Fprintf(stdout, "hot wallet: ordered ÷ ledger serial     %.2f (goal ≥ 2)\n", res.HotToSerial)
	return nil
}
