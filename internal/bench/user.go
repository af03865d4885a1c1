package bench

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// WorkloadUser measures what a user meets: `run` as a process of its own.
const WorkloadUser = "user"

// UserConfig is a run of the user workload: `wallets-worker run` started as
// its own process on its defaults (everything embedded, or the ledger at
// LedgerURL), this process publishing Commands create-balance commands to it
// and timing them from the first publish to the last outcome event; then,
// on the same NATS server, a raw JetStream loop doing the least a worker
// that reports outcomes must do; with LedgerURL, the ledger baselines too,
// before the commands, on the same ledger.
type UserConfig struct {
	Binary    string   // the wallets-worker to run (default: this one)
	LedgerURL string   // empty: run's embedded ledger
	Commands  int      // create-balance commands
	RunArgs   []string // more flags for run
	InFlight  int      // publishes awaiting their acknowledgement
	Log       io.Writer
}

// UserResult is a run of the user workload.
type UserResult struct {
	Ledger   string `json:"ledger"`
	Commands int    `json:"commands"`
	// Run is the worker as a user meets it: creates per second from the
	// first publish to the last outcome, and its outcomes.
	Run struct {
		Seconds  float64 `json:"seconds"`
		PerSec   float64 `json:"perSecond"`
		Created  int     `json:"created"`
		Replayed int     `json:"replayed"`
		Rejected int     `json:"rejected"`
		// PeakRSS is the run process's peak resident set (VmHWM), NATS and
		// the embedded ledger included when they are embedded.
		PeakRSSMiB float64 `json:"peakRssMiB"`
		// PerSecond counts the outcomes of each second from the first
		// publish: a collapse shows as a run of low seconds.
		PerSecond []int `json:"outcomesPerSecond"`
		// LedgerNoAnswer counts the run's ledger requests that got no
		// answer (timeouts among them), Retries the commands it handed
		// back for another attempt, both read from its /metrics after the
		// last outcome.
		LedgerNoAnswer int `json:"ledgerNoAnswer"`
		Retries        int `json:"retries"`
	} `json:"run"`
	// RawJetStream is the loop's messages per second on the same server:
	// publish, consume, publish an event, ack.
	RawJetStream float64 `json:"rawJetStreamPerSecond"`
	// RawJetStreamWithClaim is the same loop claiming each message first,
	// as the worker claims each new balance (run right after the loop).
	RawJetStreamWithClaim float64 `json:"rawJetStreamWithClaimPerSecond"`
	// Baselines are the ledger baselines (with LedgerURL), Best the best
	// of their rates.
	Baselines []LedgerBaseline `json:"ledgerBaselines,omitempty"`
	// Ratios of the run's rate.
	ToRaw           float64 `json:"runToRawJetStream"`
	ToRawWithClaim  float64 `json:"runToRawJetStreamWithClaim"`
	ToBestWrite     float64 `json:"runToBestWrite,omitempty"`
	ToReadThenWrite float64 `json:"runToReadThenWrite,omitempty"`
}

