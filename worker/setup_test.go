package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wallets-worker/wallets-worker/handlers"
	"github.com/wallets-worker/wallets-worker/internal/testutil"
	"github.com/wallets-worker/wallets-worker/ledgeradapter"
	"github.com/wallets-worker/wallets-worker/messages"
)

// waitFor bounds every wait on a condition. It is generous: a condition that
// holds is seen within milliseconds, one that never holds fails the test.
const (
	waitFor = 15 * time.Second
	tick    = 10 * time.Millisecond
)

const testLedger = "wallets-002"

// testConfig is the worker configuration of the tests: a short AckWait so
// that an AckWait redelivery takes seconds, and a backoff of milliseconds.
func testConfig() Config {
	return Config{
		Concurrency:   4,
		AckWait:       3 * time.Second, // HandlerTimeout defaults to 2s
		MaxDeliver:    10,
		Backoff:       Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		SettleTimeout: 2 * time.Second,
		DrainTimeout:  5 * time.Second,
	}
}

type setupOptions struct {
	config        func(*Config)
	middleware    func(http.Handler) http.Handler
	wrap          func(handlers.CreateBalanceHandler) handlers.CreateBalanceHandler
	hooks         func(*bundle) hooks
	ledgerTimeout time.Duration
	breaker       *Breaker
	log           *slog.Logger
	kinds         []handlers.Kind
	kindsOf       func(*ledgeradapter.Client) []handlers.Kind
	replaysOf     func(*ledgeradapter.Client) handlers.Kinds
}

type option func(*setupOptions)

// withConfig edits the test Config before provisioning.
func withConfig(f func(*Config)) option { return func(o *setupOptions) { o.config = f } }

// withLedgerMiddleware puts mw in front of the embedded ledger, to inject
// faults on the wire.
func withLedgerMiddleware(mw func(http.Handler) http.Handler) option {
	return func(o *setupOptions) { o.middleware = mw }
}

// withLedgerTimeout sets the ledger client's timeout (1s by default).
func withLedgerTimeout(d time.Duration) option { return func(o *setupOptions) { o.ledgerTimeout = d } }

// withHandler wraps the handlers.CreateBalance the worker calls.
func withHandler(wrap func(handlers.CreateBalanceHandler) handlers.CreateBalanceHandler) option {
	return func(o *setupOptions) { o.wrap = wrap }
}

// withBreaker turns the ledger breaker on, probing the test ledger's health
// check unless br has a Probe.
func withBreaker(br Breaker) option { return func(o *setupOptions) { o.breaker = &br } }

// withReplaysOf sets Config.Replays, made with the test's ledger client.
func withReplaysOf(f func(*ledgeradapter.Client) handlers.Kinds) option {
	return func(o *setupOptions) { o.replaysOf = f }
}

// withKinds registers more kinds beside create-balance.
func withKinds(kinds ...handlers.Kind) option { return func(o *setupOptions) { o.kinds = kinds } }

// withKindsOf registers more kinds, made with the test's ledger client.
func withKindsOf(f func(*ledgeradapter.Client) []handlers.Kind) option {
	return func(o *setupOptions) { o.kindsOf = f }
}

// withLog gives the worker this logger instead of the test's output at WARN.
func withLog(l *slog.Logger) option { return func(o *setupOptions) { o.log = l } }

// withHooks installs the worker's settle-seam hooks; they may use the bundle's
// JetStream.
func withHooks(h func(*bundle) hooks) option { return func(o *setupOptions) { o.hooks = h } }

// bundle is one worker wired to its own NATS server and ledger.
type bundle struct {
	cfg    Config
	js     jetstream.JetStream
	ledger *ledgeradapter.Client
	worker *Worker
	events *collector // WALLETS_EVENTS
	dlq    *collector // WALLETS_DLQ
}

