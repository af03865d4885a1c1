package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
	"github.com/wallets-worker/wallets-worker/internal/natsconn"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/ledgeradapter/embeddedledger"
	"github.com/wallets-worker/wallets-worker/worker"
)

type runFlags struct {
	nats                                               natsconn.Config
	ledgerURL, ledgerName, accountPrefix               string
	ledgerClientID, ledgerClientSecret, ledgerTokenURL string
	ledgerClientSecretFile, ledgerCA                   string
	dataDir, embeddedNATSAddr, embeddedLedgerAddr      string
	embeddedLedgerSync                                 string
	httpAddr, logFormat, logLevel                      string
	ledgerTimeout, ledgerTimeoutPerElement             time.Duration
	noProvision, noClaim                               bool
	w                                                  worker.Config
	ledgerBatch                                        bool
	batch                                              ledgeradapter.BatcherConfig
	ledgerTxConcurrency                                int
	ledgerChain                                        int
}

func runFlagSet(env Env) (*flag.FlagSet, *runFlags) {
	f := &runFlags{}
	def := worker.Config{}.WithDefaults()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.StringVar(&f.nats.URL, "nats-url", "", "NATS server URL(s), comma-separated; empty starts an embedded NATS server with JetStream")
	natsconn.Register(fs, &f.nats)
	natsconn.RegisterInboxPrefix(fs, &f.nats)
	fs.StringVar(&f.ledgerURL, "ledger-url", "", "base URL of a Formance Ledger (\"/v2/...\" is appended); empty starts an embedded ledger")
	fs.StringVar(&f.ledgerName, "ledger-name", "wallets-002", "ledger to write to (created at start if missing)")
	fs.StringVar(&f.accountPrefix, "account-prefix", "", "account prefix, as the wallets service's ACCOUNT_PREFIX")
	fs.StringVar(&f.ledgerClientID, "ledger-client-id", "", "OAuth2 client ID for the ledger (empty: no authentication)")
	fs.StringVar(&f.ledgerClientSecret, "ledger-client-secret", "", "OAuth2 client secret for the ledger")
	fs.StringVar(&f.ledgerClientSecretFile, "ledger-client-secret-file", "", "file holding the OAuth2 client secret (instead of --ledger-client-secret)")
	fs.StringVar(&f.ledgerCA, "ledger-ca", "", "PEM file of the CA that signed the ledger's HTTPS certificate (default: the system's)")
	fs.StringVar(&f.ledgerTokenURL, "ledger-token-url", "", "OAuth2 token URL, e.g. <stack>/api/auth/oauth/token")
	fs.DurationVar(&f.ledgerTimeout, "ledger-timeout", ledgeradapter.DefaultTimeout, "timeout of one ledger request; below --handler-timeout")
	fs.DurationVar(&f.ledgerTimeoutPerElement, "ledger-timeout-per-element", ledgeradapter.DefaultTimeoutPerElement, "added to --ledger-timeout for each element of a list-accounts or bulk request beyond the first")
	fs.BoolVar(&f.ledgerBatch, "ledger-batch", ledgeradapter.DefaultBatching, "coalesce concurrent account reads and metadata writes into list-accounts and bulk requests (ledger v2.4.0+), with requests in flight and batch sizes that adapt to the ledger's latency and errors; false: one request per call, up to --concurrency in flight")
	fs.DurationVar(&f.batch.Window, "ledger-batch-window", ledgeradapter.DefaultBatchWindow, "with --ledger-batch: how long a call waits for others while one of its kind is in flight (a lone command never waits)")
	fs.IntVar(&f.batch.MaxBatch, "ledger-batch-max", ledgeradapter.DefaultBatchMax, "with --ledger-batch: most calls per request, at most the ledger's BULK_MAX_SIZE and page size (100)")
	fs.IntVar(&f.batch.MaxWriteBatch, "ledger-bulk-max", ledgeradapter.DefaultWriteBatchMax, "with --ledger-batch: most metadata writes per bulk request, at most --ledger-batch-max (what the ledger runs of a parallel bulk at once: its --bulk-parallel, 10 by default)")
	fs.IntVar(&f.batch.MaxInFlight, "ledger-concurrency", ledgeradapter.DefaultBatchInFlight, "with --ledger-batch: most ledger requests in flight, reads and writes together; below it each kind's limit adapts")
	fs.IntVar(&f.ledgerChain, "ledger-chain", handlers.DefaultChainLength, "with --order wallet, most consecutive credits and debits of one wallet sent to the ledger in one ordered bulk (a chain); 1 sends each alone")
	fs.IntVar(&f.ledgerTxConcurrency, "ledger-tx-concurrency", ledgeradapter.DefaultTxConcurrency, "most ledger transactions in flight from this process, whatever --concurrency: a Formance ledger stalls when as many transactions touching one account wait as it has PostgreSQL connections (its POSTGRES_MAX_OPEN_CONNS, default 20); keep it below that")
	fs.StringVar(&f.dataDir, "data-dir", "./data", "where the embedded NATS server and the embedded ledger keep their files")
	fs.StringVar(&f.embeddedNATSAddr, "embedded-nats-addr", "127.0.0.1:4222", "listen address of the embedded NATS server")
	fs.StringVar(&f.embeddedLedgerAddr, "embedded-ledger-addr", "127.0.0.1:3068", "listen address of the embedded ledger")
	fs.StringVar(&f.embeddedLedgerSync, "embedded-ledger-sync", "normal", "when the embedded ledger syncs its writes to disk: normal (an acknowledged write survives a crash of the process, not a power loss or an OS crash) or full (it survives those too, at a cost per commit)")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:9090", "listen address of /metrics (Prometheus), /healthz and /readyz (empty: off)")
	fs.IntVar(&f.w.Concurrency, "concurrency", 0, fmt.Sprintf("commands in flight in this process (default %d with --ledger-batch and --ledger-url, for batches to form against a slow ledger; %d with the embedded ledger, which answers at once; %d without --ledger-batch, each command then holding a ledger request)", ledgeradapter.DefaultBatchingConcurrency, ledgeradapter.DefaultInProcessConcurrency, def.Concurrency))
	fs.DurationVar(&f.w.AckWait, "ack-wait", def.AckWait, "JetStream ack wait of the consumer: a command not settled by then goes to another worker")
	fs.DurationVar(&f.w.HandlerTimeout, "handler-timeout", 0, "deadline of one attempt at a command, counted from when it gets a slot (or the ledger is back); below --ack-wait (default 2/3 of --ack-wait)")
	fs.IntVar(&f.w.MaxDeliver, "max-deliver", def.MaxDeliver, "deliveries before a still-failing command is dead-lettered as RETRIES_EXHAUSTED")
	fs.Func("order", "order of the commands of one wallet: wallet (applied in their stream order, across every worker) or none (as soon as a slot is free) (default wallet)", func(v string) error {
		o, err := worker.ParseOrder(v)
		f.w.Order = o
		return err
	})
	fs.IntVar(&f.w.MaxAckPending, "max-ack-pending", def.MaxAckPending, "commands handed out and not settled, across all workers (0: no cap for the fleet, each worker holding at most its --concurrency)")
	fs.DurationVar(&f.w.DuplicateWindow, "duplicate-window", def.DuplicateWindow, "JetStream deduplication window of the streams")
	fs.IntVar(&f.w.StreamReplicas, "stream-replicas", def.StreamReplicas, "replicas of the streams and the consumer (3 on a cluster)")
	fs.DurationVar(&f.w.DrainTimeout, "drain-timeout", def.DrainTimeout, "how long a shutdown waits for the commands in flight")
	fs.BoolVar(&f.noProvision, "no-provision", false, "do not create or update the streams, the consumer and the claims bucket")
	fs.DurationVar(&f.w.ClaimTTL, "claim-ttl", 0, "how long a balance claim blocks other commands for that balance if its claimant dies (default --ack-wait)")
	fs.BoolVar(&f.noClaim, "no-claim", false, "testing only: skip the first-writer-wins claim, reopening the race between two keys creating one balance")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = usage(fs, "wallets-worker run [flags]")
	return fs, f
}

