package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/embeddednats"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
	"github.com/wallets-worker/wallets-worker/worker"
)

// drainBench is the ground of the workloads that store commands first and
// then drain them through workers (order, mixed): an embedded NATS server
// with the streams provisioned, a ledger (embedded unless a URL is given)
// and its client.
type drainBench struct {
	label  string // the ledger: "embedded" or its URL
	client *ledgeradapter.Client
	ns     *server.Server
	admin  jetstream.JetStream
	logger *slog.Logger
	log    io.Writer
	stops  []func()
}

// startDrainBench starts the NATS server and the ledger (embedded unless
// ledgerURL), and creates ledgerName. close stops them.
func startDrainBench(ctx context.Context, ledgerURL, ledgerName string, txConcurrency int, timeout time.Duration, log io.Writer) (b *drainBench, err error) {
	b = &drainBench{logger: slog.New(slog.DiscardHandler), log: log}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	base, label, stop, err := ledgerAt(ledgerURL)
	if err != nil {
		return b, err
	}
	b.label = label
	b.stops = append(b.stops, stop)
	dir, err := os.MkdirTemp("", "wallets-worker-bench-drain-")
	if err != nil {
		return b, err
	}
	b.stops = append(b.stops, func() { os.RemoveAll(dir) })
	if b.ns, err = embeddednats.Start(embeddednats.Options{StoreDir: filepath.Join(dir, "nats")}); err != nil {
		return b, err
	}
	b.stops = append(b.stops, func() { b.ns.Shutdown(); b.ns.WaitForShutdown() })
	if log != nil {
		b.logger = slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if b.client, err = ledgeradapter.NewClient(ledgeradapter.Config{BaseURL: base, TxConcurrency: txConcurrency, Timeout: timeout, Logger: b.logger}); err != nil {
		return b, err
	}
	b.stops = append(b.stops, b.client.CloseIdleConnections)
	if err := b.client.EnsureLedger(ctx, ledgerName); err != nil {
		return b, fmt.Errorf("ensure ledger: %w", err)
	}
	admin, closeAdmin, err := b.connect("admin")
	if err != nil {
		return b, err
	}
	b.admin = admin
	b.stops = append(b.stops, closeAdmin)
	return b, nil
}

// close stops what startDrainBench started, the last first.
func (b *drainBench) close() {
	for i := len(b.stops) - 1; i >= 0; i-- {
		b.stops[i]()
	}
	b.stops = nil
}

// connect opens a JetStream client of its own, as a process would.
func (b *drainBench) connect(name string) (jetstream.JetStream, func(), error) {
	nc, err := nats.Connect(b.ns.ClientURL(), nats.Name("wallets-worker-bench-"+name))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

// store publishes msgs and waits until JetStream has stored them all.
func (b *drainBench) store(ctx context.Context, msgs []*nats.Msg) error {
	if err := publishWindowed(ctx, b.admin, len(msgs), 500, func(i int) *nats.Msg { return msgs[i] }); err != nil {
		return err
	}
	select {
	case <-b.admin.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drained is what one drain came to.
type drained struct {
	seconds    float64
	byCode     map[messages.Code]int // "" counts the successes
	orderWaits int64
}

// drain starts workers, each on its own connection with the kinds kinds
// returns for it, and waits for n outcomes from the moment they start; then
// it stops them.
func (b *drainBench) drain(ctx context.Context, name string, workers int, cfg worker.Config, kinds func(i int) (handlers.Kinds, error), n int) (drained, error) {
	d := drained{byCode: map[messages.Code]int{}}
	events, err := watchEvents(ctx, b.admin)
	if err != nil {
		return d, err
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var ws []*worker.Worker
	var closers []func()
	defer func() { // the workers stop before their connections close
		stop()
		wg.Wait()
		for _, c := range closers {
			c()
		}
	}()
	start := time.Now()
	for i := range workers {
		js, closeConn, err := b.connect(fmt.Sprintf("%s-%d", name, i))
		if err != nil {
			return d, err
		}
		closers = append(closers, closeConn)
		ks, err := kinds(i)
		if err != nil {
			return d, err
		}
		w, err := worker.New(js, ks, cfg, b.logger)
		if err != nil {
			return d, err
		}
		ws = append(ws, w)
		wg.Go(func() { _ = w.Run(wctx) })
	}
	if err := events.await(ctx, n); err != nil {
		return d, fmt.Errorf("%s: %w (%s)", name, err, b.leftOver(ctx))
	}
	for _, w := range ws {
		d.orderWaits += w.Stats().OrderWaits.Load()
	}
	last, err := events.each(ctx, n, func(m *jetstream.RawStreamMsg) {
		var e struct {
			Code messages.Code `json:"code"`
		}
		_ = json.Unmarshal(m.Data, &e)
		d.byCode[e.Code]++
	})
	if err != nil {
		return d, fmt.Errorf("%s: %w", name, err)
	}
	d.seconds = last.Sub(start).Seconds()
	return d, nil
}

// leftOver describes the commands still stored and the consumer's state,
// for a drain that timed out.
func (b *drainBench) leftOver(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	s, err := b.admin.Stream(ctx, messages.StreamCommands)
	if err != nil {
		return err.Error()
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(messages.SubjectCommandsPrefix+">"))
	if err != nil {
		return err.Error()
	}
	out := fmt.Sprintf("%d commands left", info.State.Msgs)
	if info.State.Msgs > 0 {
		if m, err := s.GetMsg(ctx, info.State.FirstSeq); err == nil {
			out += fmt.Sprintf(", the first %d on %s, key %s", m.Sequence, m.Subject, m.Header.Get(messages.HeaderMsgID))
		}
	}
	if es, err := b.admin.Stream(ctx, messages.StreamEvents); err == nil {
		if ei, err := es.Info(ctx); err == nil {
			out += fmt.Sprintf("; %d events stored", ei.State.Msgs)
		}
	}
	if c, err := s.Consumer(ctx, messages.ConsumerName); err == nil {
		if ci, err := c.Info(ctx); err == nil {
			out += fmt.Sprintf("; consumer: %d pending, %d awaiting an ack, %d redelivered", ci.NumPending, ci.NumAckPending, ci.NumRedelivered)
		}
	}
	return out
}