// setup starts an embedded NATS server, an embedded ledger behind an HTTP
// server, provisions the streams and runs a Worker until the test ends. The
// cleanup stops the worker first and requires Run to return nil.
func setup(t *testing.T, opts ...option) *bundle {
	t.Helper()
	o := setupOptions{ledgerTimeout: time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	cfg := testConfig()
	if o.config != nil {
		o.config(&cfg)
	}
	ctx := context.Background()

	ns := testutil.NATS(t)
	led := testutil.StartLedger(t, testutil.LedgerOptions{Wrap: o.middleware,
		Client: ledgeradapter.Config{Timeout: o.ledgerTimeout, TracerProvider: cfg.TracerProvider}})
	client := led.Client
	require.NoError(t, client.EnsureLedger(ctx, testLedger))
	if o.replaysOf != nil {
		cfg.Replays = o.replaysOf(client)
	}
	if o.breaker != nil {
		cfg.Breaker = *o.breaker
		if cfg.Breaker.Probe == nil {
			cfg.Breaker.Probe = client.Healthcheck
		}
	}

	_, js := testutil.Connect(t, ns.ClientURL())
	require.NoError(t, Provision(ctx, js, cfg))

	b := &bundle{cfg: cfg, js: js, ledger: client}
	b.events = collect(t, js, messages.StreamEvents)
	b.dlq = collect(t, js, messages.StreamDLQ)

	var handler handlers.CreateBalanceHandler = &handlers.CreateBalance{Ledger: client, LedgerName: testLedger}
	if o.wrap != nil {
		handler = o.wrap(handler)
	}
	log := o.log
	if log == nil {
		log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	kinds := append([]handlers.Kind{handlers.CreateBalanceKind(handler)}, o.kinds...)
	if o.kindsOf != nil {
		kinds = append(kinds, o.kindsOf(client)...)
	}
	w, err := New(js, handlers.NewKinds(kinds...), cfg, log)
	require.NoError(t, err)
	if o.hooks != nil {
		w.hooks = o.hooks(b)
	}
	b.worker = w

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			require.NoError(t, err, "Run after cancel")
		case <-time.After(cfg.DrainTimeout + 5*time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return b
}

// received is one message read back from a stream.
type received struct {
	Subject string
	Header  nats.Header
	Data    []byte
	Seq     uint64 // in the stream it was read from
}

// json decodes the body into a generic map.
func (r received) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Data, &m), "body %s", r.Data)
	return m
}

// collector reads a whole stream, from its start, with an ordered consumer.
type collector struct {
	stream string
	js     jetstream.JetStream
	mu     sync.Mutex
	msgs   []received
}

func collect(t *testing.T, js jetstream.JetStream, stream string) *collector {
	t.Helper()
	c := &collector{stream: stream, js: js}
	oc, err := js.OrderedConsumer(context.Background(), stream, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	cc, err := oc.Consume(func(m jetstream.Msg) {
		r := received{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}
		if md, err := m.Metadata(); err == nil {
			r.Seq = md.Sequence.Stream
		}
		c.mu.Lock()
		c.msgs = append(c.msgs, r)
		c.mu.Unlock()
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)
	return c
}

func (c *collector) all() []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]received(nil), c.msgs...)
}

// wait returns once at least n messages were read, or fails the test.
func (c *collector) wait(t *testing.T, n int) []received {
	t.Helper()
	require.Eventually(t, func() bool { return len(c.all()) >= n }, waitFor, tick,
		"waiting for %d messages on %s, have %d", n, c.stream, len(c.all()))
	return c.all()
}

// caughtUp reports whether the collector has read every message stored.
func (c *collector) caughtUp(t require.TestingT) bool {
	info, err := c.js.Stream(context.Background(), c.stream)
	require.NoError(t, err)
	si, err := info.Info(context.Background())
	require.NoError(t, err)
	return uint64(len(c.all())) == si.State.Msgs
}

// cmd builds a command message: subject of wallet, body, and the key as
// Nats-Msg-Id.
func cmd(wallet, key, body string) *nats.Msg {
	m := &nats.Msg{Subject: messages.CreateBalanceSubject(wallet), Data: []byte(body), Header: nats.Header{}}
	m.Header.Set(messages.HeaderMsgID, key)
	return m
}