// RunUser runs the user workload.
func RunUser(ctx context.Context, cfg UserConfig) (UserResult, error) {
	res := UserResult{Ledger: "embedded", Commands: cfg.Commands}
	if cfg.LedgerURL != "" {
		res.Ledger = cfg.LedgerURL
	}
	bin := cfg.Binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return res, err
		}
	}
	dir, err := os.MkdirTemp("", "wallets-worker-bench-user-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	addrs, err := freeAddrs(3)
	if err != nil {
		return res, err
	}
	natsAddr, ledgerAddr, httpAddr := addrs[0], addrs[1], addrs[2]
	args := []string{"run", "--data-dir", filepath.Join(dir, "data"), "--embedded-nats-addr", natsAddr,
		"--embedded-ledger-addr", ledgerAddr, "--http-addr", httpAddr}
	if cfg.LedgerURL != "" {
		args = append(args, "--ledger-url", cfg.LedgerURL)
	}
	args = append(args, cfg.RunArgs...)
	// A --http-addr among the run's flags is the one it listens on, and a
	// --ledger-name the ledger it writes, which the baselines write too.
	ledgerName := "wallets-002"
	for name, v := range map[string]*string{"--http-addr": &httpAddr, "--ledger-name": &ledgerName} {
		for i, a := range cfg.RunArgs {
			if val, ok := strings.CutPrefix(a, name+"="); ok {
				*v = val
			} else if a == name && i+1 < len(cfg.RunArgs) {
				*v = cfg.RunArgs[i+1]
			}
		}
	}
	runLog := &syncBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = runLog, runLog // one writer: os/exec copies both through one pipe
	cmd.Env = runEnv(os.Environ())
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start run: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			return errors.New("run did not stop within a minute of SIGTERM")
		}
	}
	defer func() { _ = stop() }()
	if err := waitReady(ctx, "http://"+httpAddr+"/readyz", exited); err != nil {
		return res, fmt.Errorf("%w; run's output:\n%s", err, runLog.String())
	}
	logf := func(format string, a ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format, a...)
		}
	}

	if cfg.LedgerURL != "" {
		// The ledger baselines first, and the worker right after them, on
		// the ledger run created.
		p := newLedgerProber(cfg.LedgerURL, ledgerName, DefaultBaselineTimeout)
		defer p.close()
		for _, b := range []func() LedgerBaseline{
			func() LedgerBaseline { return p.single(ctx, cfg.Commands, 64) },
			func() LedgerBaseline { return p.readThenWrite(ctx, cfg.Commands, ReadThenWriteInFlight) },
			func() LedgerBaseline { return p.bulk(ctx, cfg.Commands, BulkBaselineSize, BulkBaselineInFlight) },
		} {
			lb := b()
			logf("baseline %s: %d created in %.2fs: %.0f/s\n", lb.Name, lb.Created, lb.Seconds, lb.CreatesPerSecond)
			res.Baselines = append(res.Baselines, lb)
		}
	}

	nc, err := nats.Connect("nats://"+natsAddr, nats.Name("wallets-worker-bench-user"))
	if err != nil {
		return res, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	if err := publishAndAwait(ctx, js, cfg, &res); err != nil {
		return res, fmt.Errorf("%w; run's output:\n%s", err, runLog.String())
	}
	logf("run: %d created, %d replayed, %d rejected in %.2fs: %.0f/s\n", res.Run.Created, res.Run.Replayed, res.Run.Rejected, res.Run.Seconds, res.Run.PerSec)
	if err := runCounters(ctx, "http://"+httpAddr+"/metrics", &res); err != nil {
		return res, fmt.Errorf("run's metrics: %w", err)
	}
	if st, err := procStatusOf(strconv.Itoa(cmd.Process.Pid)); err == nil {
		res.Run.PeakRSSMiB = float64(st.hwm) / (1 << 20)
	}

	for _, l := range []struct {
		name        string
		claim       bool
		rate, ratio *float64
	}{
		{"raw JetStream loop", false, &res.RawJetStream, &res.ToRaw},
		{"raw JetStream loop with a claim per message", true, &res.RawJetStreamWithClaim, &res.ToRawWithClaim},
	} {
		// run's default concurrency where it runs: against a real ledger,
		// or with its embedded one.
		raw, err := rawJetStream(ctx, js, cfg.Commands, ledgeradapter.BatchingConcurrency(cfg.LedgerURL == ""), l.claim)
		if err != nil {
			return res, fmt.Errorf("%s: %w", l.name, err)
		}
		*l.rate, *l.ratio = raw, res.Run.PerSec/raw
		logf("%s: %.0f/s\n", l.name, raw)
	}
	var best float64
	for _, b := range res.Baselines {
		best = max(best, b.CreatesPerSecond)
		if b.Name == "readThenWrite" && b.CreatesPerSecond > 0 {
			res.ToReadThenWrite = res.Run.PerSec / b.CreatesPerSecond
		}
	}
	if best > 0 {
		res.ToBestWrite = res.Run.PerSec / best
	} else if len(res.Baselines) > 0 {
		return res, errors.New("no ledger baseline created a balance: no best write to compare the run with")
	}
	if err := stop(); err != nil {
		return res, fmt.Errorf("run: %w; its output:\n%s", err, runLog.String())
	}
	return res, nil
}