func (f *runFlags) validate() error {
	if f.w.Concurrency == 0 && f.ledgerBatch {
		f.w.Concurrency = ledgeradapter.BatchingConcurrency(f.ledgerURL == "")
	}
	var errs []error
	if f.logFormat != "json" && f.logFormat != "text" {
		errs = append(errs, usageError("--log-format must be json or text, not %q", f.logFormat))
	}
	if _, err := parseLevel(f.logLevel); err != nil {
		errs = append(errs, err)
	}
	if err := f.w.Validate(); err != nil {
		errs = append(errs, usageError("%v", err))
	}
	if w := f.w.WithDefaults(); f.ledgerTimeout >= w.HandlerTimeout {
		errs = append(errs, usageError("--ledger-timeout %s must be shorter than the handler timeout %s", f.ledgerTimeout, w.HandlerTimeout))
	}
	if f.ledgerChain < 1 || f.ledgerChain > ledgeradapter.MaxBulkSize {
		errs = append(errs, usageError("--ledger-chain must be 1 to %d, got %d", ledgeradapter.MaxBulkSize, f.ledgerChain))
	}
	if f.embeddedLedgerSync != "normal" && f.embeddedLedgerSync != "full" {
		errs = append(errs, usageError("--embedded-ledger-sync must be normal or full, not %q", f.embeddedLedgerSync))
	}
	if f.ledgerTxConcurrency < 1 {
		errs = append(errs, usageError("--ledger-tx-concurrency must be at least 1, got %d", f.ledgerTxConcurrency))
	}
	if f.ledgerTimeoutPerElement < 0 {
		// A bulk's timeout may pass the handler's deadline: its callers
		// then leave first, and the Batcher does not send a call whose
		// deadline is nearer than the time its request is expected to take.
		errs = append(errs, usageError("--ledger-timeout-per-element %s is negative", f.ledgerTimeoutPerElement))
	}
	if f.ledgerClientSecretFile != "" {
		if f.ledgerClientSecret != "" {
			errs = append(errs, usageError("--ledger-client-secret and --ledger-client-secret-file exclude each other"))
		} else if b, err := os.ReadFile(f.ledgerClientSecretFile); err != nil {
			errs = append(errs, usageError("--ledger-client-secret-file: %v", err))
		} else {
			f.ledgerClientSecret = strings.TrimSpace(string(b))
		}
	}
	if f.ledgerCA != "" {
		if _, err := loadCertPool(f.ledgerCA); err != nil {
			errs = append(errs, usageError("--ledger-ca: %v", err))
		}
	}
	if (f.ledgerClientID == "") != (f.ledgerClientSecret == "") || (f.ledgerClientID != "" && f.ledgerTokenURL == "") {
		errs = append(errs, usageError("--ledger-client-id, --ledger-client-secret and --ledger-token-url go together"))
	}
	if f.ledgerBatch {
		if err := f.batch.Validate(); err != nil {
			errs = append(errs, usageError("%v", err))
		}
	}
	if err := f.nats.Validate(); err != nil {
		errs = append(errs, usageError("%v", err))
	}
	if f.nats.URL == "" && (f.nats.AuthMethod() != natsconn.AuthNone || f.nats.TLS()) {
		errs = append(errs, usageError("NATS credentials and TLS settings need --nats-url: the embedded NATS server uses neither"))
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, usageError("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(f *runFlags, env Env) *slog.Logger {
	level, _ := parseLevel(f.logLevel)
	opts := &slog.HandlerOptions{Level: level}
	if f.logFormat == "text" {
		return slog.New(slog.NewTextHandler(env.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(env.Stderr, opts))
}

func runCommand(ctx context.Context, args []string, env Env) error {
	fs, f := runFlagSet(env)
	if err := parse(fs, args, env.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if err := f.validate(); err != nil {
		return err
	}
	log := newLogger(f, env)
	if limit := embeddedMemoryLimit(f, env.Getenv); limit > 0 {
		prev := debug.SetMemoryLimit(limit)
		defer debug.SetMemoryLimit(prev)
		log.Info("NATS and the ledger are embedded and GOMEMLIMIT is unset: soft memory limit set", "limit_mib", limit>>20)
	}

	ctx, drain := context.WithCancel(ctx)
	defer drain()
	exited := make(chan struct{})
	defer close(exited)
	var w atomic.Pointer[worker.Worker]
	if env.Signals != nil {
		go func() {
			select {
			case sig := <-env.Signals:
				log.Info("signal received: draining; a second signal stops at once", "signal", sig.String())
				drain()
			case <-ctx.Done():
			}
			select {
			case sig := <-env.Signals:
				log.Warn("second signal: handing back the commands in flight and stopping", "signal", sig.String())
				if wk := w.Load(); wk != nil {
					wk.Abort()
				}
			case <-exited:
			}
		}()
	}

	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	// Tracing first, so that its flush is the last cleanup: the spans of the
	// final settles are ended by then.
	tel, err := startTracing(ctx, env, log)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { stopTracing(tel, log) })
	f.w.TracerProvider = tel.TracerProvider()

	natsURL := f.nats.URL
	if natsURL == "" {
		ns, err := embeddednats.Start(embeddednats.Options{Addr: f.embeddedNATSAddr, StoreDir: filepath.Join(f.dataDir, "nats")})
		if err != nil {
			return fmt.Errorf("embedded NATS: %w", err)
		}
		cleanups = append(cleanups, func() { ns.Shutdown(); ns.WaitForShutdown() })
		natsURL = ns.ClientURL()
		log.Info("embedded NATS server listening", "url", natsURL, "store", filepath.Join(f.dataDir, "nats"))
	}

	ledgerURL := f.ledgerURL
	var embedded *embeddedledger.Ledger
	if ledgerURL == "" {
		l, url, stop, err := serveEmbeddedLedger(f, log)
		if err != nil {
			return err
		}
		cleanups = append(cleanups, stop)
		ledgerURL, embedded = url, l
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f.w.Metrics = worker.NewMetrics(reg)
	lcfg := ledgeradapter.Config{
		BaseURL: ledgerURL, Timeout: f.ledgerTimeout, TimeoutPerElement: f.ledgerTimeoutPerElement,
		ClientID: f.ledgerClientID, ClientSecret: f.ledgerClientSecret, TokenURL: f.ledgerTokenURL,
		Observe:        newLedgerMetrics(reg).observe,
		TracerProvider: tel.TracerProvider(),
		TxConcurrency:  f.ledgerTxConcurrency,
		Logger:         log,
	}
	if f.ledgerCA != "" {
		pool, _ := loadCertPool(f.ledgerCA) // checked by validate
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		lcfg.HTTPClient = &http.Client{Transport: tr}
	}
	if embedded != nil {
		// The worker reaches its own embedded ledger in process; the
		// listener serves everyone else.
		lcfg.HTTPClient = &http.Client{Transport: embedded.Transport()}
	}
	client, err := ledgeradapter.NewClient(lcfg)
	if err != nil {
		return fmt.Errorf("ledger client: %w", err)
	}
	cleanups = append(cleanups, client.CloseIdleConnections) // before the embedded ledger's server waits for idle connections
	registerTxMetrics(reg, client)
	var ledger handlers.Ledger = client
	if f.ledgerBatch {
		b, err := ledgeradapter.NewBatcher(client, f.batch)
		if err != nil {
			return usageError("%v", err)
		}
		registerBatcherMetrics(reg, b)
		ledger = b
	}
	// While the ledger is unavailable the worker holds its commands and
	// asks the ledger's health check whether it is back.
	f.w.Breaker.Probe = client.Healthcheck
	h := &handlers.CreateBalance{Ledger: ledger, LedgerName: f.ledgerName, AccountPrefix: f.accountPrefix}
	if err := h.Validate(); err != nil {
		return usageError("%v", err)
	}

	nc, err := connectNATS(natsURL, f, log)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		// The last hand-backs and terminations are one-way publishes: make
		// sure the server has them before the connection (or an embedded
		// server) goes away.
		_ = nc.FlushTimeout(2 * time.Second)
		closed := make(chan struct{})
		nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
		if nc.Drain() == nil {
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
			}
		}
	})
	// An outcome event published asynchronously (the events of a chain)
	// whose acknowledgement never comes is given up on, rather than held
	// among the client's pending publishes.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(f.w.WithDefaults().SettleTimeout))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	// Health endpoints first: /healthz answers while the start-up below
	// waits for the ledger or NATS; /readyz says not ready until consuming.
	var ready atomic.Bool
	httpAddr := ""
	if f.httpAddr != "" {
		ledgerState := func() worker.LedgerState {
			if wk := w.Load(); wk != nil {
				return wk.Ledger()
			}
			return worker.LedgerState{Available: true} // checked by the start-up below
		}
		addr, stop, err := serveHTTP(f.httpAddr, nc, ledgerState, &ready, reg, log)
		if err != nil {
			return err
		}
		cleanups = append(cleanups, stop)
		httpAddr = addr
	}

	if err := retryStartup(ctx, log, "ensure ledger "+f.ledgerName, func() error {
		return client.EnsureLedger(ctx, f.ledgerName)
	}, func(err error) bool {
		// Refused credentials will not get better by waiting: fail now.
		return ledgeradapter.IsRetryable(err) && !errors.Is(err, ledgeradapter.ErrUnauthorized)
	}); err != nil {
		if errors.Is(err, ledgeradapter.ErrUnauthorized) {
			return stoppedOr(ctx, fmt.Errorf("the ledger or its token endpoint refused our credentials: %w", err))
		}
		return stoppedOr(ctx, err)
	}
	if !f.noProvision {
		if err := retryStartup(ctx, log, "provision streams and consumer", func() error {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return worker.Provision(pctx, js, f.w)
		}, func(error) bool { return true }); err != nil {
			return stoppedOr(ctx, err)
		}
	}

	if f.noClaim {
		log.Warn("--no-claim: two commands with different keys may both write one new balance")
	} else {
		claims, err := worker.NewClaims(ctx, js, f.w)
		if err != nil {
			return stoppedOr(ctx, err)
		}
		h.Claim = claims
		h.ClaimReadMaxAge = f.w.ClaimReadMaxAge()
	}

	// Every kind of command the worker applies, registered once. The money
	// commands write transactions through the client: its cap on
	// transactions in flight holds whatever the worker's concurrency.
	wallets := handlers.Wallets{Balances: h, Writes: ledger, Transactions: client,
		LedgerName: f.ledgerName, AccountPrefix: f.accountPrefix, ChainLength: f.ledgerChain}
	wcfg := f.w
	wcfg.Replays = wallets.Replays()
	wk, err := worker.New(js, wallets.Kinds(), wcfg, log)
	if err != nil {
		return usageError("%v", err)
	}
	w.Store(wk)

	cfg := wk.Config()
	log.Info("consuming commands",
		"nats", redactURL(natsURL), "ledger", redactURL(ledgerURL), "ledger_name", f.ledgerName,
		"concurrency", cfg.Concurrency, "ack_wait", cfg.AckWait.String(), "max_deliver", cfg.MaxDeliver,
		"retry_budget", cfg.RetryBudget().Round(time.Second).String())
	ready.Store(true)
	if env.Ready != nil {
		env.Ready(Addrs{NATSURL: natsURL, LedgerURL: ledgerURL, HTTPAddr: httpAddr})
	}
	go func() {
		<-ctx.Done()
		ready.Store(false) // draining: not ready for new work
	}()
	err = wk.Run(ctx)
	ready.Store(false)
	if err != nil {
		return err
	}
	st := wk.Stats()
	log.Info("stopped",
		"created", st.Created.Load(), "replayed", st.Replayed.Load(), "rejected", st.Rejected.Load(), "settled_before", st.SettledBefore.Load(),
		"dead_lettered", st.DeadLettered.Load(), "handed_back", st.HandedBack.Load())
	return nil
}

// allEmbeddedMemoryLimit is the soft memory limit of the Go runtime when
// `run` embeds both NATS and the ledger. About 30 MiB of the process's
// resident memory is outside the Go heap (mostly its mapped binary), and
// under a full-speed publisher the live heap reaches about 40 MiB, 16-28 of
// them the NATS server's file-store block buffers: without a limit the
// collector's headroom (GOGC=100) lets the resident size pass 120 MiB. A
// limit close to the live heap costs more than it saves: at 48 MiB the
// collector took 70% of the CPU. With 128 commands in flight (the embedded
// ledger's default), `bench --workload user` (20,000 creates, five runs
// each, alternated) created 5,861-7,045 balances/s at a peak of 97-102 MiB
// under 64 MiB, 6,519-6,941/s at 93 MiB under 60, and 5,364-6,241/s at
// 91-92 MiB under 56. The limit only makes the collector run sooner as the
// heap nears it; it never refuses an allocation.
const allEmbeddedMemoryLimit = 60 << 20

// embeddedMemoryLimit is the soft memory limit run sets: allEmbeddedMemoryLimit
// when it embeds both NATS and the ledger and the user has not set GOMEMLIMIT
// (which the Go runtime has then applied already; GOMEMLIMIT=off keeps no
// limit), else 0: nothing to set.
func embeddedMemoryLimit(f *runFlags, getenv func(string) string) int64 {
	if f.nats.URL != "" || f.ledgerURL != "" || getenv("GOMEMLIMIT") != "" {
		return 0
	}
	return allEmbeddedMemoryLimit
}

// loadCertPool reads a PEM file of CA certificates.
func loadCertPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// stoppedOr is nil when ctx was cancelled (a signal during start-up is a
// clean stop), err otherwise.
func stoppedOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// retryStartup retries a start-up step with backoff while retryable says so,
// until ctx ends: a ledger or NATS that comes up after the worker is waited
// for, a wrong setting fails at once.
func retryStartup(ctx context.Context, log *slog.Logger, what string, op func() error, retryable func(error) bool) error {
	b := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	return backoff.RetryNotify(func() error {
		err := op()
		if err != nil && !retryable(err) {
			return backoff.Permanent(err)
		}
		return err
	}, backoff.WithContext(b, ctx), func(err error, next time.Duration) {
		log.Warn(what+" failed; retrying", "error", err, "retry_in", next.Round(time.Millisecond))
	})
}

func serveEmbeddedLedger(f *runFlags, log *slog.Logger) (*embeddedledger.Ledger, string, func(), error) {
	dir := filepath.Join(f.dataDir, "ledger")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", nil, fmt.Errorf("embedded ledger: %w", err)
	}
	opts := []embeddedledger.Option{embeddedledger.WithLogger(log)}
	if f.embeddedLedgerSync == "full" {
		opts = append(opts, embeddedledger.WithSyncFull())
	}
	l, err := embeddedledger.Open(dir, opts...)
	if err != nil {
		return nil, "", nil, fmt.Errorf("embedded ledger: %w", err)
	}
	ln, err := net.Listen("tcp", f.embeddedLedgerAddr)
	if err != nil {
		_ = l.Close()
		return nil, "", nil, fmt.Errorf("embedded ledger: listen: %w", err)
	}
	// A request's whole read is bounded too: a client that sends headers
	// and then stalls its body would otherwise hold its write open for
	// good, and with it the ledger's record of racing writes, which keeps
	// every later one while a write is open.
	srv := &http.Server{Handler: l.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
	go func() { _ = srv.Serve(ln) }()
	url := "http://" + ln.Addr().String()
	log.Info("embedded ledger listening", "url", url, "store", dir)
	return l, url, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = l.Close()
	}, nil
}

// connectNATS connects the worker. Credentials or TLS the server refuses
// fail at once; a server not reachable yet is waited for in the background
// (RetryOnFailedConnect), so that /healthz answers meanwhile.
func connectNATS(url string, f *runFlags, log *slog.Logger) (*nats.Conn, error) {
	c := f.nats
	c.URL = url
	opts := []nats.Option{
		nats.Name("wallets-worker"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: we closed the connection ourselves
				log.Warn("NATS disconnected; reconnecting", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "url", natsconn.RedactURL(nc.ConnectedUrl()))
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if natsconn.IsAuthFailure(err) { // credentials rotated or revoked under us
				log.Error("NATS refused the connection; retrying", "error", c.ConnectError(url, err))
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS error", "error", err)
		}),
	}
	nc, err := natsconn.Connect(c, opts...)
	if err != nil && !natsconn.IsAuthFailure(err) {
		nc, err = natsconn.Connect(c, append(opts, nats.RetryOnFailedConnect(true))...)
	}
	return nc, err
}

func serveHTTP(addr string, nc *nats.Conn, ledger func() worker.LedgerState, ready *atomic.Bool, reg *prometheus.Registry, log *slog.Logger) (string, func(), error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if nc.IsClosed() {
			// nats.go gave up on the connection for good (it does, e.g., on
			// a protocol error): only a restart brings the worker back.
			writeStatus(w, http.StatusServiceUnavailable, map[string]string{"nats": "connection closed for good"})
			return
		}
		writeStatus(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	// /readyz is not ready while the worker does not consume (starting,
	// draining) or NATS is away. A ledger outage is reported in the body but
	// leaves it ready: the worker is doing what it should (holding its
	// commands, probing the ledger), and restarting it or taking it out of
	// a rollout would help nothing. The ledger's state is the breaker's, so
	// /readyz sends no request of its own to a failing ledger.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		body := map[string]any{}
		problems := false
		if !ready.Load() {
			body["worker"] = "not consuming (starting or draining)"
			problems = true
		}
		if !nc.IsConnected() {
			body["nats"] = nc.Status().String()
			problems = true
		}
		if l := ledger(); l.Available {
			body["ledger"] = "available"
		} else {
			body["ledger"] = "unavailable"
			body["ledger_unavailable_since"] = l.Since.UTC().Format(time.RFC3339)
			body["ledger_error"] = l.Error
			body["commands_held"] = l.Held
		}
		if problems {
			writeStatus(w, http.StatusServiceUnavailable, body)
			return
		}
		body["status"] = "ready"
		writeStatus(w, http.StatusOK, body)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("http: listen: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("metrics and health endpoints listening", "addr", ln.Addr().String())
	return ln.Addr().String(), func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

func writeStatus(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// redactURL drops user information from URLs before they are logged.
func redactURL(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if scheme := strings.Index(p, "://"); scheme >= 0 && scheme < at {
				parts[i] = p[:scheme+3] + "REDACTED@" + p[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}