// body is a valid command body.
func body(wallet, name string) string {
	return fmt.Sprintf(`{"walletID":%q,"name":%q}`, wallet, name)
}

// publish stores m in WALLETS_COMMANDS and returns the PubAck.
func (b *bundle) publish(t *testing.T, m *nats.Msg) *jetstream.PubAck {
	t.Helper()
	ack, err := b.js.PublishMsg(context.Background(), m)
	require.NoError(t, err)
	require.Equal(t, messages.StreamCommands, ack.Stream)
	return ack
}

// publishAfterWindow republishes m until JetStream stores it rather than
// report a duplicate: the dedupe entry of its key has expired. The duplicates
// it sends meanwhile are dropped by JetStream.
func (b *bundle) publishAfterWindow(t *testing.T, m *nats.Msg) *jetstream.PubAck {
	t.Helper()
	var ack *jetstream.PubAck
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		ack, err = b.js.PublishMsg(context.Background(), m)
		require.NoError(c, err)
		assert.False(c, ack.Duplicate, "still a duplicate")
	}, b.cfg.DuplicateWindow+waitFor, 50*time.Millisecond)
	return ack
}

// settled waits until every command is settled: the work-queue stream is
// empty, nothing is pending or awaiting an ack, and the collectors have read
// every event and dead letter stored (events are stored before the ack).
func (b *bundle) settled(t *testing.T) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		ci := b.consumerInfo(c)
		assert.Zero(c, b.commandsLeft(c), "commands left in %s", messages.StreamCommands)
		assert.Zero(c, ci.NumAckPending, "ack pending")
		assert.Zero(c, ci.NumPending, "not yet delivered")
		assert.True(c, b.events.caughtUp(c), "events collector behind")
		assert.True(c, b.dlq.caughtUp(c), "dead-letter collector behind")
	}, waitFor, tick)
}

// deliveries is how many deliveries the consumer made, redeliveries included.
func (b *bundle) deliveries(t *testing.T) uint64 {
	t.Helper()
	return b.consumerInfo(t).Delivered.Consumer
}

func (b *bundle) commandsLeft(t require.TestingT) uint64 {
	s, err := b.js.Stream(context.Background(), messages.StreamCommands)
	require.NoError(t, err)
	si, err := s.Info(context.Background())
	require.NoError(t, err)
	return si.State.Msgs
}

func (b *bundle) consumerInfo(t require.TestingT) *jetstream.ConsumerInfo {
	c, err := b.js.Consumer(context.Background(), messages.StreamCommands, messages.ConsumerName)
	require.NoError(t, err)
	ci, err := c.Info(context.Background())
	require.NoError(t, err)
	return ci
}

// setMetadataLogs counts the ledger's SET_METADATA logs.
func (b *bundle) setMetadataLogs(t *testing.T) int {
	t.Helper()
	logs, err := b.ledger.AllLogs(context.Background(), testLedger)
	require.NoError(t, err)
	n := 0
	for _, l := range logs {
		if l.Type == ledgeradapter.LogTypeSetMetadata {
			n++
		}
	}
	return n
}

// account reads an account's metadata; it must exist.
func (b *bundle) account(t *testing.T, address string) map[string]string {
	t.Helper()
	acc, found, err := b.ledger.GetAccount(context.Background(), testLedger, address)
	require.NoError(t, err)
	require.True(t, found, "account %s", address)
	return acc.Metadata
}

// single returns the one message of msgs, failing the test otherwise.
func single(t *testing.T, msgs []received) received {
	t.Helper()
	require.Len(t, msgs, 1, "messages: %v", subjects(msgs))
	return msgs[0]
}

func subjects(msgs []received) []string {
	s := make([]string, len(msgs))
	for i, m := range msgs {
		s[i] = m.Subject + " " + string(m.Data)
	}
	return s
}

func seqString(ack *jetstream.PubAck) string { return strconv.FormatUint(ack.Sequence, 10) }