// runCounters reads the run's ledger requests without an answer and its
// retries from its Prometheus metrics at url.
func runCounters(ctx context.Context, url string, res *UserResult) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return err
	}
	for _, m := range families["wallets_worker_ledger_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "status" && l.GetValue() == "0" {
				res.Run.LedgerNoAnswer += counterValue(m)
			}
		}
	}
	for _, m := range families["wallets_worker_retries_total"].GetMetric() {
		res.Run.Retries += counterValue(m)
	}
	return nil
}

// counterValue is a counter's value, also when it was exposed without its
// type.
func counterValue(m *dto.Metric) int {
	return int(m.GetCounter().GetValue() + m.GetUntyped().GetValue())
}

// publishAndAwait publishes the commands and waits for their outcomes. The
// outcomes are counted in the events stream itself, which holds one event
// per command, rather than read through a consumer (an ordered consumer was
// seen to skip messages on a starved machine); they are read back by
// sequence once all are stored, their store times giving the outcomes per
// second and the end of the run (the last one's).
func publishAndAwait(ctx context.Context, js jetstream.JetStream, cfg UserConfig, res *UserResult) error {
	events, err := watchEvents(ctx, js)
	if err != nil {
		return err
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	start := time.Now()
	err = publishWindowed(ctx, js, cfg.Commands, cfg.InFlight, func(i int) *nats.Msg {
		wallet := fmt.Sprintf("u%s-%d", run, i)
		m := &nats.Msg{Subject: messages.CreateBalanceSubject(wallet), Header: nats.Header{},
			Data: fmt.Appendf(nil, `{"walletID":%q,"name":"savings"}`, wallet)}
		m.Header.Set(messages.HeaderMsgID, wallet+"-savings")
		return m
	})
	if err != nil {
		return err
	}
	if err := events.await(ctx, cfg.Commands); err != nil {
		return err
	}
	last, err := events.each(ctx, cfg.Commands, func(m *jetstream.RawStreamMsg) {
		switch {
		case strings.Contains(m.Subject, "-rejected."):
			res.Run.Rejected++
		case bytes.Contains(m.Data, []byte(`"replayed":true`)):
			res.Run.Replayed++
		default:
			res.Run.Created++
		}
		sec := max(int(m.Time.Sub(start)/time.Second), 0)
		for len(res.Run.PerSecond) <= sec {
			res.Run.PerSecond = append(res.Run.PerSecond, 0)
		}
		res.Run.PerSecond[sec]++
	})
	if err != nil {
		return err
	}
	res.Run.Seconds = last.Sub(start).Seconds()
	res.Run.PerSec = float64(cfg.Commands) / res.Run.Seconds
	return nil
}

// runEnv is the environment of the measured run: this process's, without
// what would take run off its defaults unseen (its WALLETS_WORKER_ settings,
// and the Go runtime's GOMEMLIMIT and GOGC, which would also stop run from
// setting its own memory limit). Flags for run go in --run-args, where they
// show.
func runEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "WALLETS_WORKER_") || name == "GOMEMLIMIT" || name == "GOGC" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// rawJetStream is the least a worker that reports outcomes does, on the
// same server: n messages stored on a work-queue stream, consumed by a pull
// consumer with as many in flight as run's default concurrency in that
// setting (inFlight) and as many again pending, each answered by an event
// published to a second stream (PubAck awaited) and then acked with the
// server's confirmation awaited, as the worker acks (and as bench's
// baseline does). With claim, each is first claimed as the worker claims a new
// balance: a create-if-absent, with the claim's TTL, in a bucket configured
// like the claims bucket. It returns messages per second from the first
// publish to the last ack, and removes its streams and bucket.
func rawJetStream(ctx context.Context, js jetstream.JetStream, n, inFlight int, claim bool) (float64, error) {
	const cmds, evs, claims = "BENCH_USER_RAW_COMMANDS", "BENCH_USER_RAW_EVENTS", "BENCH_USER_RAW_CLAIMS"
	var kv jetstream.KeyValue
	claimTTL := worker.Config{}.WithDefaults().ClaimTTL
	if claim {
		var err error
		if kv, err = provisionBaselineClaims(ctx, js, worker.Config{}, claims); err != nil {
			return 0, err
		}
		defer func() { _ = js.DeleteKeyValue(context.WithoutCancel(ctx), claims) }()
	}
	for _, sc := range []jetstream.StreamConfig{
		{Name: cmds, Subjects: []string{"bench.user.raw.commands.>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage},
		{Name: evs, Subjects: []string{"bench.user.raw.events.>"}, Storage: jetstream.FileStorage},
	} {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return 0, err
		}
		defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), sc.Name) }()
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, cmds, jetstream.ConsumerConfig{Durable: "bench-user-raw", AckPolicy: jetstream.AckExplicitPolicy,
		MaxAckPending: 2 * inFlight, AckWait: 30 * time.Second})
	if err != nil {
		return 0, err
	}
	var acked atomic.Int64
	var claimed sync.Map // the keys claimed (by a create, or found claimed on a redelivery)
	done := make(chan struct{})
	var once sync.Once
	sem := make(chan struct{}, inFlight)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			key := m.Headers().Get(messages.HeaderMsgID)
			if kv != nil {
				if err := baselineClaim(ctx, kv, key, claimTTL); err != nil {
					_ = m.Nak()
					return
				}
				claimed.Store(key, true)
			}
			ev := &nats.Msg{Subject: "bench.user.raw.events." + m.Subject()[len("bench.user.raw.commands."):], Header: nats.Header{}, Data: m.Data()}
			ev.Header.Set(messages.HeaderMsgID, key)
			if _, err := js.PublishMsg(ctx, ev); err != nil {
				_ = m.Nak()
				return
			}
			if m.DoubleAck(ctx) == nil && acked.Add(1) == int64(n) {
				once.Do(func() { close(done) })
			}
		}()
	}, jetstream.PullMaxMessages(2*inFlight))
	if err != nil {
		return 0, err
	}
	defer cc.Stop()
	start := time.Now()
	err = publishWindowed(ctx, js, n, 256, func(i int) *nats.Msg {
		m := &nats.Msg{Subject: fmt.Sprintf("bench.user.raw.commands.w%d", i), Header: nats.Header{}, Data: []byte(`{"walletID":"w","name":"savings"}`)}
		m.Header.Set(messages.HeaderMsgID, fmt.Sprintf("raw-%d", i))
		return m
	})
	if err != nil {
		return 0, err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("%d of %d acked after 5 minutes", acked.Load(), n)
	}
	rate := float64(n) / time.Since(start).Seconds()
	if kv != nil {
		keys := 0
		claimed.Range(func(any, any) bool { keys++; return true })
		if keys != n {
			return 0, fmt.Errorf("%d claims for %d messages", keys, n)
		}
	}
	return rate, nil
}

// waitReady polls url until it answers 200, the process exits, or a minute
// passes.
func waitReady(ctx context.Context, url string, exited <-chan error) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("run exited before it was ready: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return errors.New("run not ready within a minute")
}

// freeAddrs returns n loopback addresses free now.
func freeAddrs(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// syncBuffer holds a child's stdout and stderr: written from the copying
// goroutine, read when the child fails.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// userCommand is `bench --workload user`.
func userCommand(ctx context.Context, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	cfg := UserConfig{Log: stderr}
	var asJSON bool
	var runs int
	var workload, runArgs string
	fs.StringVar(&workload, "workload", WorkloadUser, "user: run as a process of its own, fed by this one")
	fs.StringVar(&cfg.LedgerURL, "ledger-url", "", "the ledger run writes to (--ledger-url of run); empty: run's embedded ledger")
	fs.IntVar(&cfg.Commands, "commands", 0, "create-balance commands (default 20000; with --ledger-url 2000)")
	fs.IntVar(&cfg.InFlight, "in-flight", 256, "publishes awaiting their acknowledgement")
	fs.StringVar(&runArgs, "run-args", "", "more flags for run, space-separated")
	fs.StringVar(&cfg.Binary, "binary", "", "the wallets-worker binary to run (default: this one)")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object instead of the report")
	fs.IntVar(&runs, "runs", 1, "measure this many times in a row, each with its own run process (and its own baselines), and print every run and the spread of each figure; with --json, one object with every run and the summary")
	if err := parseWorkloadFlags(fs, args); err != nil {
		return err
	}
	if cfg.Commands == 0 {
		cfg.Commands = 20000
		if cfg.LedgerURL != "" {
			cfg.Commands = DefaultURLCommands
		}
	}
	if cfg.Commands < 1 || cfg.InFlight < 1 || runs < 1 {
		return fmt.Errorf("%w: --commands, --in-flight and --runs must be positive", ErrUsage)
	}
	cfg.RunArgs = strings.Fields(runArgs)
	if runs > 1 {
		all, err := RunUserRuns(ctx, cfg, runs, stderr)
		if len(all.Runs) > 0 {
			// The runs done are printed even when a later one failed.
			if asJSON {
				if perr := printJSON(stdout, all); perr != nil {
					return errors.Join(err, perr)
				}
			} else {
				fmt.Fprintf(stdout, "wallets-worker bench --workload user: %d runs in a row, each with run as its own process (ledger %s), %d create-balance commands\n\n",
					len(all.Runs), all.Runs[0].Ledger, cfg.Commands)
				printUserRuns(stdout, all)
			}
		}
		return err
	}
	res, err := RunUser(ctx, cfg)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "wallets-worker bench --workload user: run as its own process (ledger %s), %d create-balance commands\n"+
		"published from this process, timed from the first publish to the last outcome event\n\n", res.Ledger, res.Commands)
	fmt.Fprintf(stdout, "run:                 %8.0f creates/s  (%.2f s; created %d, replayed %d, rejected %d; peak RSS %.0f MiB)\n",
		res.Run.PerSec, res.Run.Seconds, res.Run.Created, res.Run.Replayed, res.Run.Rejected, res.Run.PeakRSSMiB)
	fmt.Fprintf(stdout, "  outcomes per second: %v\n", res.Run.PerSecond)
	fmt.Fprintf(stdout, "  ledger requests without an answer: %d; retries: %d\n", res.Run.LedgerNoAnswer, res.Run.Retries)
	fmt.Fprintf(stdout, "raw JetStream loop:  %8.0f msg/s      (same server)\n", res.RawJetStream)
	fmt.Fprintf(stdout, "  with a claim each: %8.0f msg/s\n", res.RawJetStreamWithClaim)
	for _, b := range res.Baselines {
		fmt.Fprintf(stdout, "ledger %-13s %8.0f creates/s  (%d in flight × %d, %d created, %d not, %d timeouts)\n", b.Name+":", b.CreatesPerSecond, b.InFlight, b.PerRequest, b.Created, b.Failed, b.Timeouts)
	}
	fmt.Fprintf(stdout, "\nrun ÷ raw JetStream: %.2f\n", res.ToRaw)
	fmt.Fprintf(stdout, "run ÷ raw JetStream with a claim per message: %.2f\n", res.ToRawWithClaim)
	if res.ToBestWrite > 0 {
		fmt.Fprintf(stdout, "run ÷ best write:    %.2f\nrun ÷ GET then write: %.2f\n", res.ToBestWrite, res.ToReadThenWrite)
	}
	return nil
}
